"""OnlyTraffic Marketer feeds: CPC orders and CPL orders, one status-filtered list each.

What to fetch is every status list of the Marketer API (:func:`~pipelines.sources.onlytraffic_marketer.cpc_listing`,
:func:`~pipelines.sources.onlytraffic_marketer.cpl_listing`), read incrementally by
:mod:`pipelines.feeds.incremental`; how a record becomes a row is the table specs below, one row per
``order_id`` (statuses map through ``models/status.py``, mappings ``cpc`` and ``cpl``).
"""

from __future__ import annotations

from collections.abc import Callable

from models.status import OPEN_STATUSES, sql_list
from pipelines.feeds.status_lists import SyncReport, sync_status_listing
from pipelines.sources.http import ApiClient
from pipelines.sources.onlytraffic_marketer import MAX_LIMIT, OffsetStatusListing, cpc_listing, cpl_listing
from pipelines.warehouse import Warehouse
from pipelines.warehouse.loader import CommitStep, summary_step
from pipelines.warehouse.staging import Field, TableSpec

LogFn = Callable[[str], None]


CPC_ORDERS = TableSpec(
    table="cpc_orders",
    source="cpc",
    key=("order_id",),
    fields=(
        Field("order_id", "$.order_id", "id", required=True),
        Field("of_account_id", "$.of_account_id", "integer"),
        Field("creative_public_id", "$.creative.public_id", "string"),
        Field("creative_username", "$.creative.username", "string"),
        Field("url", "$.url", "string"),
        Field("clicks_ordered", "$.clicks.ordered", "integer"),
        Field("clicks_delivered", "$.clicks.delivered", "integer"),
        Field("price_per_click", "$.price_per_click", "number"),
        Field("total_earned", "$.total_earned", "number"),
        Field("date_start", "$.date_start", "epoch"),
        Field("date_finish", "$.date_finish", "epoch"),
        Field("created_at", "$.created_at", "timestamp", epoch_fallback="$.created_at_ts"),
    ),
)


# What a sync of each list reports (read in its commit, after the merge).
CPC_SUMMARY = summary_step(f"""
SELECT sum(total_earned) AS earned_usd,
       count(*) FILTER (WHERE status IN ({sql_list(OPEN_STATUSES)})) AS orders_open,
       avg(clicks_delivered / nullif(clicks_ordered, 0)) AS avg_fill_rate
FROM wh.main.cpc_orders
""")


CPL_ORDERS = TableSpec(
    table="cpl_orders",
    source="cpl",
    key=("order_id",),
    fields=(
        Field("order_id", "$.order_id", "id", required=True),
        Field("offer_id", "$.offer_id", "integer"),
        Field("of_account_id", "$.of_account_id", "integer"),
        Field("campaign_type", "$.campaign_type", "string"),
        Field("campaign_url", "$.campaign_url", "string"),
        Field("quantity_ordered", "$.quantity_ordered", "integer"),
        Field("quantity_delivered", "$.quantity_delivered", "integer"),
        Field("price_per_fan", "$.price_per_fan", "number"),
        Field("clicks", "$.clicks", "integer"),
        Field("total_earned", "$.total_earned", "number"),
        Field("created_at", "$.created_at", "timestamp", epoch_fallback="$.created_at_ts"),
        Field("completed_at", "$.completed_at", "timestamp", epoch_fallback="$.completed_at_ts"),
    ),
)


CPL_SUMMARY = summary_step(f"""
SELECT sum(total_earned) AS earned_usd,
       count(*) FILTER (WHERE status IN ({sql_list(OPEN_STATUSES)})) AS orders_open,
       avg(quantity_delivered / nullif(quantity_ordered, 0)) AS avg_fill_rate
FROM wh.main.cpl_orders
""")


def sync_cpc_orders(
    *,
    warehouse: Warehouse,
    client: ApiClient,
    run_id: str,
    page_size: int = MAX_LIMIT,
    full_refresh: bool = False,
    max_workers: int = 4,
    log: LogFn = lambda _m: None,
    on_progress: Callable[[str, int], None] | None = None,
) -> SyncReport:
    """Sync ``cpc_orders`` (every status list, incrementally unless ``full_refresh``)."""
    return _sync_list(
        cpc_listing(client, page_size or MAX_LIMIT, max_workers), CPC_ORDERS, CPC_SUMMARY,
        warehouse=warehouse, client=client, run_id=run_id, full_refresh=full_refresh,
        max_workers=max_workers, log=log, on_progress=on_progress,
    )


def sync_cpl_orders(
    *,
    warehouse: Warehouse,
    client: ApiClient,
    run_id: str,
    page_size: int = MAX_LIMIT,
    full_refresh: bool = False,
    max_workers: int = 4,
    log: LogFn = lambda _m: None,
    on_progress: Callable[[str, int], None] | None = None,
) -> SyncReport:
    """Sync ``cpl_orders`` (every status list, incrementally unless ``full_refresh``)."""
    return _sync_list(
        cpl_listing(client, page_size or MAX_LIMIT, max_workers), CPL_ORDERS, CPL_SUMMARY,
        warehouse=warehouse, client=client, run_id=run_id, full_refresh=full_refresh,
        max_workers=max_workers, log=log, on_progress=on_progress,
    )


def _sync_list(
    listing: OffsetStatusListing,
    spec: TableSpec,
    summary: CommitStep,
    *,
    warehouse: Warehouse,
    client: ApiClient,
    run_id: str,
    full_refresh: bool,
    max_workers: int,
    log: LogFn,
    on_progress: Callable[[str, int], None] | None,
) -> SyncReport:
    return sync_status_listing(
        warehouse=warehouse,
        client=client,
        listing=listing,
        spec=spec,
        run_id=run_id,
        full_refresh=full_refresh,
        max_workers=max_workers,
        steps=(summary,),
        log=log,
        on_progress=on_progress,
    )
