"""Shared fixtures: a sandbox on a loopback port, a fresh warehouse, and a way to run the job.

Every test talks to the sandbox over real HTTP; nothing of ours is mocked.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import duckdb
import pytest

# -- the environment every test, fixture and subprocess runs in ---------------------------------------
#
# One allow-list: what the machine needs to run programs (paths, locale, temp dirs, certificates,
# CI), never a setting of this project (credentials, HTTP_*, WAREHOUSE_*, DAGSTER_HOME, ...) nor a
# proxy (loopback traffic to the sandbox must not go through one). Each test adds its own variables
# on top. The developer's shell is read once, here; ``.env`` never: the project loads it from the
# working directory, and tests import the project and start its processes elsewhere.
ALLOWED_VARIABLES = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR", "TEMP", "TMP",
    "CI", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE", "DISPLAY", "XDG_RUNTIME_DIR", "UPDATE_SCREENSHOTS",
})
ALLOWED_PREFIXES = ("LC_", "PYTEST_", "PYTHON", "COV_CORE_")  # locale, pytest's own, the interpreter's
PROXY_VARIABLES = frozenset({"http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
                             "ALL_PROXY", "all_proxy"})
DEVELOPER_ENV = dict(os.environ)  # as the shell started pytest; only clean_env reads it


def allowed(name: str) -> bool:
    return name in ALLOWED_VARIABLES or name.startswith(ALLOWED_PREFIXES)


def clean_env(**own: str) -> dict[str, str]:
    """The environment for a subprocess: the allow-listed variables of the developer's shell, plus
    ``own`` (the test's variables)."""
    return {**{k: v for k, v in DEVELOPER_ENV.items() if allowed(k)}, **own}


def isolate_env(monkeypatch: pytest.MonkeyPatch, **own: str) -> None:
    """This process's environment as :func:`clean_env` (undone when the test ends)."""
    for name in [n for n in os.environ if not allowed(n)]:
        monkeypatch.delenv(name)
    for name, value in own.items():
        monkeypatch.setenv(name, value)


def _import_the_project_without_dotenv() -> None:
    """The project loads ``.env`` from the working directory when its definitions are first
    imported: import them once from an empty directory, before any test module can."""
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="no-dotenv-") as empty:
        os.chdir(empty)
        try:
            import pipelines.definitions  # noqa: F401
        finally:
            os.chdir(here)


for _name in [n for n in os.environ if not allowed(n)]:  # a session fixture's setup sees this too
    del os.environ[_name]
# In-process runs execute each feed's step once: a test of a failing feed asserts what one attempt
# did (requests, commits). The feeds' Dagster RetryPolicy is read when the definitions are
# imported; test_failure_isolation.py tests it in a subprocess with retries on.
os.environ["FEED_STEP_RETRIES"] = "0"
_import_the_project_without_dotenv()
del os.environ["FEED_STEP_RETRIES"]

from pipelines.sandbox import Sandbox  # noqa: E402

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
            run_config = full_refresh_run_config(assets)  # each selected feed's op
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


@contextmanager
def open_world(root: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    """A tiny sandbox world at a fixed anchor time, small pages, fast retries, and a client timeout
    no honest answer reaches on a busy machine (tests injecting ``timeout`` faults set their own);
    its warehouse in ``root``."""
    isolate_env(
        monkeypatch, ONLYTRAFFIC_MARKETER_PAGE_SIZE="50", HTTP_BACKOFF_BASE_SECONDS="0.01", HTTP_TIMEOUT_SECONDS="30"
    )
    monkeypatch.chdir(root)  # no stray .env from the project root
    sandbox = Sandbox(scale="tiny", seed=1, anchor=ANCHOR)
    sandbox.start()
    w = World(sandbox, root / "warehouse.duckdb", monkeypatch)
    w.apply_env()
    try:
        yield w
    finally:
        sandbox.stop()


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The standard tiny world (:func:`open_world`), one per test."""
    with open_world(tmp_path, monkeypatch) as w:
        yield w


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test starts from the allow-listed environment, whatever an earlier test or the
    developer's shell set."""
    isolate_env(monkeypatch)


def pytest_configure(config: pytest.Config) -> None:
    # slow: long reliability tests (load, crash, concurrency); still part of `make test`
    config.addinivalue_line("markers", "slow: a long test; deselect with -m 'not slow'")
    # the reliability tests' fixtures (`site`, and `reference`: built once per session)
    config.pluginmanager.import_plugin("reliability_fixtures")


# How `make test` shares the tests between its two workers (pytest-xdist, --dist loadgroup): a file
# stays on one worker (its module fixtures are built once), except that the two files driving the
# Dagster UI share one worker and one UI stack (tests/ui_stack.py, ~1.5 min to start), and the files
# of long independent tests (each its own sandbox and processes) are shared out test by test.
_UI_STACK_FILES = {"test_browser.py", "test_ui_backfill.py"}
_TEST_BY_TEST_FILES = {"test_reliability_crash.py", "test_failure_isolation.py", "test_alerts_webhook.py",
                       "test_cli.py", "test_status.py"}


# tryfirst: pytest-xdist's own hook of this name turns each item's `xdist_group` mark into the `@group`
# suffix of its node id, which is what --dist loadgroup reads, so the marks must be there before it runs.
# tests/test_suite_grouping.py holds the installed pytest + xdist to honouring the groups.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        name = item.path.name
        if name in _UI_STACK_FILES:
            group = "ui_stack"
        elif name in _TEST_BY_TEST_FILES:
            group = item.nodeid
        else:
            group = name
        item.add_marker(pytest.mark.xdist_group(group))


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
