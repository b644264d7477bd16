"""What the reliability tests share: sandbox sites, syncs in process or in a subprocess, and a
fault-free reference warehouse of the standard test world.

A :class:`Site` is one sandbox (served on loopback, as in ``tests/conftest.py``) with its own
warehouse, leads folder and Dagster home. Two sites built with the same seed, scale and anchor
serve identical data, so one can misbehave while the other is the yardstick. The
:func:`reference` fixture syncs the standard world (tiny, seed 1, ``conftest.ANCHOR``) without
faults once per test session: ``first`` is the warehouse after one ``sync_all``, ``second`` after
advancing the world one day and syncing again.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from conftest import ANCHOR, clean_env, isolate_env
from warehouse_compare import Dump, dump

from pipelines.sandbox import Sandbox

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# As the shared `world` fixture: several pages per list, fast retries, and a client timeout no
# honest answer reaches even on a loaded machine (only tests injecting `timeout` faults lower it).
# A failing feed step in a subprocess run is retried by its RetryPolicy as a user's would be, after
# 1 s instead of 30 s (then 60 s): the retry is exercised, the wait is not what the tests are about.
BASE_ENV = {
    "ONLYTRAFFIC_MARKETER_PAGE_SIZE": "50",
    "HTTP_BACKOFF_BASE_SECONDS": "0.01",
    "HTTP_TIMEOUT_SECONDS": "30",
    "FEED_STEP_RETRY_DELAY_SECONDS": "1",
}
# Faults at a realistic rate: 20 % of requests fail, every kind; 429s carry a Retry-After of 0 or
# 1 s, rate-limit errors inside 200 bodies none (no doc promises one). A `timeout` fault answers
# after 6 s, twice the 3 s client timeout, which an honest answer stays far below even on a busy
# machine: so the retries equal the faults the sandbox injected. 8 attempts are plenty.
REALISTIC_FAULTS = {
    "rate": 0.2, "kinds": ["429", "error_200", "500", "502", "503", "timeout", "drop", "malformed"],
    "retry_after": 0, "retry_after_max": 1, "retry_after_on": ["429"], "slow_seconds": 6,
}
REALISTIC_ENV = {"HTTP_TIMEOUT_SECONDS": "3", "HTTP_MAX_ATTEMPTS": "8", "HTTP_BACKOFF_BASE_SECONDS": "0.05"}


@dataclass(frozen=True)
class Feed:
    """One feed as the reliability tests see it: what to run, where it asks, how it fails."""

    name: str
    assets: tuple[str, ...]  # what to materialize (cpa.moe: the lead register first)
    route: str  # a substring of every request path it makes (for fault ``only`` filters)
    endpoint: str  # how a failure names the request: method and path after the base URL
    concurrency_var: str
    credential_vars: tuple[str, ...]


FEEDS = {
    f.name: f
    for f in (
        Feed("cpc", ("cpc_orders",), "/cpc/orders", "GET {base}/onlytraffic/api/marketer/cpc/orders",
             "ONLYTRAFFIC_MARKETER_CONCURRENCY", ("ONLYTRAFFIC_MARKETER_API_KEY",)),
        Feed("cpl", ("cpl_orders",), "/cpl/orders", "GET {base}/onlytraffic/api/marketer/cpl/orders",
             "ONLYTRAFFIC_MARKETER_CONCURRENCY", ("ONLYTRAFFIC_MARKETER_API_KEY",)),
        Feed("swap", ("swap_orders",), "/swaps/orders", "GET {base}/studio/swaps/orders",
             "ONLYTRAFFIC_STUDIO_CONCURRENCY", ("ONLYTRAFFIC_STUDIO_API_KEY",)),
        Feed("cpamoe", ("cpamoe_lead_files", "cpamoe_leads"), "/ext/list.json", "POST {base}/cpamoe/ext/list.json",
             "CPAMOE_CONCURRENCY", ("CPAMOE_USER_ID", "CPAMOE_API_KEY")),
        Feed("metapic", ("metapic_offers", "metapic_participants"), "/metapic/", "GET {base}/metapic/v2/offers",
             "METAPIC_CONCURRENCY", ("METAPIC_ACCESS_TOKEN", "METAPIC_USER_ID")),
    )
}


@dataclass
class Site:
    sandbox: Sandbox
    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def start(cls, root: Path, *, scale: str = "tiny", seed: int = 1, **extra_env: str) -> Site:
        root.mkdir(parents=True, exist_ok=True)
        sandbox = Sandbox(scale=scale, seed=seed, anchor=ANCHOR)
        sandbox.start()
        return cls(sandbox, root, dict(extra_env))

    def stop(self) -> None:
        self.sandbox.stop()

    # -- places ----------------------------------------------------------------------------------

    @property
    def warehouse_path(self) -> Path:
        return self.root / "warehouse.duckdb"

    @property
    def leads_dir(self) -> Path:
        return self.root / "leads"

    @property
    def dagster_home(self) -> Path:
        return self.root / "dagster_home"

    def env(self) -> dict[str, str]:
        return {
            **BASE_ENV,
            **self.sandbox.env(),
            "WAREHOUSE_PATH": str(self.warehouse_path),
            "WAREHOUSE_NOW": self.sandbox.world.now.isoformat(),
            "CPAMOE_LEADS_DIR": str(self.leads_dir),
            **self.extra_env,
        }

    def secrets(self) -> list[str]:
        """Every credential value the sandbox hands out, and cpa.moe's ``{user}-{key}``."""
        env = self.sandbox.env()
        values = [env[k] for k in env if k.endswith(("_API_KEY", "_ACCESS_TOKEN"))]
        return [*values, f"{env['CPAMOE_USER_ID']}-{env['CPAMOE_API_KEY']}"]

    # -- the world -------------------------------------------------------------------------------

    def register_leads(self, extra: list[str] = ()) -> list[str]:
        """A CSV registering every lead the sandbox knows (the cpa.moe poll asks only for those)."""
        ids = sorted(self.sandbox.dataset("cpamoe_leads").by_id) + list(extra)
        self.leads_dir.mkdir(parents=True, exist_ok=True)
        with (self.leads_dir / "leads.csv").open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id", "offer", "submitted_at"])
            writer.writerows([i, "217", "2026-01-01T00:00:00Z"] for i in ids)
        return ids

    def advance(self, **delta: float) -> None:
        self.sandbox.advance(**delta)

    def api(self, name: str):
        return next(m for m in self.sandbox.modules if m.name == name)

    # -- syncing ---------------------------------------------------------------------------------

    def apply_env(self, monkeypatch: pytest.MonkeyPatch, **overrides: str) -> None:
        """This process's environment: the allow-list (conftest) plus this site's variables."""
        isolate_env(monkeypatch, **{**self.env(), **overrides})

    def sync(
        self,
        monkeypatch: pytest.MonkeyPatch,
        *,
        assets: list[str] | None = None,
        job: str = "sync_all",
        raise_on_error: bool = True,
        instance: dg.DagsterInstance | None = None,
        **env_overrides: str,
    ) -> dg.ExecuteInProcessResult:
        """One run of ``job`` (or of ``assets`` of it) in this process, with this site's env."""
        from pipelines.definitions import build_defs

        self.apply_env(monkeypatch, **env_overrides)
        job_def = build_defs().resolve_job_def(job)
        return job_def.execute_in_process(
            instance=instance or dg.DagsterInstance.ephemeral(),
            raise_on_error=raise_on_error,
            asset_selection=[dg.AssetKey(a) for a in assets] if assets else None,
        )

    def subprocess_env(self, **overrides: str) -> dict[str, str]:
        """The allow-list (conftest) plus this site's variables: nothing else of the developer's."""
        return clean_env(**{**self.env(), "DAGSTER_HOME": str(self.dagster_home), "PYTHONUNBUFFERED": "1", **overrides})

    def spawn(self, args: list[str], *, name: str, cwd: Path | None = None, **env_overrides: str) -> Spawned:
        """Start ``args`` (e.g. the CLI) in a process of its own, output captured to files; in
        this site's folder (no stray ``.env``) unless ``cwd`` says otherwise."""
        out = (self.root / f"{name}.stdout").open("wb")
        err = (self.root / f"{name}.stderr").open("wb")
        proc = subprocess.Popen(
            args, cwd=cwd or self.root, env=self.subprocess_env(**env_overrides), stdout=out, stderr=err,
            start_new_session=True,
        )
        return Spawned(proc, self.root / f"{name}.stdout", self.root / f"{name}.stderr", [out, err])

    def run_cli(self, *cli_args: str, name: str = "cli", timeout: float = 240, **env_overrides: str) -> Spawned:
        """``python -m pipelines.cli <args>`` to completion."""
        spawned = self.spawn([sys.executable, "-m", "pipelines.cli", *cli_args], name=name, **env_overrides)
        spawned.wait(timeout)
        return spawned

    # -- reading ---------------------------------------------------------------------------------

    def dump(self) -> Dump:
        return dump(self.warehouse_path)

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        with duckdb.connect(str(self.warehouse_path), read_only=True) as con:
            con.execute("SET TimeZone = 'UTC'")
            return con.execute(sql, params or []).fetchall()

    def scalar(self, sql: str, params: list | None = None):
        return self.query(sql, params)[0][0]


