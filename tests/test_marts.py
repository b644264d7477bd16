"""The marts: every view's numbers on a small sandbox world, computed independently here from the
sandbox's truth (or, for the history views, from status_history in Python), never by re-running
the view's SQL."""

from __future__ import annotations

import csv
import shutil
from collections import defaultdict
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from conftest import ANCHOR, World, isolate_env
from models.status import STATUS_MAPPINGS
from pipelines.sandbox import Sandbox
from pipelines.sandbox.register import write_lead_register
from dagster_results import materializations

CENT = Decimal("0.01")


@pytest.fixture
def mart_world(world, tmp_path: Path, monkeypatch):
    """The tiny world with the cpa.moe register and a payouts file for all offers but one."""
    return _with_marts_inputs(world, tmp_path, monkeypatch)


def _with_marts_inputs(world, tmp_path: Path, monkeypatch):
    leads_dir = tmp_path / "leads"
    write_lead_register(world.sandbox, leads_dir)
    payouts = tmp_path / "payouts.csv"
    offers = sorted({lead.offer for lead in world.sandbox.dataset("cpamoe_leads").leads})
    unpaid = offers[0]
    with payouts.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["offer", "amount", "currency"])
        for offer in offers[1:]:
            w.writerow([offer, f"{10 + offer % 5}.50", "EUR" if offer % 2 else "USD"])
    monkeypatch.setenv("CPAMOE_LEADS_DIR", str(leads_dir))
    monkeypatch.setenv("CPAMOE_PAYOUTS_FILE", str(payouts))
    monkeypatch.setenv("METAPIC_PAGE_SIZE", "5")
    world.unpaid_offer = unpaid
    world.payouts = {o: (Decimal(f"{10 + o % 5}.50"), "EUR" if o % 2 else "USD") for o in offers[1:]}
    return world


# Hours advanced before each sync of the shared world: 12:00 and 18:00 of day 1 (a sync within
# the first day), 06:00 and 18:00 of day 2, 18:00 of day 3.
SHARED_STEPS = [0, 6, 12, 12, 24]


@pytest.fixture(scope="module")
def synced_days(tmp_path_factory):
    """One mart world synced over three simulated days, shared by the tests that only read it
    (each sync of the tiny world costs ~1.5 s; these tests used to sync a world each).

    Set up as conftest's ``world`` plus ``mart_world``, with one swap order none of whose sides is
    ours. Records the truth after each sync (``w.observed``: (now, {(source, order): (currency,
    earned)})) and the orders of the first sync (``w.first_keys``), then syncs once more at the
    same moment (``w.no_change``: its materialization and the snapshot tables before and after).
    The environment is restored before the tests run: they only query the warehouse (or a copy)
    and read the sandbox's truth, which no longer moves.
    """
    tmp_path = tmp_path_factory.mktemp("synced_days")
    monkeypatch = pytest.MonkeyPatch()
    sandbox = Sandbox(scale="tiny", seed=1, anchor=ANCHOR)
    try:
        isolate_env(  # as conftest's world
            monkeypatch, ONLYTRAFFIC_MARKETER_PAGE_SIZE="50", HTTP_BACKOFF_BASE_SECONDS="0.01", HTTP_TIMEOUT_SECONDS="30"
        )
        monkeypatch.chdir(tmp_path)  # no stray .env from the project root
        sandbox.start()
        w = _with_marts_inputs(World(sandbox, tmp_path / "warehouse.duckdb", monkeypatch), tmp_path, monkeypatch)
        for side in sandbox.dataset("studio_swap").orders[0].extra["sides"].values():
            side["mine"] = False  # an order with neither side ours: earned NULL
        w.observed = []
        for hours in SHARED_STEPS:
            if hours:
                w.advance(hours=hours)
            w.sync()
            w.observed.append((sandbox.world.now, _known_totals(w)))
            if not hours:
                w.first_keys = set(expected_earnings(w))
        tables = "SELECT * FROM order_daily_snapshots ORDER BY ALL", "SELECT * FROM order_baselines ORDER BY ALL"
        before = [w.query(t) for t in tables]
        (snap,) = materializations(w.sync(), "order_daily_snapshots")
        w.no_change = (snap, before, [w.query(t) for t in tables])
        monkeypatch.undo()
        yield w
    finally:
        monkeypatch.undo()
        sandbox.stop()


