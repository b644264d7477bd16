"""A real Dagster webserver and daemon on loopback, on this code location, against the sandbox.

What ``make ui`` runs (``dg dev`` is a wrapper starting the same two processes), started once per
test session and shared by the UI tests: tests/test_ui_backfill.py drives it through GraphQL, the
API the UI's buttons call, and tests/test_browser.py looks at it with Chromium. Everything binds
127.0.0.1, uses a temporary DAGSTER_HOME and warehouse, and is stopped by process group.

The schedules are switched off (a 30-minute tick during the test would sync everything and blur
what the backfills wrote); the automation sensor runs, every 5 s instead of 30.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import httpx

from conftest import clean_env

from pipelines.sandbox import Sandbox

PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCATION = "affiliate_warehouse"
REPOSITORY = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"}
TERMINAL_BACKFILL = {"COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
TERMINAL_RUN = {"SUCCESS", "FAILURE", "CANCELED"}
IN_FLIGHT_RUN = ["QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING"]

LAUNCH_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PartitionSetNotFoundError { message }
    ... on PartitionKeysNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
    ... on PythonError { message stack }
  }
}"""

BACKFILL = """
query Backfill($backfillId: String!) {
  partitionBackfillOrError(backfillId: $backfillId) {
    __typename
    ... on PartitionBackfill {
      id status numPartitions partitionNames isAssetBackfill endTimestamp
      error { message }
      runs(limit: 50) { runId status tags { key value } }
    }
    ... on PythonError { message }
  }
}"""

LAUNCH_RUN = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on InvalidSubsetError { message }
    ... on PythonError { message }
  }
}"""

RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status endTime tags { key value } }
    ... on PythonError { message }
  }
}"""

RECENT_RUNS = """
query RecentRuns {
  runsOrError(limit: 10) { ... on Runs { results { runId status jobName tags { key value } } } }
}"""

RUNS_IN_FLIGHT = """
query RunsInFlight($statuses: [RunStatus!]) {
  runsOrError(filter: {statuses: $statuses}) { ... on Runs { results { runId } } }
}"""

MATERIALIZATIONS = """
query Materializations($assetKey: AssetKeyInput!, $partitions: [String!], $limit: Int) {
  assetOrError(assetKey: $assetKey) {
    __typename
    ... on Asset {
      assetMaterializations(partitions: $partitions, limit: $limit) {
        partition runId timestamp tags { key value }
      }
    }
  }
}"""

