"""What every step process imports, imported once in the executor's fork server instead.

Each step of a run is a process forked from the multiprocess executor's fork server
(:mod:`pipelines.executor`), which preloads ``pipelines.definitions``. But a step then opens the
Dagster instance (its SQLite storage pulls in SQLAlchemy's dialects, alembic and watchdog) and an
HTTP client (httpcore imports trio and anyio when they are installed), and those imports ran again
in every step: ~0.75 s between a step's "worker starting" and "worker started" events on this
2-core machine, paid nine times per ``sync_all``, mostly one after another in the CPU lane.
Importing them here, in the fork server, leaves every fork with them already loaded.

It also builds the feeds' shared TLS context (loading the CA bundle, ~0.1-0.2 s a process).
Nothing else: the fork server must hold no thread, connection or open file when it forks.
"""

from __future__ import annotations

import importlib

from pipelines.sources.http import shared_ssl_context

# The instance a step opens (dagster.yaml: SQLite storage, our run launcher, no compute logs).
INSTANCE_MODULES = (
    "dagster._core.instance.factory",
    "dagster._core.secrets.env_file",
    "dagster._core.storage.root",
    "dagster._core.storage.migration.utils",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.event_log.sqlite.consolidated_sqlite_event_log",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
    "dagster._core.storage.sql",
    "dagster._core.storage.noop_compute_log_manager",
    # the instance's defs-state storage is a UPath: importing upath's registry scans every
    # installed distribution's entry points (~0.3 s)
    "dagster._core.storage.defs_state.blob_storage_state_storage",
    "upath.registry",
    "upath.implementations.local",
    "fsspec.implementations.local",
    "pipelines.run_recovery",
)
# The HTTP client of every feed (httpx imports its transport's modules only when a client is made).
HTTP_MODULES = ("httpx", "httpcore", "h11", "sniffio", "anyio", "trio")


def preload() -> list[str]:
    """Import every module above that this environment has; the names of those it lacks."""
    missing = []
    for name in (*INSTANCE_MODULES, *HTTP_MODULES):
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)  # optional (trio) or moved in another Dagster release: only slower
    return missing


# what the fork server lacked (checked by tests/test_step_start.py: a rename would go unnoticed)
MISSING = preload()
shared_ssl_context()
