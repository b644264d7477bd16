"""Shared fixtures: a sandbox on a loopback port, a fresh warehouse, and a way to run the job.

Every test talks to the sandbox over real HTTP; nothing of ours is mocked.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from pipelines.sandbox import Sandbox

ANCHOR = datetime(2026, 1, 15, 12, 0, tzinfo=UTC)


@dataclass
class World:
    """A started sandbox plus a warehouse path, with helpers to sync, advance and query."""

    sandbox: Sandbox
    warehouse_path: Path
    monkeypatch: pytest.MonkeyPatch

    def env(self) -> dict[str, str]:
        return {
            **self.sandbox.env(),
            "WAREHOUSE_PATH": str(self.warehouse_path),
            "WAREHOUSE_NOW": self.sandbox.world.now.isoformat(),
        }

    def apply_env(self) -> None:
        for key, value in self.env().items():
            self.monkeypatch.setenv(key, value)

    def advance(self, **delta: float) -> None:
        self.sandbox.advance(**delta)
        self.apply_env()

    def sync(
        self,
        *,
        assets: list[str] | None = None,
        full_refresh: bool = False,
        raise_on_error: bool = True,
        job: str = "sync_all",
    ) -> dg.ExecuteInProcessResult:
        from pipelines.definitions import build_defs, full_refresh_run_config

        self.apply_env()
        defs = build_defs()
        job_def = defs.resolve_job_def(job)
        selection = [dg.AssetKey(a) for a in assets] if assets else None
        run_config = {}
        if full_refresh:
            run_config = full_refresh_run_config()  # the feeds' one op: applies to those selected
        return job_def.execute_in_process(
            run_config=run_config,
            instance=dg.DagsterInstance.ephemeral(),
            raise_on_error=raise_on_error,
            asset_selection=selection,
        )

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        with duckdb.connect(str(self.warehouse_path), read_only=True) as con:
            con.execute("SET TimeZone = 'UTC'")
            return con.execute(sql, params or []).fetchall()

    def scalar(self, sql: str, params: list | None = None):
        return self.query(sql, params)[0][0]


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A tiny sandbox world at a fixed anchor time, small pages, fast retries."""
    for var in [v for v in os.environ if v.startswith(("ONLYTRAFFIC_", "CPAMOE_", "METAPIC_"))]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ONLYTRAFFIC_MARKETER_PAGE_SIZE", "50")
    monkeypatch.setenv("HTTP_BACKOFF_BASE_SECONDS", "0.01")
    monkeypatch.setenv("HTTP_TIMEOUT_SECONDS", "2")
    monkeypatch.chdir(tmp_path)  # no stray .env from the project root
    sandbox = Sandbox(scale="tiny", seed=1, anchor=ANCHOR)
    sandbox.start()
    w = World(sandbox, tmp_path / "warehouse.duckdb", monkeypatch)
    w.apply_env()
    try:
        yield w
    finally:
        sandbox.stop()


def pytest_configure(config: pytest.Config) -> None:
    # slow: long reliability tests (load, crash, concurrency); still part of `make test`
    config.addinivalue_line("markers", "slow: a long test; deselect with -m 'not slow'")
    # the reliability tests' fixtures (`site`, and `reference`: built once per session)
    config.pluginmanager.import_plugin("reliability_fixtures")


_exit_status = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    """End the process as soon as pytest is done, with its exit status.

    DuckDB 2.0's Python binding (nanobind) prints hundreds of "leaked instance" lines while the
    interpreter shuts down, after pytest's summary, burying the line that says how the run went.
    Nothing useful happens after this hook, so skip interpreter finalization.
    """
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status)
