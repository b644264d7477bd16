"""The one Dagster ``Definitions`` object of this code location.

Resources are built from environment variables (see :mod:`pipelines.settings` and the README);
secrets are ``EnvVar``\\ s so the UI shows their names only.
"""

from __future__ import annotations

import os

import dagster as dg

from pipelines.assets import cpamoe, metapic, onlytraffic
from pipelines.assets.views import build_view_assets
from pipelines.resources import (
    CpamoeResource,
    MetapicResource,
    OnlyTrafficMarketerResource,
    OnlyTrafficStudioResource,
    WarehouseResource,
)
from pipelines.settings import env, load_env_file

load_env_file()


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
            memory_limit=os.environ.get("WAREHOUSE_MEMORY_LIMIT", "512MB"),
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
        ),
    }


SOURCE_MODULES = (onlytraffic, cpamoe, metapic)

# Current-state ingestion assets: take SyncConfig (full_refresh) and are rebuilt by sync_all.
INGESTION_ASSETS = [a for m in SOURCE_MODULES for a in m.SYNC_ASSETS]


def full_refresh_run_config(assets: list[dg.AssetsDefinition] | None = None) -> dict:
    """Run config asking every (or the given) ingestion asset to re-read everything."""
    chosen = assets or INGESTION_ASSETS
    return {"ops": {a.op.name: {"config": {"full_refresh": True}} for a in chosen}}


def build_defs() -> dg.Definitions:
    view_assets = build_view_assets()
    sync_all = dg.define_asset_job(
        "sync_all",
        selection=dg.AssetSelection.assets(*INGESTION_ASSETS, *view_assets),
        description="Materialize every current-state ingestion asset, then the views.",
        executor_def=dg.in_process_executor,
    )
    return dg.Definitions(
        assets=[*(a for m in SOURCE_MODULES for a in m.ASSETS), *view_assets],
        asset_checks=[c for m in SOURCE_MODULES for c in m.CHECKS],
        jobs=[sync_all, *(j for m in SOURCE_MODULES for j in m.JOBS)],
        schedules=[s for m in SOURCE_MODULES for s in m.SCHEDULES],
        resources=build_resources(),
    )


defs = build_defs()