# -- the truth, computed from the sandbox ------------------------------------------------------


def canonical(source: str, raw: str) -> str:
    return STATUS_MAPPINGS[source][raw].value


def expected_fill(w) -> dict[tuple, tuple]:
    """(source, order_id, side) -> (status, ordered, delivered)."""
    out = {}
    for r in w.sandbox.dataset("marketer_cpc").truth():
        out[("cpc", r["order_id"], None)] = (canonical("cpc", r["status"]), r["clicks"]["ordered"], r["clicks"]["delivered"])
    for r in w.sandbox.dataset("marketer_cpl").truth():
        out[("cpl", r["order_id"], None)] = (canonical("cpl", r["status"]), r["quantity_ordered"], r["quantity_delivered"])
    swap = w.sandbox.dataset("studio_swap")
    for r in swap.truth():
        status = canonical("swap", swap.status_of(r["order_id"]))
        for side in ("offer", "order"):
            fans = r[f"{side}_side"]["stats"]["fans_subscribed"]["total"]
            out[("swap", r["order_id"], side)] = (status, r["quantity"], fans)
    return out


def metapic_key(p: dict) -> str | None:
    import hashlib

    def email(v: str) -> str:
        return "email:" + hashlib.sha256(v.strip().lower().encode()).hexdigest()

    if p.get("id") is not None:
        return f"id:{p['id']}"
    if p.get("user_id") is not None:
        return f"user:{p['user_id']}"
    for field in ("pre_registered_identifier", "pre_registered_email", "display_name"):
        if p.get(field):
            return email(p[field]) if "@" in p[field] else f"pre:{p[field]}"
    return None


def offer_cpc(offer: dict) -> Decimal:
    costs = offer["traffic_sources_costs"]
    general = next((c for c in costs if c["source"] == 0), costs[0])
    if "cpc_v2" in general:
        return Decimal(general["cpc_v2"]["amount"])
    return Decimal(general["cpc"]) / 100


def expected_earnings(w) -> dict[tuple, tuple]:
    """(source, order_id) -> (currency, earned or None, status)."""
    out = {}
    for r in w.sandbox.dataset("marketer_cpc").truth():
        out[("cpc", r["order_id"])] = ("USD", Decimal(str(r["total_earned"])), canonical("cpc", r["status"]))
    for r in w.sandbox.dataset("marketer_cpl").truth():
        out[("cpl", r["order_id"])] = ("USD", Decimal(str(r["total_earned"])), canonical("cpl", r["status"]))
    swap = w.sandbox.dataset("studio_swap")
    for r in swap.truth():
        mine = [Decimal(str(r[f"{s}_side"]["stats"]["transactions_sum"]["total"]))
                for s in ("offer", "order") if r[f"{s}_side"]["is_mine"]]
        out[("swap", r["order_id"])] = ("USD", sum(mine) if mine else None,
                                        canonical("swap", swap.status_of(r["order_id"])))
    book = w.sandbox.dataset("cpamoe_leads")
    for lead in book.leads:
        record = book.render(lead)
        payout = w.payouts.get(lead.offer)
        if payout is None:
            earned, currency = None, None
        elif record["stage"] == "approve" and record["status"] not in (11, 12):
            earned, currency = payout
        else:
            earned, currency = Decimal(0), payout[1]
        out[("cpamoe", lead.lead_id)] = (currency, earned, canonical("cpamoe", record["stage"]))
    campaigns = w.sandbox.dataset("metapic")
    clicks: dict[int, int] = defaultdict(int)
    payments: dict[int, Decimal] = defaultdict(Decimal)
    for p in campaigns.participants_truth():
        if metapic_key(p) is None:
            continue  # quarantined: not in the warehouse
        clicks[p["offer_id"]] += p["clicks"] or 0
        payments[p["offer_id"]] += Decimal(str(p["payment_amount"] or 0))
    for o in campaigns.truth():
        earned = clicks[o["id"]] * offer_cpc(o) + payments[o["id"]]
        out[("metapic_offer", str(o["id"]))] = (o["currency"], earned, canonical("metapic_offer", o["status"]))
    return out


