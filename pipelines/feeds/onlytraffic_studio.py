"""OnlyTraffic Studio feeds: swap orders and their two sides.

What to fetch is every status list of ``GET /swaps/orders``
(:class:`~pipelines.sources.onlytraffic_studio.PageStatusListing`), incrementally
(:func:`sync_swap_orders`, through :mod:`pipelines.feeds.incremental`) or for a range of created
days (:func:`sync_created_range`); how a record becomes rows is the table specs below: one
``swap_orders`` row per order (its status is the filter it was listed under) and one
``swap_order_sides`` row per side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date

from models.onlytraffic import SWAP_COUNT_BLOCKS
from models.status import OPEN_STATUSES as OPEN_LIFECYCLE_STATUSES
from models.status import sql_list, status_case_sql
from pipelines.feeds.run import Fetched, SyncReport, run_stream
from pipelines.feeds.status_lists import sync_status_listing
from pipelines.sources.fetch import run_producers
from pipelines.sources.http import ApiClient
from pipelines.sources.onlytraffic_studio import PageStatusListing
from pipelines.sources.status_list import WalkOutcome
from pipelines.warehouse.loader import CommitStep, StreamLoad, summary_step
from pipelines.warehouse.staging import Field, TableSpec
from pipelines.warehouse import Warehouse

# -- table specs ---------------------------------------------------------------------------------

SWAP_ORDERS = TableSpec(
    table="swap_orders",
    source="swap",
    key=("order_id",),
    fields=(
        Field("order_id", "$.order_id", "id", required=True),
        Field("offer_id", "$.offer_id", "integer"),
        Field("quantity", "$.quantity", "integer"),
        Field("max_days", "$.max_days", "integer"),
        Field("guaranteed_price", "$.guaranteed_price", "number"),
        Field("stats_public_arpu", "$.stats_public_arpu", "boolean"),
        Field("is_offer_mine", "$.is_offer_mine", "boolean"),
        Field("is_order_mine", "$.is_order_mine", "boolean"),
        Field("created_at", "$.created_at", "timestamp", epoch_fallback="$.created_at_ts"),
        Field("started_at", "$.started_at", "timestamp", epoch_fallback="$.started_at_ts"),
        Field("completed_at", "$.completed_at", "timestamp", epoch_fallback="$.completed_at_ts"),
    ),
)

# One record per side: the API's side block plus the parent's order_id, the side's name and the
# order's raw status (part of the record, so a status change rewrites the side row too). Each
# order is parsed once (json_transform), and the three keys are appended to the side's own text,
# which is byte for byte what json_merge_patch(side, {order_id, side, order_status}) writes (a
# null value drops its key) at half the cost; a side that may already hold one of those keys
# (its text names it anywhere) goes through json_merge_patch itself.
_ORDER_PARTS = (
    "SELECT seq, pos, listed_status, json_transform(rec, "
    "'{\"offer_side\": \"JSON\", \"order_side\": \"JSON\", \"order_id\": \"JSON\", \"status\": \"JSON\"}') AS o "
    "FROM recs"
)
_ORDER_STATUS = "coalesce(json_extract_string(o.status, '$'), listed_status)"


def _side_record_sql(side: str) -> str:
    block = f"o.{side}_side"
    added = (
        f"concat_ws(',', CASE WHEN o.order_id <> 'null' THEN '\"order_id\":' || o.order_id END, "
        f"'\"side\":\"{side}\"', '\"order_status\":' || to_json({_ORDER_STATUS}))"
    )
    appended = (
        f"CASE WHEN {block} = '{{}}' THEN '{{' || {added} || '}}' "
        f"ELSE left({block}, -1) || ',' || {added} || '}}' END"
    )
    merged = f"json_merge_patch({block}, json_object('order_id', o.order_id, 'side', '{side}', 'order_status', {_ORDER_STATUS}))"
    may_hold = " OR ".join(f"contains({block}, '\"{key}\"')" for key in ("order_id", "side", "order_status"))
    return f"CASE WHEN {may_hold} THEN {merged} ELSE CAST({appended} AS JSON) END"


# Both sides read one materialized parse of the orders (inlined, each side would parse them again).
_SIDE_RECORDS_SQL = f"WITH orders AS MATERIALIZED ({_ORDER_PARTS})" + " UNION ALL ".join(
    f"""
    SELECT seq, pos * 2 + {i} AS pos, listed_status, {_side_record_sql(side)} AS rec,
           {_ORDER_STATUS} AS side_order_status
    FROM orders
    WHERE starts_with(o.{side}_side, '{{')
    """
    for i, side in enumerate(("offer", "order"))
)

# The order's status, as the side record holds it under ``order_status`` (read from the column
# beside the record rather than by parsing the record again: one parse less per side).
_SIDE_STATUS = "side_order_status"


def _stats_fields() -> tuple[Field, ...]:
    fields = [
        Field("fans_subscribed_total", "$.stats.fans_subscribed.total", "integer"),
        Field("fans_subscribed_today", "$.stats.fans_subscribed.today", "integer"),
        Field("transactions_sum_total", "$.stats.transactions_sum.total", "number"),
        Field("transactions_sum_today", "$.stats.transactions_sum.today", "number"),
        Field("arpu", "$.stats.arpu", "number"),
        Field("arpu_paying", "$.stats.arpu_paying", "number"),
        Field("romi", "$.stats.romi", "number"),
    ]
    for block in SWAP_COUNT_BLOCKS:
        fields += [
            Field(f"{block}_total", f"$.stats.{block}.total", "integer"),
            Field(f"{block}_today", f"$.stats.{block}.today", "integer"),
            Field(f"{block}_percent", f"$.stats.{block}.percent", "number"),
        ]
    return tuple(fields)


SWAP_ORDER_SIDES = TableSpec(
    table="swap_order_sides",
    source=None,  # no status history of its own: the order's is in swap_orders
    key=("order_id", "side"),
    records_sql=_SIDE_RECORDS_SQL,
    created_field=None,
    fields=(
        Field("order_id", "$.order_id", "id", required=True),
        Field("side", "$.side", "string", required=True),
        Field("is_mine", "$.is_mine", "boolean"),
        Field("of_account_id", "$.model.of_account_id", "integer"),
        Field("username", "$.model.username", "string"),
        Field("performer_top", "$.model.performer_top", "number"),
        Field("subscribe_price", "$.model.subscribe_price", "number"),
        Field("campaign_link", "$.campaign_link", "string"),
        *_stats_fields(),
        Field("source_status", sql=_SIDE_STATUS),
        Field("status", sql=f"CAST({status_case_sql('swap', _SIDE_STATUS)} AS VARCHAR)"),
    ),
)

SWAP_SPECS = (SWAP_ORDERS, SWAP_ORDER_SIDES)

# What a sync reports (read in its commit, after the merge). A swap is not paid per unit: what it
# earned is what the fans it brought spent on our side's model (transactions_sum.total of the
# sides that are ours, as in v_earnings). Fill rate is per side: that side's
# fans_subscribed_total / the order's quantity (as in v_fill_rate).
SWAP_SUMMARY = summary_step(f"""
SELECT (SELECT sum(transactions_sum_total) FILTER (WHERE is_mine) FROM wh.main.swap_order_sides)
           AS earned_usd,
       (SELECT count(*) FILTER (WHERE status IN ({sql_list(OPEN_LIFECYCLE_STATUSES)}))
        FROM wh.main.swap_orders) AS orders_open,
       (SELECT avg(s.fans_subscribed_total / nullif(o.quantity, 0))
        FROM wh.main.swap_order_sides AS s JOIN wh.main.swap_orders AS o USING (order_id)) AS avg_fill_rate
