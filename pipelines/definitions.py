"""The one Dagster ``Definitions`` object of this code location.

Resources are built from environment variables (see :mod:`pipelines.settings` and the README);
secrets are ``EnvVar``\\ s so the UI shows their names only.
"""

from __future__ import annotations

import os

import dagster as dg

from pipelines.assets.onlytraffic import cpc_orders
from pipelines.assets.views import build_view_assets
from pipelines.resources import OnlyTrafficMarketerResource, WarehouseResource
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
    }


# Ingestion assets taking SyncConfig (full_refresh) and rebuilt by sync_all.
INGESTION_ASSETS = [cpc_orders]


def full_refresh_run_config(assets: list[dg.AssetsDefinition] | None = None) -> dict:
    """Run config asking every (or the given) ingestion asset to re-read everything."""
    chosen = assets or INGESTION_ASSETS
    return {"ops": {a.op.name: {"config": {"full_refresh": True}} for a in chosen}}


def build_defs() -> dg.Definitions:
    view_assets = build_view_assets()
    ingestion_assets = INGESTION_ASSETS
    sync_all = dg.define_asset_job(
        "sync_all",
        selection=dg.AssetSelection.assets(*ingestion_assets, *view_assets),
        description="Materialize every current-state ingestion asset, then the views.",
        executor_def=dg.in_process_executor,
    )
    return dg.Definitions(
        assets=[*ingestion_assets, *view_assets],
        jobs=[sync_all],
        resources=build_resources(),
    )


defs = build_defs()