def close(a: Decimal | None, b: Decimal | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(Decimal(a) - Decimal(b)) < CENT


def _known_totals(w) -> dict[tuple, tuple]:
    """(source, order_id) -> (currency, earned) for every order whose earnings are known."""
    return {k: (c, e) for k, (c, e, _s) in expected_earnings(w).items() if e is not None}


# -- tests -----------------------------------------------------------------------------------


def test_fill_rate_matches_the_truth(synced_days):
    w = synced_days
    expected = expected_fill(w)
    rows = w.query(
        "SELECT source, order_id, side, CAST(status AS VARCHAR), units_ordered, units_delivered, fill_rate "
        "FROM v_fill_rate"
    )
    got = {(r[0], r[1], r[2]): r[3:] for r in rows}
    assert set(got) == set(expected)
    for key, (status, ordered, delivered) in expected.items():
        g = got[key]
        assert (g[0], g[1], g[2]) == (status, ordered, delivered), key
        assert g[3] == (pytest.approx(delivered / ordered) if ordered else None), key
    assert any(g[3] is not None and g[3] > 1 for g in got.values()), "over-delivery is not capped"


def test_earnings_match_the_truth(synced_days):
    w = synced_days  # swap order 0 has neither side ours: earned NULL
    expected = expected_earnings(w)
    rows = w.query("SELECT source, order_id, currency, earned, CAST(status AS VARCHAR) FROM v_earnings")
    got = {(r[0], r[1]): r[2:] for r in rows}
    assert set(got) == set(expected)
    for key, (currency, earned, status) in expected.items():
        g = got[key]
        assert g[0] == currency and g[2] == status, key
        assert close(g[1], earned), (key, g[1], earned)
    # every branch of the cpa.moe rule is exercised by this world
    cpamoe = [v for k, v in expected.items() if k[0] == "cpamoe"]
    assert any(e is None for _, e, _ in cpamoe) and any(e == 0 for _, e, _ in cpamoe)
    assert any(e and e > 0 for _, e, _ in cpamoe)
    assert any(v[1] is None for k, v in expected.items() if k[0] == "swap"), "a swap with no side of mine"


def test_summary_counts_and_sums(synced_days):
    w = synced_days
    earnings = expected_earnings(w)
    fill = expected_fill(w)
    want: dict[tuple, list] = defaultdict(lambda: [0, 0, 0, Decimal(0), False])
    for (source, order_id), (currency, earned, status) in earnings.items():
        row = want[(source, status, currency)]
        row[0] += 1
        if earned is not None:
            row[3] += earned
            row[4] = True
        for (s, o, _side), (_st, ordered, delivered) in fill.items():
            if s == source and o == order_id:
                row[1] += ordered or 0
                row[2] += delivered or 0
    rows = w.query("SELECT source, status, currency, orders, units_ordered, units_delivered, earned FROM v_summary")
    got = {(r[0], r[1], r[2]): r[3:] for r in rows}
    assert set(got) == set(want)
    for key, (orders, ordered, delivered, earned, has_earned) in want.items():
        g = got[key]
        assert g[0] == orders, key
        if key[0] in ("cpc", "cpl", "swap"):
            assert (g[1], g[2]) == (ordered, delivered), key
        assert close(g[3], earned if has_earned else None), key


def test_earnings_daily_counts_from_the_first_sync(synced_days):
    """What an order had at its source's first sync is its baseline (no day); every later change
    goes to the UTC day of the sync that saw it, the first day included; an order first seen by a
    later sync counts from zero. So per source and currency the days add up to current earnings
    minus baselines."""
    w = synced_days
    (first_now, baseline), *_ = w.observed
    final = w.observed[-1][1]

    # the baselines: every order present at the first sync, with what it had then
    rows = w.query("SELECT source, order_id, currency, earned FROM order_baselines")
    stored = {(r[0], r[1]): (r[2], r[3]) for r in rows}
    assert len(stored) == len(rows)  # one row per order (the table has no key constraint)
    assert set(stored) == w.first_keys  # earnings known or not
    for key, (currency, earned) in baseline.items():
        assert stored[key][0] == currency and close(stored[key][1], earned), (key, stored[key], earned)
    assert set(final) - set(baseline), "orders created after the first sync (counted from zero)"

    # the equality, per source and currency
    want: dict[tuple, Decimal] = defaultdict(Decimal)
    for (source, _order), (currency, earned) in final.items():
        want[(source, currency)] += earned
    for (source, _order), (currency, earned) in baseline.items():
        want[(source, currency)] -= earned
    got: dict[tuple, Decimal] = defaultdict(Decimal)
    for source, currency, _day, earned in w.query("SELECT source, currency, day, earned FROM v_earnings_daily"):
        got[(source, currency)] += earned
    assert set(got) == set(want)
    for key, value in want.items():
        assert close(got[key], value), (key, got[key], value)

    # day by day: the last value seen each day minus the one before (the baseline, or zero)
    last_of_day = {now.date(): totals for now, totals in w.observed}
    days = sorted(last_of_day)
    assert len(days) == 3 and days[0] == first_now.date()
    expected: dict[tuple, Decimal] = defaultdict(Decimal)
    seen = dict(baseline)
    for day in days:
        for key, (currency, earned) in last_of_day[day].items():
            before = seen.get(key)
            expected[(key[0], currency, day)] += earned - (before[1] if before else 0)
        seen.update(last_of_day[day])
    rows = w.query("SELECT source, currency, day, earned FROM v_earnings_daily")
    by_day = {(r[0], r[1], r[2]): r[3] for r in rows}
    assert set(by_day) <= set(expected), set(by_day) - set(expected)
    for key, value in expected.items():
        assert close(by_day.get(key, Decimal(0)), value), (key, by_day.get(key), value)
    # money earned during the first day, after the first sync, is counted on that day
    assert any(v > 0 for (s, c, d), v in by_day.items() if d == days[0] and s == "cpc"), "cpc earned on day 1"
    assert any(v > 0 for (s, c, d), v in by_day.items() if d == days[-1]), "money was earned on the last day"


def test_a_warehouse_from_before_baselines_keeps_its_past_days(synced_days, tmp_path, monkeypatch):
    """A warehouse whose snapshots were written before order_baselines existed (the table added
    empty): its baselines become its first day's rows, the values that day was measured from
    until now, so its first day stays 0 and the later days keep their day-over-day numbers."""
    w = synced_days
    older = World(w.sandbox, tmp_path / "older.duckdb", monkeypatch)  # a copy: the shared world stays as it is
    for suffix in ("", ".wal"):
        if Path(str(w.warehouse_path) + suffix).exists():
            shutil.copyfile(str(w.warehouse_path) + suffix, str(older.warehouse_path) + suffix)
    with duckdb.connect(str(older.warehouse_path)) as con:
        con.execute("DELETE FROM order_baselines")  # as the migration leaves an older warehouse
    (snap,) = materializations(older.sync(assets=["order_daily_snapshots"]), "order_daily_snapshots")

    last_of_day = {now.date(): totals for now, totals in w.observed}
    first, *later = sorted(last_of_day)
    assert snap.metadata["rows_written"].value == 0
    assert snap.metadata["baselines_written"].value == older.scalar("SELECT count(*) FROM order_baselines") > 0
    assert older.query("SELECT source, order_id, earned FROM order_baselines ORDER BY ALL") == older.query(
        "SELECT source, order_id, earned FROM order_daily_snapshots WHERE day = ? ORDER BY ALL", [first]
    )
    expected: dict[tuple, Decimal] = defaultdict(Decimal)
    seen = dict(last_of_day[first])
    for day in later:
        for key, (currency, earned) in last_of_day[day].items():
            before = seen.get(key)
            expected[(key[0], currency, day)] += earned - (before[1] if before else 0)
        seen.update(last_of_day[day])
    rows = older.query("SELECT source, currency, day, earned FROM v_earnings_daily")
    assert all(close(r[3], Decimal(0)) for r in rows if r[2] == first)
    got = {(r[0], r[1], r[2]): r[3] for r in rows if r[2] != first}
    assert set(got) <= set(expected)
    for key, value in expected.items():
        assert close(got.get(key, Decimal(0)), value), (key, got.get(key), value)


def test_a_sync_that_changes_nothing_writes_no_row(synced_days):
    snap, before, after = synced_days.no_change
    assert snap.metadata["rows_written"].value == 0
    assert snap.metadata["baselines_written"].value == 0
    assert after == before


def test_status_durations_follow_status_history(synced_days):
    w = synced_days  # 54 h between its first and last syncs
    as_of = w.scalar("SELECT max(last_synced_at) FROM sync_state")
    history = w.query("SELECT source, entity_id, source_status, valid_from, valid_to FROM status_history")
    rows = w.query(
        "SELECT source, entity_id, source_status, entered_at, left_at, duration, time_in_status, is_current "
        "FROM v_status_durations"
    )
    got = {(r[0], r[1], r[3]): r for r in rows}
    assert len(got) == len(history)
    closed = 0
    for source, entity, status, start, end in history:
        r = got[(source, entity, start)]
        assert r[2] == status and r[4] == end
        if end is None:
            assert r[5] is None and r[6] == as_of - start and r[7]
        else:
            closed += 1
            assert r[5] == end - start == r[6] and not r[7]
    assert closed > 0, "two days should have closed some intervals"
    assert as_of == w.observed[-1][0]


def _waiting_order(w, dataset: str, hours_ago: float):
    """An order of ``dataset`` waiting since ``hours_ago`` that nothing but the clock moves: no
    acceptance, rejection or cancellation (the CPL book's 3-day auto-reject still applies; the swap
    book has none, so it stays waiting, as an API that is late to reject would)."""
    book = w.sandbox.dataset(dataset)
    order = next(o for o in book.orders if o.status == book.completed)
    order.status = book.waiting
    order.created = w.sandbox.world.now - timedelta(hours=hours_ago)
    order.accepted = order.finished = None
    order.delivered = 0.0
    book.open.add(order.n)
    book.accept_per_hour = book.reject_per_hour = book.cancel_per_hour = 0.0
    book._touch()
    return order


def alerts(w) -> dict[tuple, tuple]:
    return {(r[0], r[1], r[2]): r[3:] for r in w.query("SELECT source, order_id, alert, detail, due_at FROM v_order_alerts")}


def test_auto_reject_soon_then_overdue_fires_and_clears(mart_world):
    w = mart_world
    order = _waiting_order(w, "marketer_cpl", hours_ago=30)
    late = _waiting_order(w, "studio_swap", hours_ago=60)
    w.sync()
    assert ("cpl", order.order_id, "auto_reject_soon") not in alerts(w)  # 30 h: not yet
    assert alerts(w)[("swap", late.order_id, "auto_reject_soon")][1] == late.created + timedelta(days=3)

    w.advance(hours=20)  # 50 h waiting; the swap order 80 h, past its auto-reject time
    w.sync()
    now = alerts(w)
    fired = now[("cpl", order.order_id, "auto_reject_soon")]
    assert fired[1] == order.created + timedelta(days=3)
    overdue = now[("swap", late.order_id, "auto_reject_overdue")]
    assert overdue[1] == late.created + timedelta(days=3) < w.scalar("SELECT as_of FROM v_warehouse_clock")
    assert overdue[0] == "waiting for 80 h; auto-rejected after 72 h"
    assert ("swap", late.order_id, "auto_reject_soon") not in now  # not "soon": it is past due
    assert not any(a == "auto_reject_soon" and due < w.sandbox.world.now for (_s, _o, a), (_d, due) in now.items())

    w.advance(hours=24)  # 74 h: OnlyTraffic auto-rejected it
    w.sync()
    assert w.scalar("SELECT source_status FROM cpl_orders WHERE order_id = ?", [order.order_id]) == "rejected"
    assert ("cpl", order.order_id, "auto_reject_soon") not in alerts(w)


def test_behind_pace_fires_and_clears(mart_world):
    w = mart_world
    book = w.sandbox.dataset("studio_swap")
    order = next(o for o in book.orders if o.status == book.completed)
    now = w.sandbox.world.now
    order.status, order.finished = book.active, None
    order.extra["max_days"] = 20
    order.accepted = now - timedelta(days=12)  # 60 % of the time elapsed
    order.delivered = order.ordered * 0.1  # ~10 % delivered
    book._touch()
    w.sync()
    fired = alerts(w)[("swap", order.order_id, "behind_pace")]
    assert fired[1] == order.accepted.replace(microsecond=0) + timedelta(days=20)
    assert "60% of the time elapsed" in fired[0]

    order.delivered = order.ordered * 0.9  # caught up
    book._touch()
    w.sync()
    assert ("swap", order.order_id, "behind_pace") not in alerts(w)


def test_lead_stuck_on_hold_fires_and_clears(mart_world):
    w = mart_world
    book = w.sandbox.dataset("cpamoe_leads")
    lead = next(lead for lead in book.leads if not book.is_final(lead.lead_id))
    lead.status, lead.reason, lead.next_at = 4, None, None  # on hold, and frozen there
    w.sync()
    assert ("cpamoe", lead.lead_id, "lead_stuck_on_hold") not in alerts(w)

    w.advance(days=15)
    w.sync()
    fired = alerts(w)[("cpamoe", lead.lead_id, "lead_stuck_on_hold")]
    entered = w.scalar(
        "SELECT valid_from FROM status_history WHERE source = 'cpamoe' AND entity_id = ? AND valid_to IS NULL",
        [lead.lead_id],
    )
    assert fired[1] == entered + timedelta(days=14)

    lead.status = 6  # approved: packing
    w.advance(hours=1)
    w.sync()
    assert ("cpamoe", lead.lead_id, "lead_stuck_on_hold") not in alerts(w)


def test_payouts_file_problems_are_reported_clearly(mart_world, tmp_path, monkeypatch):
    w = mart_world
    bad = tmp_path / "bad_payouts.csv"
    bad.write_text("offer,amount,currency\n201,12.5,EUR\nabc,1,USD\n202,-3,USD\n203,4,EURO\n")
    monkeypatch.setenv("CPAMOE_PAYOUTS_FILE", str(bad))
    result = w.sync(assets=["cpamoe_payouts"])
    meta = result.asset_materializations_for_node("cpamoe_payouts")[0].metadata
    assert meta["payouts_loaded"].value == 1 and meta["lines_rejected"].value == 3
    assert meta["rejected_lines"].value == {
        "3": "offer is not an integer", "4": "amount is negative", "5": "currency is not a 3-letter code"
    }
    assert w.query("SELECT offer_id, amount, currency FROM cpamoe_payouts") == [(201, Decimal("12.5"), "EUR")]

    monkeypatch.setenv("CPAMOE_PAYOUTS_FILE", str(tmp_path / "missing.csv"))
    result = w.sync(assets=["cpamoe_payouts"])
    message = result.asset_materializations_for_node("cpamoe_payouts")[0].metadata["error"].value
    assert "missing.csv: no such file" in message and "CPAMOE_PAYOUTS_FILE" in message
    assert w.scalar("SELECT count(*) FROM cpamoe_payouts") == 1  # kept
