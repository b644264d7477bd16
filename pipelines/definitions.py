"""The one Dagster ``Definitions`` object of this code location.

Resources are built from environment variables (see :mod:`pipelines.settings` and the README);
secrets are ``EnvVar``\\ s so the UI shows their names only.
"""

from __future__ import annotations

import os

import dagster as dg

from pipelines.allocator import limit_malloc_arenas
from pipelines.assets import cpamoe, marts, metapic, onlytraffic
from pipelines.assets.feeds import build_feeds_asset
from pipelines.assets.views import SHARED_TABLES, build_view_assets
from pipelines.checks import build_warehouse_checks, history_intervals_check, sql_check
from pipelines.schedules import OperationsSettings, automation_sensor, build_schedules, with_freshness
from pipelines.resources import (
    CpamoeResource,
    MetapicResource,
    OnlyTrafficMarketerResource,
    OnlyTrafficStudioResource,
    WarehouseResource,
)
from pipelines.settings import env, load_env_file

load_env_file()
limit_malloc_arenas()  # run workers launched by the UI or the daemon load this module first


def _secret(name: str) -> dg.EnvVar | None:
    """The variable as an EnvVar (resolved at run time, never displayed), or None when unset."""
    return dg.EnvVar(name) if os.environ.get(name) else None


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw else default


