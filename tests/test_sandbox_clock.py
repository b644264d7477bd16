"""In sandbox mode the warehouse clock is the sandbox's simulated clock (WAREHOUSE_CLOCK_URL), so a
day moved with POST /_sandbox/advance is a day in durations, alert due times and earning days."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from conftest import World, clean_env
from pipelines.clock import CLOCK_CACHE_SECONDS, CLOCK_URL_VARIABLE, utc_now

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def post_advance(base_url: str, **delta: float) -> None:
    request = urllib.request.Request(
        base_url + "/_sandbox/advance", data=json.dumps(delta).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200


class SandboxClockWorld(World):
    """The test world, but the warehouse follows the sandbox's clock over HTTP, as `affwh run`
    and `affwh ui` set it up, instead of a frozen WAREHOUSE_NOW."""

    def env(self) -> dict[str, str]:
        env = super().env()
        del env["WAREHOUSE_NOW"]
        return {**env, CLOCK_URL_VARIABLE: self.sandbox.base_url + "/_sandbox/clock"}


@pytest.fixture
def clock_world(world, monkeypatch):
    monkeypatch.delenv("WAREHOUSE_NOW", raising=False)
    w = SandboxClockWorld(world.sandbox, world.warehouse_path, monkeypatch)
    w.apply_env()
    return w


def test_utc_now_follows_the_sandbox_clock(clock_world, monkeypatch):
    w = clock_world
    start = w.sandbox.world.now
    assert utc_now() == start  # the sandbox is anchored in January 2026, far from the wall clock
    post_advance(w.sandbox.base_url, days=1, hours=2)
    time.sleep(CLOCK_CACHE_SECONDS + 0.1)
    assert utc_now() == start + timedelta(days=1, hours=2) == w.sandbox.world.now

    monkeypatch.setenv("WAREHOUSE_NOW", "2030-05-01T00:00:00Z")  # an explicit freeze still wins
    assert utc_now().isoformat() == "2030-05-01T00:00:00+00:00"
    monkeypatch.delenv("WAREHOUSE_NOW")

    monkeypatch.setenv(CLOCK_URL_VARIABLE, "http://127.0.0.1:9/_sandbox/clock")  # nothing listens
    with pytest.raises(RuntimeError, match=CLOCK_URL_VARIABLE):
        utc_now()


def test_a_sandbox_day_is_a_warehouse_day(clock_world):
    """Sync, advance the sandbox a day over HTTP, sync: the warehouse's times are the sandbox's."""
    w = clock_world
    first = w.sandbox.world.now
    w.sync()
    assert w.scalar("SELECT as_of FROM v_warehouse_clock") == first
    post_advance(w.sandbox.base_url, days=1)
    time.sleep(CLOCK_CACHE_SECONDS + 0.1)
    w.sync()
    second = w.sandbox.world.now
    assert second == first + timedelta(days=1)
    assert w.scalar("SELECT as_of FROM v_warehouse_clock") == second
    assert w.scalar("SELECT max(last_synced_at) FROM sync_state") == second
    # intervals closed by the second sync lasted until the sandbox's second time, not seconds later
    closed = w.query("SELECT valid_to FROM status_history WHERE valid_to IS NOT NULL GROUP BY ALL")
    assert closed == [(second,)]
    assert w.scalar("SELECT max(duration) FROM v_status_durations WHERE left_at IS NOT NULL "
                    "AND entered_at >= ?", [first]) == timedelta(days=1)
    # the snapshot days are the sandbox's days
    days = [r[0] for r in w.query("SELECT DISTINCT day FROM order_daily_snapshots ORDER BY day")]
    assert days == [first.date(), second.date()]


def test_cli_sandbox_sets_the_clock_for_every_process(tmp_path):
    """`affwh run`/`affwh ui` start the sandbox and name its clock in the environment: a process
    started meanwhile (as Dagster's code server and run workers are under `affwh ui`) reads the
    sandbox's time, after an advance too; the variable is gone once the sandbox stops."""
    script = textwrap.dedent(
        """
        import json, os, subprocess, sys, time, urllib.request
        from pipelines.cli import sandbox_if_needed
        from pipelines.clock import CLOCK_URL_VARIABLE

        child = [sys.executable, "-c", "from pipelines.clock import utc_now; print(utc_now().isoformat())"]
        with sandbox_if_needed("tiny", force=True) as env:
            url = os.environ[CLOCK_URL_VARIABLE]
            assert url == env["SANDBOX_URL"] + "/_sandbox/clock", url
            before = subprocess.run(child, check=True, capture_output=True, text=True).stdout.strip()
            request = urllib.request.Request(env["SANDBOX_URL"] + "/_sandbox/advance",
                                             data=b'{"days": 1}', method="POST")
            urllib.request.urlopen(request, timeout=30).read()
            after = subprocess.run(child, check=True, capture_output=True, text=True).stdout.strip()
            clock = json.loads(urllib.request.urlopen(url, timeout=10).read())["now"]
        print(json.dumps({"before": before, "after": after, "clock": clock,
                          "left": os.environ.get(CLOCK_URL_VARIABLE)}))
        """
    )
    env = clean_env(WAREHOUSE_PATH=str(tmp_path / "warehouse.duckdb"), PYTHONPATH=str(PROJECT_ROOT))
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    before, after, clock = (datetime.fromisoformat(out[k]) for k in ("before", "after", "clock"))
    assert after == clock == before + timedelta(days=1)
    assert out["left"] is None


def readme_example_queries() -> list[str]:
    """The SQL of every `make query SQL="..."` line in README's "Example queries"."""
    text = (PROJECT_ROOT / "README.md").read_text()
    block = text.split("Example queries:", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    return re.findall(r'make query SQL="([^"]+)"', block)


def test_readme_examples_return_rows_after_a_fresh_run(tmp_path):
    """`make run` with no credentials on a fresh warehouse (the default small sandbox): every
    README example query returns rows, the one over closed status intervals included (a fresh
    warehouse on the sandbox syncs the simulated day before, then the current hour)."""
    queries = readme_example_queries()
    assert len(queries) >= 5, queries
    warehouse = tmp_path / "data" / "warehouse.duckdb"
    env = clean_env(
        WAREHOUSE_PATH=str(warehouse), DAGSTER_HOME=str(tmp_path / "dagster_home"), PYTHONPATH=str(PROJECT_ROOT)
    )
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "run"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "BUILT-IN SANDBOX" in done.stdout
    with duckdb.connect(str(warehouse), read_only=True) as con:
        for sql in queries:
            assert con.execute(sql).fetchall(), f"no rows: {sql}"
        # the demo's day: a day between the two syncs, on the sandbox's clock
        closed = "SELECT DISTINCT valid_to FROM status_history WHERE valid_to IS NOT NULL"
        times = [r[0] for r in con.execute(closed).fetchall()]
        as_of = con.execute("SELECT as_of FROM v_warehouse_clock").fetchone()[0]
        assert times == [as_of] and as_of.minute == 0 and as_of.second == 0
        assert con.execute("SELECT count(DISTINCT day) FROM order_daily_snapshots").fetchone()[0] == 2


def test_a_world_started_at_another_hour_is_the_same_world_moved_in_time():
    """`affwh run` starts the sandbox a day before the current hour and moves it to the hour: the
    day it simulates must not depend on which hour that is, or the demo (its alerts, its closed
    intervals) would differ from one run to the next (a CI run once found no alert at all)."""
    from pipelines.sandbox.server import Sandbox

    def evolved(anchor: datetime) -> dict[str, list[tuple]]:
        world = Sandbox(scale="tiny", anchor=anchor).world
        world.advance(timedelta(hours=24))
        out: dict[str, list[tuple]] = {}
        for name, data in world.datasets.items():
            if hasattr(data, "orders"):  # OnlyTraffic order books
                out[name] = [(o.order_id, o.created - anchor, o.status, round(o.delivered, 6))
                             for o in data.orders]
            elif hasattr(data, "leads"):  # cpa.moe
                out[name] = [(lead.lead_id, lead.created - anchor.timestamp(), lead.status, lead.reason)
                             for lead in data.leads]
            else:  # Metapic
                out[name] = [(o.id, o.created - anchor, p.n, p.signed_up and p.signed_up - anchor,
                              p.removed and p.removed - anchor) for o in data.offers for p in o.participants]
        return out

    first = datetime(2026, 3, 4, 2, tzinfo=UTC)
    same = evolved(first)
    assert same == evolved(first + timedelta(days=37, hours=13))
    assert any(status == "waiting" for _, _, status, _ in same["marketer_cpl"])