WORKSPACE = """
query Workspace {
  workspaceOrError {
    ... on Workspace {
      locationEntries {
        name loadStatus
        locationOrLoadError { __typename ... on PythonError { message } }
      }
    }
  }
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DagsterUi:
    """The running servers plus GraphQL helpers; every wait is bounded."""

    root: Path
    sandbox: Sandbox
    port: int
    env: dict[str, str]
    processes: list[subprocess.Popen] = field(default_factory=list)
    logs: list = field(default_factory=list)
    http: httpx.Client = field(default_factory=lambda: httpx.Client(timeout=60))
    memo: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def warehouse_path(self) -> Path:
        return Path(self.env["WAREHOUSE_PATH"])

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        workspace = str(PROJECT_ROOT / "workspace.yaml")
        # one after the other: two processes creating a fresh instance's SQLite storage at once
        # race on its schema version ("more than one head")
        self._spawn("webserver", [_bin("dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port), "-w", workspace])
        self._wait_until_loaded(timeout=240)
        self._spawn("daemon", [_bin("dagster-daemon"), "run", "-w", workspace])

    def _spawn(self, name: str, command: list[str]) -> None:
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.logs.append(log)
        # its own process group: stop() ends it and every child it started (code servers, runs)
        self.processes.append(
            subprocess.Popen(command, cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.processes:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for log in self.logs:
            log.close()
        self.http.close()
        self.sandbox.stop()

    def _wait_until_loaded(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            for proc in self.processes:
                if proc.poll() is not None:
                    raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}:\n{self.log_tail()}")
            try:
                entries = self.graphql(WORKSPACE)["workspaceOrError"]["locationEntries"]
                entry = next(e for e in entries if e["name"] == LOCATION)
                kind = entry["locationOrLoadError"] and entry["locationOrLoadError"]["__typename"]
                if kind == "RepositoryLocation":
                    return
                if kind == "PythonError":
                    raise RuntimeError(f"the code location failed to load: {entry['locationOrLoadError']['message']}")
                last = entry["loadStatus"]
            except (httpx.HTTPError, StopIteration, KeyError, TypeError) as exc:
                last = repr(exc)
            time.sleep(1)
        raise TimeoutError(f"the webserver did not load {LOCATION} within {timeout:.0f}s ({last}):\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        out = []
        for name in ("webserver", "daemon"):
            path = self.root / f"{name}.log"
            if path.exists():
                out.append(f"--- {name}.log\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    # -- GraphQL ---------------------------------------------------------------------------------

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        response = self.http.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}})
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise RuntimeError(body["errors"])
        return body["data"]

    def launch_backfill(self, asset: str, partitions: list[str]) -> str:
        """What the UI's "Materialize" dialog sends for a partition range of one asset."""
        params = {
            "assetSelection": [{"path": [asset]}],
            "partitionNames": partitions,
            "fromFailure": False,
            "title": f"test backfill of {asset}",
            "tags": [{"key": "started_by", "value": "test_ui_backfill"}],
        }
        result = self.graphql(LAUNCH_BACKFILL, {"backfillParams": params})["launchPartitionBackfill"]
        assert result["__typename"] == "LaunchBackfillSuccess", result
        return result["backfillId"]

    def wait_for_backfill(self, backfill_id: str, timeout: float = 300) -> dict:
        """Poll until terminal (the backfill daemon ticks every 30 s: expect 30-90 s)."""
        deadline = time.monotonic() + timeout
        while True:
            backfill = self.graphql(BACKFILL, {"backfillId": backfill_id})["partitionBackfillOrError"]
            if backfill.get("status") in TERMINAL_BACKFILL:
                return backfill
            if time.monotonic() > deadline:
                raise TimeoutError(f"backfill {backfill_id} still {backfill.get('status')} after {timeout:.0f}s:\n{self.log_tail()}")
            time.sleep(2)

    def materialize(self, asset: str, timeout: float = 180) -> str:
        """What the UI's "Materialize" button sends for an unpartitioned asset; waits for the run."""
        params = {"selector": {**REPOSITORY, "jobName": "__ASSET_JOB", "assetSelection": [{"path": [asset]}]}, "runConfigData": {}}
        result = self.graphql(LAUNCH_RUN, {"executionParams": params})["launchRun"]
        assert result["__typename"] == "LaunchRunSuccess", result
        run_id = result["run"]["runId"]
        status = self.wait_for_run(run_id, timeout)
        assert status == "SUCCESS", f"run {run_id} of {asset}: {status}\n{self.log_tail()}"
        return run_id

    def run(self, run_id: str) -> dict:
        return self.graphql(RUN, {"runId": run_id})["runOrError"]

    def wait_for_run(self, run_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(run_id)
            if run.get("status") in TERMINAL_RUN:
                return run["status"]
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {run.get('status')} after {timeout:.0f}s")
            time.sleep(1)

    def wait_until_idle(self, timeout: float = 180) -> None:
        """Until no run is queued or running (e.g. the views the automation sensor re-creates)."""
        deadline = time.monotonic() + timeout
        while self.graphql(RUNS_IN_FLIGHT, {"statuses": IN_FLIGHT_RUN})["runsOrError"]["results"]:
            if time.monotonic() > deadline:
                raise TimeoutError(f"runs still in flight after {timeout:.0f}s")
            time.sleep(1)

    def recent_runs(self) -> list[tuple[str, str, str]]:
        """(job, status, what started it) of the last runs, newest first: for a timeout's message."""
        runs = self.graphql(RECENT_RUNS)["runsOrError"]["results"]
        started_by = ("dagster/sensor_name", "dagster/backfill", "started_by")
        return [
            (r["jobName"], r["status"], next((f"{t['key']}={t['value']}" for t in r["tags"] if t["key"] in started_by), ""))
            for r in runs
        ]

    def materializations(self, asset: str, partitions: list[str] | None = None, limit: int | None = None) -> list[dict]:
        variables = {"assetKey": {"path": [asset]}, "partitions": partitions, "limit": limit}
        return self.graphql(MATERIALIZATIONS, variables)["assetOrError"]["assetMaterializations"]

    # -- the warehouse ---------------------------------------------------------------------------

    def query(self, sql: str, timeout: float = 60) -> list[tuple]:
        """Read the warehouse, waiting for a run's write lock to be released."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                with duckdb.connect(str(self.warehouse_path), read_only=True) as con:
                    con.execute("SET TimeZone = 'UTC'")
                    return con.execute(sql).fetchall()
            except duckdb.IOException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)


def _bin(name: str) -> str:
    return str(Path(sys.executable).with_name(name))


def start_ui(root: Path, anchor) -> DagsterUi:
    """Start the sandbox in this process and the Dagster servers as subprocesses pointed at it."""
    sandbox = Sandbox(scale="tiny", seed=1, anchor=anchor)
    sandbox.start()
    home = root / "dagster_home"
    home.mkdir(parents=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = clean_env(  # the allow-list (conftest): no developer's setting reaches the servers
        **sandbox.env(),
        DAGSTER_HOME=str(home),
        WAREHOUSE_PATH=str(root / "warehouse.duckdb"),
        WAREHOUSE_NOW=sandbox.world.now.isoformat(),
        CPAMOE_LEADS_DIR=str(root / "cpamoe_leads"),
        SCHEDULES_DEFAULT_STATUS="stopped",
        AUTOMATION_INTERVAL_SECONDS="5",
        HTTP_BACKOFF_BASE_SECONDS="0.01",
        DAGSTER_DISABLE_TELEMETRY="1",
        PYTHONUNBUFFERED="1",
    )
    ui = DagsterUi(root=root, sandbox=sandbox, port=free_port(), env=env)
    try:
        ui.start()
    except BaseException:
        ui.stop()
        raise
    return ui


# One stack per test session, shared by the modules that ask for it (a session fixture defined in
# two modules is two fixtures; this reference count makes them one stack, stopped by the last).
_shared: dict[str, object] = {"ui": None, "users": 0}


def acquire(root_factory, anchor) -> DagsterUi:
    if _shared["ui"] is None:
        _shared["ui"] = start_ui(root_factory(), anchor)
    _shared["users"] += 1
    return _shared["ui"]


def release() -> None:
    _shared["users"] -= 1
    if _shared["users"] == 0 and _shared["ui"] is not None:
        ui, _shared["ui"] = _shared["ui"], None
        ui.stop()


# -- the scenario both UI test modules look at -------------------------------------------------------

SWAP_DAYS = ["2026-01-10", "2026-01-11", "2026-01-12"]
METAPIC_DAYS = ["2026-01-08", "2026-01-09", "2026-01-10"]
BACKFILLS = {"swap_orders_by_created_day": SWAP_DAYS, "metapic_participant_daily_stats": METAPIC_DAYS}


def run_backfills(ui: DagsterUi) -> dict[str, dict]:
    """Once per session: materialize metapic_offers (the daily stats read the offers live each
    day), then launch both partition backfills at once and wait for them and for every run the
    automation sensor starts afterwards. Returns each asset's finished backfill."""
    if "backfills" not in ui.memo:
        ui.memo["offers_run"] = ui.materialize("metapic_offers")
        launched = {asset: ui.launch_backfill(asset, days) for asset, days in BACKFILLS.items()}
        ui.memo["backfills"] = {asset: ui.wait_for_backfill(backfill_id) for asset, backfill_id in launched.items()}
        ui.memo["views_rebuilt"] = _wait_for_views_after(ui, BACKFILLS)
    return ui.memo["backfills"]


VIEWS_AFTER_BACKFILL = ("v_fill_rate", "v_earnings")


def _wait_for_views_after(ui: DagsterUi, backfills: dict[str, list[str]], timeout: float = 180) -> dict[str, dict]:
    """The latest materialization of each view in VIEWS_AFTER_BACKFILL once it is newer than the
    last partition every backfill wrote (started by the automation sensor, not by us), then until
    no run is in flight.

    The mark is the partitions' own materializations, not the backfill's ``endTimestamp``: the
    backfill daemon records that at its next tick (up to 30 s later, more on a loaded machine),
    and the sensor may re-create the views in between, legitimately, since every table was written.
    """
    written_ms = max(
        float(event["timestamp"]) for asset, days in backfills.items() for event in ui.materializations(asset, partitions=days)
    )
    deadline = time.monotonic() + timeout
    latest: dict[str, dict] = {}
    while set(latest) != set(VIEWS_AFTER_BACKFILL):
        for view in VIEWS_AFTER_BACKFILL:
            found = ui.materializations(view, limit=1)
            if found and float(found[0]["timestamp"]) > written_ms:
                latest[view] = found[0]
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"views not re-created within {timeout:.0f}s of the backfills' last write (got {sorted(latest)}; "
                f"latest runs: {ui.recent_runs()}):\n{ui.log_tail()}"
            )
        time.sleep(2)
    ui.wait_until_idle()
    return latest
