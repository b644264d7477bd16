"""The one Dagster ``Definitions`` object of this code location.

Everything Dagster runs is found in ``pipelines/defs/`` by ``dg.load_from_defs_folder`` (one folder
per source with its assets, checks and jobs; the marts, the views, ``sync_all`` and the schedules),
merged here with the resources and the executor, which both come from the environment. Freshness
policies are applied here too (their windows are variables). A module added under
``pipelines/defs/`` (``dg scaffold defs dagster.asset my_asset.py``) is loaded with the rest.

Resources are built from environment variables (see :mod:`pipelines.settings` and the README);
secrets are ``EnvVar``\\ s so the UI shows their names only.
"""

import logging
import os
from pathlib import Path

import dagster as dg

from pipelines.allocator import limit_malloc_arenas
from pipelines.defs.feed_asset import FEED_TAG, LOAD_TAG, current_feed_keys, full_refresh_run_config
from pipelines.executor import sync_executor
from pipelines.resources import (
    CpamoeResource,
    MetapicResource,
    OnlyTrafficMarketerResource,
    OnlyTrafficStudioResource,
    WarehouseResource,
)
from pipelines.schedules import OperationsSettings, with_freshness
from pipelines.settings import env, load_env_file

load_env_file()
# Library warnings (e.g. pipelines.warehouse waiting for the file lock) reach the run's log through
# the callbacks the assets pass; without a handler Python would also print them on stderr.
logging.getLogger("pipelines").addHandler(logging.NullHandler())
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


def build_executor() -> dg.ExecutorDefinition:
    """One process per step: ``SYNC_MAX_CONCURRENT_STEPS`` (default 2) at once, of which at most
    ``SYNC_CPU_STEPS`` (default 1) CPU-bound ones (see pipelines/executor.py)."""
    max_steps, cpu_steps = _int_env("SYNC_MAX_CONCURRENT_STEPS", 2), _int_env("SYNC_CPU_STEPS", 1)
    if max_steps < 1 or cpu_steps < 1:
        raise ValueError("SYNC_MAX_CONCURRENT_STEPS and SYNC_CPU_STEPS must be 1 or more")
    return sync_executor(max_steps, cpu_steps, LOAD_TAG)


def build_defs() -> dg.Definitions:
    """The defs folder, with the resources, the executor and the freshness policies of the
    current environment (tests call it again after changing variables)."""
    settings = OperationsSettings.from_env()
    folder = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    return dg.Definitions.merge(
        with_freshness(folder, settings, FEED_TAG),
        dg.Definitions(resources=build_resources(), executor=build_executor()),
    )


# Current-state feeds (one asset and one step each; asset key = op name), for tests and the CLI.
INGESTION_KEYS = current_feed_keys()

__all__ = ["INGESTION_KEYS", "build_defs", "build_resources", "defs", "full_refresh_run_config", "sync_all_job"]

defs = build_defs()


def sync_all_job() -> dg.JobDefinition:
    """``sync_all`` for ``dg.reconstructable`` (the CLI runs it with the multiprocess executor)."""
    return defs.resolve_job_def("sync_all")
