"""Load: a medium world (tens of thousands of records per feed) synced correctly with faults on.

One full sync and one incremental sync a simulated day later, each as ``make run`` does it (the
CLI, a process of its own), with 5 % of requests failing in every way. After each, the warehouse
equals the sandbox's truth (every order, lead and campaign, in its current status), history and
cursors are consistent, and every injected fault was retried. The figures (time, requests,
faults, retries, rows) are printed for the closing note; nothing here asserts on time.
"""

from __future__ import annotations

import time

import pytest
from reliability_fixtures import REALISTIC_ENV, REALISTIC_FAULTS, Site
from warehouse_compare import integrity_problems

LOAD_FAULTS = {**REALISTIC_FAULTS, "rate": 0.05}


@pytest.fixture
def medium(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = Site.start(tmp_path / "site", scale="medium")
    s.api("metapic").rate_limit = 100_000  # two syncs in a minute: rate limits are tested elsewhere
    try:
        yield s
    finally:
        s.stop()


def truth(site: Site) -> dict[str, dict[str, str]]:
    """Table -> key -> the raw status the warehouse must hold now."""
    swap = site.sandbox.dataset("studio_swap")
    metapic = site.sandbox.dataset("metapic")
    return {
        "cpc_orders": {r["order_id"]: r["status"] for r in site.sandbox.dataset("marketer_cpc").truth()},
        "cpl_orders": {r["order_id"]: r["status"] for r in site.sandbox.dataset("marketer_cpl").truth()},
        "swap_orders": {o.order_id: swap.status_of(o.order_id) for o in swap.orders},
        "cpamoe_leads": {k: r["stage"] for k, r in site.sandbox.dataset("cpamoe_leads").truth().items()},
        "metapic_offers": {str(r["id"]): r["status"] for r in metapic.truth()},
    }


KEYS = {"cpc_orders": "order_id", "cpl_orders": "order_id", "swap_orders": "order_id",
        "cpamoe_leads": "lead_id", "metapic_offers": "offer_id"}


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_medium_world_syncs_correctly_with_faults_on(medium):
    site = medium
    site.register_leads()
    figures = []
    for step in ("full", "incremental"):
        if step == "incremental":
            site.advance(days=1)
        site.sandbox.set_faults(**LOAD_FAULTS, seed=23)
        arrivals = len(site.sandbox.stats.arrivals)
        runs_before = {r[0] for r in site.query("SELECT run_id FROM sync_runs")} if step == "incremental" else set()
        started = time.monotonic()

        run = site.run_cli("run", name=step, timeout=600, **REALISTIC_ENV)

        seconds = time.monotonic() - started
        assert run.returncode == 0, run.output[-3000:]
        for table, expected in truth(site).items():
            got = dict(site.query(f"SELECT CAST({KEYS[table]} AS VARCHAR), source_status FROM {table}"))
            assert got == expected, f"{table}: {len(got)} rows vs {len(expected)} in the sandbox"
        keyed = [p for p in site.sandbox.dataset("metapic").participants_truth()
                 if any(p.get(k) for k in ("id", "user_id", "pre_registered_identifier", "pre_registered_email"))]
        assert site.scalar("SELECT count(*) FROM metapic_participants") == len(keyed)  # the keyless: quarantined
        assert not integrity_problems(site.warehouse_path)
        injected = sum(site.sandbox.faults.injected.values())
        retries = sum(r for run_id, r in site.query("SELECT run_id, retries FROM sync_runs") if run_id not in runs_before)
        assert retries == injected > 0  # every fault noticed and retried, none taken for data
        rows = site.query(
            "SELECT sum(inserted + updated) FROM sync_runs" + (
                f" WHERE run_id NOT IN ({', '.join(repr(r) for r in runs_before)})" if runs_before else "")
        )[0][0]
        figures.append(
            f"{step}: {seconds:.0f} s wall (process start included), "
            f"{len(site.sandbox.stats.arrivals) - arrivals} requests, {injected} faults injected and retried, "
            f"{rows} rows written"
        )
    counts = {t: site.scalar(f"SELECT count(*) FROM {t}") for t in (*KEYS, "metapic_participants", "status_history")}
    print("\nmedium world with 5 % faults:\n  " + "\n  ".join(figures) + f"\n  rows: {counts}")
