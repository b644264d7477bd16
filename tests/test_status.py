"""``affwh status`` (README, "What the last syncs did"): per stream the last committed run, the last
failure, quarantine per reason and freshness, read from the warehouse the syncs wrote.

Everything through real processes: ``affwh run`` against the test's sandbox (one credential wrong,
one field of the wrong type in some CPC orders), then ``affwh status`` and ``--json``; a DuckDB
writer in another process holding the file while ``status`` waits or gives up.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from reliability_fixtures import Site

from pipelines.sandbox import onlytraffic_marketer as marketer_api

WRONG_KEY = "wrong-studio-key-77"


def status(site: Site, *args: str, name: str = "status", **env: str):
    return site.run_cli("status", *args, name=name, timeout=120, **env)


def status_json(site: Site, **env: str) -> dict:
    run = status(site, "--json", name="status-json", **env)
    assert run.returncode == 0, run.output
    return json.loads(run.stdout)


def drift_some_cpc_orders(site: Site) -> None:
    """Every 7th CPC order with a field of the wrong type: quarantined by the sync."""
    fields = marketer_api.DRIFT_FIELDS["/cpc/orders"]
    typed, wrong = fields["typed"]
    site.sandbox.set_drift(only=["/cpc/orders"], key=[fields["key"]], every=7, wrong_type={typed: wrong})


@pytest.mark.slow
def test_status_names_each_streams_last_run_its_failure_quarantine_and_freshness(site: Site):
    site.register_leads()
    site.api("metapic").rate_limit = 100_000
    drift_some_cpc_orders(site)

    failed = site.run_cli("run", name="wrong-key", ONLYTRAFFIC_STUDIO_API_KEY=WRONG_KEY)
    assert failed.returncode != 0

    body = status_json(site)
    streams = {s["stream"]: s for s in body["streams"]}
    # the committed runs, as sync_runs has them
    for stream, received, inserted, updated, unchanged, requests, retries, mode in site.query(
        "SELECT stream, records_received, inserted, updated, unchanged, requests, retries, mode FROM sync_runs"
    ):
        run = streams[stream]["last_run"]
        assert (run["received"], run["inserted"], run["updated"], run["unchanged"]) == (received, inserted, updated, unchanged)
        assert (run["requests"], run["retries"], run["mode"]) == (requests, retries, mode)
        assert run["seconds"] >= 0 and streams[stream]["freshness"] == "fresh"
    assert streams["cpc_orders"]["last_run"]["mode"] == "full" and streams["cpc_orders"]["last_run"]["requests"] > 0
    # the failed feed: no run, its failure in one line naming the variable, never the key itself
    swap = streams["swap_orders"]
    assert swap["last_run"] is None and swap["freshness"] == "never synced"
    reason = swap["last_failure"]["reason"]
    assert reason.startswith("AuthError: ") and "ONLYTRAFFIC_STUDIO_API_KEY" in reason and not swap["last_failure"]["resolved"]
    assert WRONG_KEY not in json.dumps(body) and WRONG_KEY not in str(site.query("SELECT * FROM sync_failures"))
    # quarantine per stream and reason, as the table has it
    expected = site.query("SELECT stream, reason, count(*) FROM quarantine GROUP BY ALL")
    assert expected and all(stream == "cpc_orders" for stream, _, _ in expected)
    assert sorted((q["stream"], q["reason"], q["rows"]) for q in body["quarantine"]) == sorted(expected)
    # daily partitions run by their own schedules: expected, never synced by `affwh run`
    assert streams["swap_orders_by_created_day"]["freshness"] == "never synced"
    assert streams["swap_orders_by_created_day"]["policy"]["fail"] == 50 * 3600

    text = status(site)
    assert text.returncode == 0 and text.stderr == "", text.output
    out = text.stdout
    assert "swap_orders: " in out and "(NOT synced since): AuthError: " in out and WRONG_KEY not in out
    cpc_line = next(line for line in out.splitlines() if line.strip().startswith("cpc_orders") and "full" in line)
    assert "fresh" in cpc_line
    quarantine_section = out.split("Rows in quarantine")[1]
    for stream, reason, rows in expected:
        assert any(line.split()[:2] == [stream, f"{rows:,}"] and line.rstrip().endswith(reason)
                   for line in quarantine_section.splitlines()), out
    assert "late after 60 min, stale after 3 h: " in out and "late after 26 h, stale after 50 h: " in out

    # the right key: swap_orders commits, its failure is history
    fixed = site.run_cli("run", name="right-key")
    assert fixed.returncode == 0, fixed.output[-3000:]
    streams = {s["stream"]: s for s in status_json(site)["streams"]}
    assert streams["swap_orders"]["last_run"]["mode"] == "full" and streams["swap_orders"]["last_failure"]["resolved"]
    assert streams["cpc_orders"]["last_run"]["mode"] == "incremental"
    assert "swap_orders: " in status(site, name="status-2").stdout.split("Last failure per stream:")[1]

    # a policy the streams are outside of: late, then stale
    late = {s["stream"]: s["freshness"] for s in status_json(site, FRESHNESS_WARN_MINUTES="0.0001", FRESHNESS_FAIL_MINUTES="600")["streams"]}
    assert late["cpc_orders"] == "warn"
    stale = status(site, name="status-stale", FRESHNESS_WARN_MINUTES="0.0001", FRESHNESS_FAIL_MINUTES="0.0002").stdout
    assert "STALE (fail)" in stale


def test_status_of_a_warehouse_not_synced_yet_says_how_to_create_it(site: Site):
    run = status(site)
    assert run.returncode == 0, run.output
    assert "no warehouse yet: `make run`" in run.stdout
    assert not site.warehouse_path.exists()  # read-only: nothing created
    body = status_json(site)
    assert body["exists"] is False and {s["freshness"] for s in body["streams"]} == {"never synced"}


HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE IF NOT EXISTS held (x INT)")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def test_status_waits_for_a_writer_holding_the_warehouse_or_says_so_on_stderr(site: Site, monkeypatch):
    site.register_leads()
    site.api("metapic").rate_limit = 100_000
    assert site.sync(monkeypatch, assets=["cpc_orders"]).success

    def hold(seconds: float) -> subprocess.Popen:
        writer = subprocess.Popen([sys.executable, "-c", HOLD, str(site.warehouse_path), str(seconds)],
                                  stdout=subprocess.PIPE, text=True)
        assert writer.stdout.readline().strip() == "holding"
        return writer

    writer = hold(60)
    try:
        refused = status(site, "--wait", "0", name="refused")
    finally:
        writer.kill()
        writer.wait()
    assert refused.returncode == 1 and refused.stdout == ""
    assert "held by another process" in refused.stderr and "--wait" in refused.stderr

    writer = hold(3)  # a commit's worth: status waits for it and reads
    started = time.monotonic()
    waited = status(site, "--wait", "60", name="waited")
    writer.wait()
    assert waited.returncode == 0, waited.output
    assert "cpc_orders" in waited.stdout and time.monotonic() - started < 60