def build_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources from the current environment (called at load, and by tests after changing it)."""
    return {
        "warehouse": WarehouseResource(
            path=env("WAREHOUSE_PATH"),
            memory_limit=os.environ.get("WAREHOUSE_MEMORY_LIMIT", "160MB"),
        ),
        "onlytraffic_marketer": OnlyTrafficMarketerResource(
            base_url=env("ONLYTRAFFIC_MARKETER_BASE_URL"),
            api_key=_secret("ONLYTRAFFIC_MARKETER_API_KEY"),
            max_concurrency=_int_env("ONLYTRAFFIC_MARKETER_CONCURRENCY", 4),
            page_size=_int_env("ONLYTRAFFIC_MARKETER_PAGE_SIZE", 0),
        ),
        "onlytraffic_studio": OnlyTrafficStudioResource(
            base_url=env("ONLYTRAFFIC_STUDIO_BASE_URL"),
            api_key=_secret("ONLYTRAFFIC_STUDIO_API_KEY"),
            max_concurrency=_int_env("ONLYTRAFFIC_STUDIO_CONCURRENCY", 4),
            page_size=_int_env("ONLYTRAFFIC_STUDIO_PAGE_SIZE", 0),
        ),
        "cpamoe": CpamoeResource(
            base_url=env("CPAMOE_BASE_URL"),
            user_id=os.environ.get("CPAMOE_USER_ID") or None,
            api_key=_secret("CPAMOE_API_KEY"),
            leads_dir=env("CPAMOE_LEADS_DIR"),
            max_concurrency=_int_env("CPAMOE_CONCURRENCY", 4),
        ),
        "metapic": MetapicResource(
            base_url=env("METAPIC_BASE_URL"),
            access_token=_secret("METAPIC_ACCESS_TOKEN"),
            user_id=os.environ.get("METAPIC_USER_ID") or None,
            max_concurrency=_int_env("METAPIC_CONCURRENCY", 4),
            page_size=_int_env("METAPIC_PAGE_SIZE", 0),
            rate_limit=_int_env("METAPIC_RATE_LIMIT", 300),
            rate_window_seconds=float(os.environ.get("METAPIC_RATE_WINDOW_SECONDS") or 60),
        ),
    }


SOURCE_MODULES = (onlytraffic, cpamoe, metapic)

# Current-state feeds: one subsettable multi-asset (two lanes: pipelines/assets/feeds.py) that takes
# SyncConfig (full_refresh) and is materialized by sync_all. Asset keys are the feeds' table names.
FEEDS = [f for m in SOURCE_MODULES for f in m.FEEDS]
INGESTION_KEYS = [f.key for f in FEEDS]
sync_feeds = build_feeds_asset(FEEDS)
INGESTION_ASSETS = [sync_feeds]


def full_refresh_run_config() -> dict:
    """Run config asking every selected feed to re-read everything."""
    return {"ops": {a.op.name: {"config": {"full_refresh": True}} for a in INGESTION_ASSETS}}


# status_history.source written by each ingestion asset (for the history interval checks)
HISTORY_SOURCES = {
    "cpc_orders": "cpc",
    "cpl_orders": "cpl",
    "swap_orders": "swap",
    "cpamoe_leads": "cpamoe",
    "metapic_offers": "metapic_offer",
    "metapic_participants": "metapic_participant",
}
# Sources whose entities can leave their table (the entity ids still there): see history_intervals_check.
HISTORY_REMOVABLE = {"metapic_participant": metapic.source.PARTICIPANT_ENTITIES_SQL}


# Tables written by an asset of another name (besides the asset named after each table).
EXTRA_TABLE_WRITERS = {
    "swap_orders": ["swap_orders_by_created_day"],
    "swap_order_sides": ["swap_orders", "swap_orders_by_created_day"],
    "cpamoe_leads": ["cpamoe_lead_files"],
}


def _table_producers(assets: list[dg.AssetsDefinition]) -> dict[str, list[dg.AssetKey]]:
    """Which assets write each table: the asset named after it, the writers listed in
    EXTRA_TABLE_WRITERS, and for the shared tables (status_history, ...) every ingestion asset."""
    producers: dict[str, list[dg.AssetKey]] = {}
    names = {key.path[-1] for a in assets for key in a.keys}
    for a in assets:
        for key in a.keys:
            producers.setdefault(key.path[-1], []).append(key)
    for table, writers in EXTRA_TABLE_WRITERS.items():
        producers.setdefault(table, []).extend(dg.AssetKey(w) for w in writers if w in names)
    ingestion_keys = [k for a in INGESTION_ASSETS for k in a.keys]
    for table in SHARED_TABLES:
        producers[table] = ingestion_keys
    return producers


def _mart_checks(view_assets: list[dg.AssetsDefinition]) -> list:
    by_name = {k.to_user_string(): k for a in [*INGESTION_ASSETS, *view_assets] for k in a.keys}
    checks = [
        history_intervals_check(by_name[name], source, HISTORY_REMOVABLE.get(source))
        for name, source in HISTORY_SOURCES.items()
        if name in by_name
    ]
    checks.append(
        sql_check(
            by_name["cpc_orders"],
            "cpc_orders_total_earned_consistent",
            "total_earned = min(clicks ordered, delivered) x price_per_click, within a cent.",
            "SELECT order_id, printf('earned %s, expected %s', total_earned, "
            "least(clicks_ordered, clicks_delivered) * price_per_click) FROM cpc_orders "
            "WHERE abs(total_earned - least(clicks_ordered, clicks_delivered) * price_per_click) > 0.01",
        )
    )
    checks.append(
        sql_check(
            by_name["v_fill_rate"],
            "v_fill_rate_not_negative",
            "No fill rate is negative.",
            "SELECT source || ':' || order_id || coalesce(':' || side, ''), fill_rate "
            "FROM v_fill_rate WHERE fill_rate < 0",
        )
    )
    return checks


# Daily-partitioned jobs materialized for their latest complete day (pipelines/schedules.py).
LATEST_DAY_JOBS = {
    "swap_orders_latest_day": onlytraffic.swap_orders_by_created_day_job,
    "metapic_daily_stats_latest_day": metapic.metapic_participant_daily_stats_job,
}


def build_defs() -> dg.Definitions:
    settings = OperationsSettings.from_env()
    feed_assets = [*INGESTION_ASSETS, *(a for m in SOURCE_MODULES for a in m.ASSETS)]
    view_assets = build_view_assets(_table_producers([*feed_assets, *marts.ASSETS]))
    sync_all = dg.define_asset_job(
        "sync_all",
        selection=dg.AssetSelection.assets(*INGESTION_ASSETS, *marts.ASSETS, *view_assets),
        description="Materialize every current-state ingestion asset, then the views.",
        executor_def=dg.in_process_executor,
    )
    daily_keys = {key for job in LATEST_DAY_JOBS.values() for key in job.selection.resolve(feed_assets)}
    scheduled_jobs = {job.name for job in LATEST_DAY_JOBS.values()}
    return dg.Definitions(
        assets=[
            *with_freshness(feed_assets, {k for a in INGESTION_ASSETS for k in a.keys}, daily_keys, settings),
            *marts.ASSETS,
            *view_assets,
        ],
        asset_checks=[
            build_warehouse_checks([*(c for m in SOURCE_MODULES for c in m.CHECKS), *_mart_checks(view_assets)])
        ],
        jobs=[sync_all, *(j for m in SOURCE_MODULES for j in m.JOBS)],
        schedules=[
            *build_schedules(sync_all, full_refresh_run_config(), LATEST_DAY_JOBS, settings),
            # a feed's own schedule of a job scheduled above would be a second, conflicting one
            *(s for m in SOURCE_MODULES for s in m.SCHEDULES if s.job.name not in scheduled_jobs),
        ],
        sensors=[automation_sensor(settings)],
        resources=build_resources(),
        # Every step writes the one DuckDB file under a pool of 1: steps in separate processes
        # would only add a process start each (backfills, automation and UI-launched runs).
        executor=dg.in_process_executor,
    )


defs = build_defs()
