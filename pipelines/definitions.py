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
from pathlib import Path

import dagster as dg

from pipelines.allocator import limit_malloc_arenas
from pipelines.defs.feed_asset import FEED_TAG, LOAD_TAG, current_feed_keys, full_refresh_run_config
from pipelines.executor import sync_executor
from pipelines.resources import resources_from_env
from pipelines.schedules import OperationsSettings, with_freshness
from pipelines.settings import load_env_file
from pipelines.settings import value as settings_value

load_env_file()
# Library warnings (e.g. pipelines.warehouse waiting for the file lock) reach the run's log through
# the callbacks the assets pass; without a handler Python would also print them on stderr.
logging.getLogger("pipelines").addHandler(logging.NullHandler())
limit_malloc_arenas()  # run workers launched by the UI or the daemon load this module first


def build_resources() -> dict[str, dg.ConfigurableResource]:
    """Resources from the current environment (called at load, and by tests after changing it);
    variables, defaults and checks are pipelines.settings'."""
    return resources_from_env()


def build_executor() -> dg.ExecutorDefinition:
    """One process per step: ``SYNC_MAX_CONCURRENT_STEPS`` (default 2) at once, of which at most
    ``SYNC_CPU_STEPS`` (default 1) CPU-bound ones (see pipelines/executor.py)."""
    max_steps, cpu_steps = settings_value("SYNC_MAX_CONCURRENT_STEPS"), settings_value("SYNC_CPU_STEPS")
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
