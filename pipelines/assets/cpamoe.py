"""cpa.moe assets (lead register and lead statuses).

``cpamoe_lead_files`` loads new CSV files of ``CPAMOE_LEADS_DIR`` into the register (it needs no
credentials); ``cpamoe_leads`` then polls list.json for every registered lead that is not final.
"""


import dagster as dg

from pipelines.assets.common import SyncConfig, materialize
from pipelines.checks import SAMPLE, run_check_query, standard_checks
from pipelines.resources import WRITER_POOL, CpamoeResource, WarehouseResource
from pipelines.sources import cpamoe as source
from pipelines.sources.cpamoe_register import load_lead_register


@dg.asset(
    group_name="cpamoe",
    pool=WRITER_POOL,
    kinds={"duckdb", "python"},
    description="cpa.moe lead register: each new CSV file in CPAMOE_LEADS_DIR loaded once into "
    "cpamoe_leads (bad lines reported by number here and in cpamoe_lead_file_errors).",
)
def cpamoe_lead_files(
    context: dg.AssetExecutionContext,
    config: SyncConfig,  # noqa: ARG001 - files are loaded once each; a full refresh changes nothing
    warehouse: WarehouseResource,
    cpamoe: CpamoeResource,
) -> dg.MaterializeResult:
    def sync(progress):
        return load_lead_register(
            warehouse=warehouse.open(on_wait=context.log.warning),
            leads_dir=cpamoe.leads_dir,
            run_id=context.run_id,
            log=context.log.info,
        )

    return materialize(context, sync)


@dg.asset(
    group_name="cpamoe",
    deps=[cpamoe_lead_files],
    pool=WRITER_POOL,
    kinds={"duckdb", "python"},
    description="cpa.moe lead statuses: list.json polled for every registered lead not yet final, "
    "one row per our lead_id (+ status_history).",
)
def cpamoe_leads(
    context: dg.AssetExecutionContext,
    config: SyncConfig,
    warehouse: WarehouseResource,
    cpamoe: CpamoeResource,
) -> dg.MaterializeResult:
    def sync(progress):
        with cpamoe.client(on_retry=context.log.warning) as client:
            return source.sync_lead_statuses(
                warehouse=warehouse.open(on_wait=context.log.warning),
                client=client,
                auth_id=cpamoe.auth_id,
                run_id=context.run_id,
                full_refresh=config.full_refresh,
                max_workers=cpamoe.max_concurrency,
                log=context.log.info,
                on_progress=progress,
            )

    return materialize(context, sync)


@dg.asset_check(
    asset=cpamoe_leads,
    name="cpamoe_leads_known_codes",
    pool=WRITER_POOL,
    description="Every status and reason code of cpamoe_leads is one the docs list (unknown codes "
    "are kept with a NULL name and named here).",
)
def cpamoe_leads_known_codes(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    rows = run_check_query(warehouse, source.unknown_codes_sql())
    if not rows:
        return dg.AssetCheckResult(passed=True, description="every code is known")
    unknown = {f"{field}={value}": n for field, value, n in rows}
    return dg.AssetCheckResult(
        passed=False,
        description=f"unknown code(s): {', '.join(sorted(unknown))}",
        metadata={"unknown_values": dg.MetadataValue.json(unknown), "rows": sum(unknown.values())},
    )


@dg.asset_check(
    asset=cpamoe_leads,
    name="cpamoe_leads_found",
    pool=WRITER_POOL,
    description="Every polled lead was returned by list.json (a warning names those that were not).",
)
def cpamoe_leads_found(warehouse: WarehouseResource) -> dg.AssetCheckResult:
    rows = run_check_query(
        warehouse,
        f"SELECT lead_id, not_found_at FROM cpamoe_leads WHERE found = false ORDER BY lead_id LIMIT {SAMPLE}",
    )
    total = run_check_query(warehouse, "SELECT count(*) FROM cpamoe_leads WHERE found = false")[0][0]
    if not total:
        return dg.AssetCheckResult(passed=True, description="every polled lead was found")
    return dg.AssetCheckResult(
        passed=False,
        severity=dg.AssetCheckSeverity.WARN,
        description=f"{total} lead(s) not found at cpa.moe, e.g. {rows[0][0]}",
        metadata={"not_found": dg.MetadataValue.json({r[0]: r[1].isoformat() for r in rows})},
    )


ASSETS: list = [cpamoe_lead_files, cpamoe_leads]  # every asset of this source
SYNC_ASSETS: list = [cpamoe_lead_files, cpamoe_leads]  # current-state ingestion assets materialized by sync_all (take SyncConfig)
CHECKS: list = [
    *standard_checks(cpamoe_leads, "cpamoe_leads", ["lead_id"]),
    cpamoe_leads_known_codes,
    cpamoe_leads_found,
]
JOBS: list = [
    dg.define_asset_job(
        "cpamoe_sync",
        selection=dg.AssetSelection.assets(cpamoe_lead_files, cpamoe_leads),
        description="Load new lead CSV files, then poll the statuses of open cpa.moe leads.",
        executor_def=dg.in_process_executor,
    )
]
SCHEDULES: list = []
