"""The one Dagster ``Definitions`` object of this code location.

Everything Dagster runs is found in ``pipelines/defs/`` by ``dg.load_from_defs_folder`` (one folder
per source with its assets, checks, jobs and resource; the marts, the views, ``sync_all`` and the
schedules), merged here with the shared warehouse resource and the executor, which both come from
the environment. Freshness policies are applied here too (their windows are variables). A module added under
``pipelines/defs/`` (``dg scaffold defs dagster.asset my_asset.py``) is loaded with the rest.

Resources are built from environment variables (see :mod:`pipelines.settings` and the README) each
time the definitions load: a source's by the ``@dg.definitions`` function of its
``pipelines/defs/<source>/resources.py``; secrets are ``EnvVar``\\ s so the UI shows their names only.
"""

import importlib
import logging
import pkgutil
from pathlib import Path

import dagster as dg

from pipelines.allocator import limit_malloc_arenas
from pipelines.defs.feed_asset import FEED_TAG, LOAD_TAG, current_feed_keys, full_refresh_run_config
from pipelines.executor import sync_executor
from pipelines.resources import warehouse_from_env
from pipelines.schedules import OperationsSettings, with_freshness
from pipelines.settings import load_env_file
from pipelines.settings import value as settings_value

load_env_file()
# Library warnings (e.g. pipelines.warehouse waiting for the file lock) reach the run's log through
# the callbacks the assets pass; without a handler Python would also print them on stderr.
logging.getLogger("pipelines").addHandler(logging.NullHandler())
limit_malloc_arenas()  # run workers launched by the UI or the daemon load this module first


DEFS_FOLDER = Path(__file__).parent / "defs"


def source_resource_modules() -> list:
    """Every ``pipelines/defs/<folder>/resources.py`` (a source's resources and how the environment
    builds them), found by that name: no list of sources to keep."""
    return [
        importlib.import_module(f"pipelines.defs.{info.name}.resources")
        for info in pkgutil.iter_modules([str(DEFS_FOLDER)])
        if info.ispkg and (DEFS_FOLDER / info.name / "resources.py").exists()
    ]


def build_resources() -> dict[str, dg.ConfigurableResource]:
    """Every resource from the current environment, as the definitions bind them (the shared
    warehouse, then each source folder's ``resources_from_env()``); for tests and CLI commands
    that call a resource outside a run. Variables, defaults and checks are pipelines.settings'."""
    found: dict[str, dg.ConfigurableResource] = {"warehouse": warehouse_from_env()}
    for module in source_resource_modules():
        found.update(module.resources_from_env())
    return found


def build_executor() -> dg.ExecutorDefinition:
    """One process per step: ``SYNC_MAX_CONCURRENT_STEPS`` (default 2) at once, of which at most
    ``SYNC_CPU_STEPS`` (default 1) CPU-bound ones (see pipelines/executor.py)."""
    max_steps, cpu_steps = settings_value("SYNC_MAX_CONCURRENT_STEPS"), settings_value("SYNC_CPU_STEPS")
    return sync_executor(max_steps, cpu_steps, LOAD_TAG)


def build_defs() -> dg.Definitions:
    """The defs folder (each source folder contributes its resources), with the warehouse, the
    executor and the freshness policies of the current environment (tests call it again after
    changing variables: the folder's ``@dg.definitions`` functions run again each time)."""
    settings = OperationsSettings.from_env()
    folder = dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
    return dg.Definitions.merge(
        with_freshness(folder, settings, FEED_TAG),
        dg.Definitions(resources={"warehouse": warehouse_from_env()}, executor=build_executor()),
    )


# Current-state feeds (one asset and one step each; asset key = op name), for tests and the CLI.
INGESTION_KEYS = current_feed_keys()

__all__ = ["INGESTION_KEYS", "build_defs", "build_resources", "defs", "full_refresh_run_config", "sync_all_job"]

defs = build_defs()


def sync_all_job() -> dg.JobDefinition:
    """``sync_all`` for ``dg.reconstructable`` (the CLI runs it with the multiprocess executor)."""
    return defs.resolve_job_def("sync_all")