@dataclass
class Spawned:
    proc: subprocess.Popen
    stdout_path: Path
    stderr_path: Path
    _files: list

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        finally:
            self._close()

    def kill(self) -> None:
        """SIGKILL, no chance to clean up: what a crash or an OOM kill does."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its whole session: no orphan survives
        self.proc.wait(30)
        # a run's steps are processes of the same session: gone too before anyone looks
        wait_until(lambda: not _group_alive(self.proc.pid), 30, interval=0.01)
        self._close()

    def _close(self) -> None:
        for f in self._files:
            f.close()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.005) -> bool:
    """Poll ``condition`` until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return False


# -- the fault-free reference ----------------------------------------------------------------------


@dataclass(frozen=True)
class Reference:
    first: Dump  # after registering every lead and one sync_all at the anchor
    second: Dump  # after advancing one day and a second sync_all


_REFERENCE: dict[str, Reference] = {}


def build_reference(root: Path) -> Reference:
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(root.parent)
        site = Site.start(root)
        try:
            site.register_leads()
            site.sync(monkeypatch)
            first = site.dump()
            site.advance(days=1)
            site.sync(monkeypatch)
            return Reference(first, site.dump())
        finally:
            site.stop()


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Reference:
    """The standard world synced without faults (built once per session, whichever module asks)."""
    if "standard" not in _REFERENCE:
        _REFERENCE["standard"] = build_reference(tmp_path_factory.mktemp("reference") / "site")
    return _REFERENCE["standard"]


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A site of the standard world (the reference's twin), started and stopped per test."""
    monkeypatch.chdir(tmp_path)  # no stray .env from the project root
    s = Site.start(tmp_path / "site")
    s.apply_env(monkeypatch)
    try:
        yield s
    finally:
        s.stop()
