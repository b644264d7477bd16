"""OnlyTraffic assets: CPC and CPL orders (Marketer API), swap orders (Studio API).

The feeds ``cpc_orders``, ``cpl_orders`` and ``swap_orders`` (incremental, in ``sync_all``; each
its own step, see pipelines/defs/feed_asset.py) write their tables, ``swap_orders`` also
``swap_order_sides``.
``swap_orders_by_created_day`` writes the same tables for a range of created days (backfills from
the UI; partitions start at ``SWAP_PARTITIONS_START``, default 2025-01-01) without touching the
incremental cursor.
"""

from datetime import timedelta

import dagster as dg

from pipelines import settings
from pipelines.checks import history_intervals_check, sql_check, standard_checks
from pipelines.defs.feed_asset import FEED_TAG, FeedRun, feed_asset, materialize_asset
from pipelines.defs.table_metadata import table_metadata
from pipelines.defs.onlytraffic.resources import OnlyTrafficStudioResource
from pipelines.resources import WRITER_POOL, WarehouseResource
from pipelines.settings import load_env_file
from pipelines.feeds import onlytraffic_marketer as marketer
from pipelines.feeds import onlytraffic_studio as studio
from pipelines.feeds.status_lists import SyncReport
from pipelines.sources.onlytraffic_studio import MAX_PAGE_SIZE, PageStatusListing


def sync_cpc_orders(run: FeedRun, progress) -> SyncReport:
    return _sync_marketer_list(run, progress, marketer.sync_cpc_orders)


def sync_cpl_orders(run: FeedRun, progress) -> SyncReport:
    return _sync_marketer_list(run, progress, marketer.sync_cpl_orders)


def _sync_marketer_list(run: FeedRun, progress, sync) -> SyncReport:
    resource = run.onlytraffic_marketer
    with resource.client(on_retry=run.log.warning) as client:
        return sync(
            warehouse=run.open_warehouse(),
            client=client,
            run_id=run.run_id,
            page_size=resource.page_size,
            full_refresh=run.full_refresh,
            max_workers=resource.max_concurrency,
            log=run.log.info,
            on_progress=progress,
        )


def _swap_listing(client, resource: OnlyTrafficStudioResource) -> PageStatusListing:
    return PageStatusListing(
        client,
        page_size=resource.page_size or MAX_PAGE_SIZE,
        concurrency=resource.max_concurrency,
    )


def sync_swap_orders(run: FeedRun, progress) -> SyncReport:
    with run.onlytraffic_studio.client(on_retry=run.log.warning) as client:
        return studio.sync_swap_orders(
            warehouse=run.open_warehouse(),
            client=client,
            listing=_swap_listing(client, run.onlytraffic_studio),
            run_id=run.run_id,
            full_refresh=run.full_refresh,
            max_workers=run.onlytraffic_studio.max_concurrency,
            log=run.log.info,
            on_progress=progress,
        )


def swap_partitions_start() -> str:
    """``SWAP_PARTITIONS_START`` (YYYY-MM-DD, default 2025-01-01): the first backfillable day."""
    load_env_file()  # this module is imported before definitions.py loads .env
    return settings.value("SWAP_PARTITIONS_START")


# end_offset=1: today is a partition too (re-running it later is harmless: loads are upserts).
SWAP_DAYS = dg.DailyPartitionsDefinition(start_date=swap_partitions_start(), end_offset=1)


@dg.asset(
    group_name="onlytraffic",
    pool=WRITER_POOL,
    kinds={"duckdb", "python"},
    tags={FEED_TAG: "daily"},
    partitions_def=SWAP_DAYS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    description="Swap orders created on the selected days (UTC), every status, into swap_orders "
    "and swap_order_sides. A backfill of a day range runs once, one walk per status.",
    metadata=table_metadata("swap_orders"),
)
def swap_orders_by_created_day(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    onlytraffic_studio: OnlyTrafficStudioResource,
) -> dg.MaterializeResult:
    window = context.partition_time_window
    first_day = window.start.date()
    last_day = (window.end - timedelta(days=1)).date()  # the window's end is exclusive

    def sync(progress):
        with onlytraffic_studio.client(on_retry=context.log.warning) as client:
            return studio.sync_created_range(
                warehouse=warehouse.open(on_wait=context.log.warning),
                client=client,
                listing=_swap_listing(client, onlytraffic_studio),
                first_day=first_day,
                last_day=last_day,
                run_id=context.run_id,
                max_workers=onlytraffic_studio.max_concurrency,
                log=context.log.info,
                on_progress=progress,
            )

    result = materialize_asset(context, sync)
    metadata = {**(result.metadata or {}), "created_from": first_day.isoformat(), "created_to": last_day.isoformat()}
    return dg.MaterializeResult(metadata=metadata)


swap_orders_by_created_day_job = dg.define_asset_job(
    "swap_orders_by_created_day_job",
    selection=[swap_orders_by_created_day],
    partitions_def=SWAP_DAYS,
    description="Backfill swap orders by created day (select a date range in the UI: one run).",
)

CPC_CHECKS = [
    *standard_checks("cpc_orders", "cpc_orders", ["order_id"]),
    history_intervals_check("cpc_orders", "cpc"),
    sql_check(
        "cpc_orders",
        "cpc_orders_total_earned_consistent",
        "total_earned = min(clicks ordered, delivered) x price_per_click, within a cent.",
        "SELECT order_id, printf('earned %s, expected %s', total_earned, "
        "least(clicks_ordered, clicks_delivered) * price_per_click) FROM cpc_orders "
        "WHERE abs(total_earned - least(clicks_ordered, clicks_delivered) * price_per_click) > 0.01",
    ),
]

cpc_orders = feed_asset(
    "cpc_orders", group="onlytraffic", sync=sync_cpc_orders, resources=["onlytraffic_marketer"],
    description="OnlyTraffic CPC orders, every status, one row per order_id (+ status_history).",
    checks=CPC_CHECKS,
)
cpl_orders = feed_asset(
    "cpl_orders", group="onlytraffic", sync=sync_cpl_orders, resources=["onlytraffic_marketer"],
    description="OnlyTraffic CPL orders, every status, one row per order_id (+ status_history).",
    checks=[*standard_checks("cpl_orders", "cpl_orders", ["order_id"]), history_intervals_check("cpl_orders", "cpl")],
)
swap_orders = feed_asset(
    "swap_orders", group="onlytraffic", sync=sync_swap_orders, resources=["onlytraffic_studio"],
    description="OnlyTraffic swap orders, every status (taken from the status filter: the API sends none), one "
    "row per order_id (+ status_history); also writes swap_order_sides.",
    checks=[
        *standard_checks("swap_orders", "swap_orders", ["order_id"]),
        *standard_checks("swap_orders", "swap_order_sides", ["order_id", "side"], has_status=False),
        history_intervals_check("swap_orders", "swap"),
    ],
)

# Tables written by an asset of another name than the table (the views' lineage reads this).
WRITES = {"swap_orders": ("swap_order_sides",), "swap_orders_by_created_day": ("swap_orders", "swap_order_sides")}