""")


# -- incremental runs ---------------------------------------------------------------------------


def sync_swap_orders(
    *,
    warehouse: Warehouse,
    client: ApiClient,
    listing: PageStatusListing,
    run_id: str,
    full_refresh: bool = False,
    max_workers: int = 4,
    log: Callable[[str], None] = lambda _m: None,
    on_progress: Callable[[str, int], None] | None = None,
) -> SyncReport:
    """Sync ``swap_orders`` and ``swap_order_sides`` (every status list, incrementally unless
    ``full_refresh``), in one transaction under the stream ``swap_orders``."""
    return sync_status_listing(
        warehouse=warehouse,
        client=client,
        listing=listing,
        spec=SWAP_ORDERS,
        extra_specs=(SWAP_ORDER_SIDES,),
        run_id=run_id,
        full_refresh=full_refresh,
        max_workers=max_workers,
        steps=(SWAP_SUMMARY,),
        log=log,
        on_progress=on_progress,
    )


# -- partition-range runs ------------------------------------------------------------------------

RANGE_STREAM = "swap_orders_by_created_day"


def sync_created_range(
    *,
    warehouse: Warehouse,
    client: ApiClient,
    listing: PageStatusListing,
    first_day: date,
    last_day: date,
    run_id: str,
    max_workers: int = 4,
    steps: Sequence[CommitStep] = (SWAP_SUMMARY,),
    business_sql: str | None = None,
    log: Callable[[str], None] = lambda _m: None,
    on_progress: Callable[[str, int], None] | None = None,
) -> SyncReport:
    """Load every swap order created from ``first_day`` to ``last_day``, in every status.

    One walk per status over the whole range (``from``/``to``), committed in one transaction under
    its own stream name: the incremental cursor of ``swap_orders`` is never moved, and orders
    outside the range are not looked for, so none is ever taken for vanished.
    """
    statuses = [*listing.open_statuses, *listing.terminal_statuses]

    def fetch(load: StreamLoad) -> Fetched:
        log(f"swap_orders: reading every status created {first_day} .. {last_day}")
        outcomes = run_producers(
            [lambda emit, s=s: listing.walk_range(s, first_day, last_day, emit) for s in statuses],
            load.add,
            max_workers=max_workers,
        )
        warnings: list[str] = []
        for outcome in outcomes:
            assert isinstance(outcome, WalkOutcome)
            warnings.extend(outcome.warnings)
        return Fetched(
            cursor={"last_range": [first_day.isoformat(), last_day.isoformat()]},
            mode="partition_range",
            warnings=warnings,
            steps=[*steps, *([summary_step(business_sql)] if business_sql else [])],
        )

    return run_stream(
        warehouse=warehouse,
        stream=RANGE_STREAM,
        specs=SWAP_SPECS,
        run_id=run_id,
        fetch=fetch,
        client=client,
        key_path="$.order_id",
        on_progress=on_progress,
    )
