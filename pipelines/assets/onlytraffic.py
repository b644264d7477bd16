"""OnlyTraffic assets: CPC and CPL orders (Marketer API), swap orders (Studio API)."""


import dagster as dg

from pipelines.assets.common import SyncConfig, materialize
from pipelines.checks import standard_checks
from pipelines.resources import WRITER_POOL, OnlyTrafficMarketerResource, WarehouseResource
from pipelines.sources import onlytraffic_marketer as marketer
from pipelines.sync import sync_status_listing

CPC_BUSINESS_SQL = """
SELECT sum(total_earned) AS earned_usd,
       count(*) FILTER (WHERE status IN ('pending', 'active')) AS orders_open,
       avg(clicks_delivered / nullif(clicks_ordered, 0)) AS avg_fill_rate
FROM {wh}.cpc_orders
"""


@dg.asset(
    group_name="onlytraffic",
    pool=WRITER_POOL,
    kinds={"duckdb", "python"},
    description="OnlyTraffic CPC orders, every status, one row per order_id (+ status_history).",
)
def cpc_orders(
    context: dg.AssetExecutionContext,
    config: SyncConfig,
    warehouse: WarehouseResource,
    onlytraffic_marketer: OnlyTrafficMarketerResource,
) -> dg.MaterializeResult:
    def sync(progress):
        with onlytraffic_marketer.client(on_retry=context.log.warning) as client:
            return sync_status_listing(
                warehouse=warehouse.open(on_wait=context.log.warning),
                client=client,
                listing=marketer.cpc_listing(client, onlytraffic_marketer.page_size or marketer.MAX_LIMIT),
                spec=marketer.CPC_ORDERS,
                run_id=context.run_id,
                full_refresh=config.full_refresh,
                max_workers=onlytraffic_marketer.max_concurrency,
                business_sql=CPC_BUSINESS_SQL,
                log=context.log.info,
                on_progress=progress,
            )

    return materialize(context, sync)


ASSETS: list = [cpc_orders]  # every asset of this source
SYNC_ASSETS: list = [cpc_orders]  # current-state ingestion assets materialized by sync_all
CHECKS: list = [*standard_checks(cpc_orders, "cpc_orders", ["order_id"])]
JOBS: list = []
SCHEDULES: list = []
