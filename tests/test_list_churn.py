"""Order lists that move while they are read lose nothing (CPC, CPL, swap; issue 16).

The sandbox's churn switch (pipelines/sandbox/churn.py) moves one open order one status on before
answering a chosen share of list requests, so offset (Marketer) and page-number (Studio) lists shift
under the sync. The guarantee: an order that changes status while its lists are read is in the
warehouse, with its latest status, no later than the end of the next incremental sync; a sync that
can tell it may have missed something says so in ``sync_runs.warnings`` and its run metadata.

Also the incremental safety nets: terminal lists served oldest-first or shuffled (the "not sorted
newest-first, re-read in full" path) and an order no status list returns any more (kept as last
seen, with a warning).

Everything runs over HTTP against the sandbox, in a world where every list spans several pages.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from conftest import ANCHOR, World
from dagster_results import materializations
from warehouse_compare import integrity_problems

from models.status import STATUS_MAPPINGS
from pipelines.sandbox import Sandbox
from pipelines.sandbox.world import Scale

# Big enough that every open list spans several pages (Marketer limit 25, Studio page size 20).
SCALE = Scale(
    cpc_orders=1_200, cpl_orders=900, swap_orders=900, leads=10, offers=2, participants_per_offer=2, history_days=60
)
SHARE = 0.5  # of list requests that move one open order first
MOVED_WARNING = "moved while they were read"


@dataclass(frozen=True)
class FeedCase:
    feed: str  # the churn plan's feed name
    asset: str  # the warehouse table and Dagster asset
    dataset: str
    columns: str  # warehouse columns compared with the truth, in the order ``expected`` builds

    def truth(self, world: World) -> dict[str, tuple]:
        book = world.sandbox.dataset(self.dataset)
        rows = {}
        for record in book.truth():
            status = record.get("status") or book.status_of(record["order_id"])
            rows[record["order_id"]] = expected(self.feed, record, status)
        return rows

    def rows(self, world: World) -> dict[str, tuple]:
        return {r[0]: r for r in world.query(f"SELECT {self.columns} FROM {self.asset}")}


def _ts(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _num(value) -> Decimal | None:
    return Decimal(str(value)) if value is not None else None


def expected(feed: str, t: dict, status: str) -> tuple:
    mapped = STATUS_MAPPINGS[feed][status].value
    if feed == "cpc":
        return (
            t["order_id"], status, mapped, t["clicks"]["ordered"], t["clicks"]["delivered"],
            _num(t["total_earned"]), _ts(t["created_at_ts"]), _ts(t["date_start"]), _ts(t["date_finish"]),
        )
    if feed == "cpl":
        return (
            t["order_id"], status, mapped, t["quantity_ordered"], t["quantity_delivered"],
            _num(t["total_earned"]), _ts(t["created_at_ts"]), _ts(t["completed_at_ts"]),
        )
    return (
        t["order_id"], status, mapped, t["quantity"], _ts(t["created_at_ts"]), _ts(t["started_at_ts"]),
        _ts(t["completed_at_ts"]),
    )


FEEDS = {
    "cpc": FeedCase(
        "cpc", "cpc_orders", "marketer_cpc",
        "order_id, source_status, CAST(status AS VARCHAR), clicks_ordered, clicks_delivered, total_earned, "
        "created_at, date_start, date_finish",
    ),
    "cpl": FeedCase(
        "cpl", "cpl_orders", "marketer_cpl",
        "order_id, source_status, CAST(status AS VARCHAR), quantity_ordered, quantity_delivered, total_earned, "
        "created_at, completed_at",
    ),
    "swap": FeedCase(
        "swap", "swap_orders", "studio_swap",
        "order_id, source_status, CAST(status AS VARCHAR), quantity, created_at, started_at, completed_at",
    ),
}


@pytest.fixture
def churn_world(tmp_path, monkeypatch):
    """Like conftest's ``world``, with more orders: every open list spans several pages."""
    for var in [v for v in os.environ if v.startswith(("ONLYTRAFFIC_", "CPAMOE_", "METAPIC_"))]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("ONLYTRAFFIC_MARKETER_PAGE_SIZE", "25")
    monkeypatch.setenv("ONLYTRAFFIC_STUDIO_PAGE_SIZE", "20")
    monkeypatch.setenv("HTTP_BACKOFF_BASE_SECONDS", "0.01")
    monkeypatch.setenv("HTTP_TIMEOUT_SECONDS", "30")  # no timeouts injected here: a loaded machine is no fault
    monkeypatch.chdir(tmp_path)
    sandbox = Sandbox(scale=SCALE, seed=7, anchor=ANCHOR)
    sandbox.start()
    w = World(sandbox, tmp_path / "warehouse.duckdb", monkeypatch)
    w.apply_env()
    try:
        yield w
    finally:
        sandbox.stop()


def differences(case: FeedCase, world: World) -> list[str]:
    """How the warehouse differs from the sandbox's truth: rows, and each order's history."""
    truth, rows = case.truth(world), case.rows(world)
    problems = [f"missing {k}" for k in sorted(set(truth) - set(rows))]
    problems += [f"extra {k}" for k in sorted(set(rows) - set(truth))]
    problems += [f"{k}: {rows[k]} != {truth[k]}" for k in sorted(set(truth) & set(rows)) if rows[k] != truth[k]]
    if case.feed == "swap":  # both sides of every order, with the order's status
        sides = world.query("SELECT order_id, side, source_status FROM swap_order_sides")
        want = {(k, side, t[1]) for k, t in truth.items() for side in ("offer", "order")}
        problems += [f"side {s}" for s in sorted(want ^ set(sides))][:10]
    # status_history: one current interval per order, with its current status, and no status
    # repeated back to back (a move seen twice is one change)
    current = dict(
        world.query(
            "SELECT entity_id, source_status FROM status_history WHERE source = ? AND valid_to IS NULL",
            [case.feed],
        )
    )
    problems += [f"history {k}: {current.get(k)} != {t[1]}" for k, t in sorted(truth.items()) if current.get(k) != t[1]]
    repeated = world.scalar(
        "SELECT count(*) FROM (SELECT source_status, lag(source_status) OVER "
        "(PARTITION BY entity_id ORDER BY valid_from) AS before FROM status_history WHERE source = ?) "
        "WHERE source_status = before",
        [case.feed],
    )
    if repeated:
        problems.append(f"history: {repeated} status(es) repeated back to back")
    problems += integrity_problems(world.warehouse_path)
    return problems


def run_warnings(world: World, stream: str) -> list[list[str]]:
    """``sync_runs.warnings`` of every run of ``stream``, oldest first."""
    return [
        json.loads(w) if isinstance(w, str) else (w or [])
        for (w,) in world.query("SELECT warnings FROM sync_runs WHERE stream = ? ORDER BY started_at", [stream])
    ]


def cursor(world: World, stream: str) -> dict:
    value = world.scalar("SELECT cursor FROM sync_state WHERE stream = ?", [stream])
    return json.loads(value) if isinstance(value, str) else dict(value)


@pytest.mark.parametrize("feed", sorted(FEEDS))
def test_churn_during_full_and_incremental_syncs_then_one_quiet_sync_matches_the_truth(churn_world, feed):
    world, case = churn_world, FEEDS[feed]
    world.sandbox.set_churn(share=SHARE, seed=5, only=[feed])
    existed = [set(case.truth(world))]  # the orders that existed when each sync began
    world.sync(assets=[case.asset])
    for hours in (0, 1):
        world.advance(hours=hours)
        existed.append(set(case.truth(world)))
        world.sync(assets=[case.asset])
        # whatever existed when the previous sync began is in by the end of this one
        assert existed[-2] - set(case.rows(world)) == set()
    assert len(world.sandbox.churn.moves) >= 10, "the lists hardly moved: the test proves nothing"

    world.sandbox.set_churn()  # quiet
    world.sync(assets=[case.asset])

    assert differences(case, world) == []
    warned = [w for run in run_warnings(world, case.asset) for w in run if MOVED_WARNING in w]
    assert warned, "no sync said its lists moved while it read them"


@pytest.mark.parametrize("feed", sorted(FEEDS))
def test_orders_moving_during_a_full_sync_are_all_in_after_the_next_incremental(churn_world, feed):
    world, case = churn_world, FEEDS[feed]
    world.sandbox.set_churn(share=SHARE, seed=5, only=[feed])
    result = world.sync(assets=[case.asset])
    moves = list(world.sandbox.churn.moves)
    assert len(moves) >= 5, "the lists hardly moved: the test proves nothing"

    # the full sync said it may have missed something, in sync_runs and in its run metadata
    (full_warnings,) = run_warnings(world, case.asset)
    assert any(MOVED_WARNING in w for w in full_warnings), full_warnings
    (materialization,) = materializations(result, case.asset)
    assert MOVED_WARNING in str(materialization.metadata["warning_messages"].value)
    assert "recheck_from" in cursor(world, case.asset)

    world.sandbox.set_churn()  # quiet; no time passes
    world.sync(assets=[case.asset])

    assert differences(case, world) == []
    assert "recheck_from" not in cursor(world, case.asset)  # an undisturbed sync drops it


@pytest.mark.parametrize("feed", sorted(FEEDS))
def test_the_no_change_incremental_after_a_quiet_full_sync_reads_no_terminal_list_in_full(churn_world, feed):
    """The safety nets cost nothing when nothing moved: no second read of the open lists, no
    ``recheck_from``, terminal lists only probed."""
    world, case = churn_world, FEEDS[feed]
    world.sync(assets=[case.asset])
    world.sandbox.stats.reset()
    world.sync(assets=[case.asset])

    assert differences(case, world) == []
    assert "recheck_from" not in cursor(world, case.asset)
    assert run_warnings(world, case.asset)[-1] == []
    book = world.sandbox.dataset(case.dataset)
    served = world.sandbox.stats.snapshot()["records"]
    for status in book.terminal_statuses:
        listed = len(book.listed(status))
        got = sum(v for k, v in served.items() if k.endswith(f"|{status}"))
        assert got < listed or listed <= 100, (status, got, listed)
    for status in (book.waiting, book.active):  # each open list read once
        got = sum(v for k, v in served.items() if k.endswith(f"|{status}"))
        assert got == served_in_one_read(case, len(book.listed(status))), (status, got)


def served_in_one_read(case, orders: int) -> int:
    """Records the API serves for one full read of a list of ``orders``. Marketer pages after the
    first are read ahead from the previous page's last order (pipelines/sources/read_ahead.py):
    each such page that is not empty serves that order once more."""
    limit = 25  # ONLYTRAFFIC_MARKETER_PAGE_SIZE of the churn world
    if case.asset not in ("cpc_orders", "cpl_orders") or orders < limit:
        return orders
    return orders + -(-(orders - (limit - 1)) // (limit - 1))


@pytest.mark.parametrize("order", ["oldest_first", "shuffled"])
@pytest.mark.parametrize("feed", sorted(FEEDS))
def test_terminal_lists_out_of_order_are_recovered_by_the_incremental(churn_world, feed, order):
    world, case = churn_world, FEEDS[feed]
    world.sync(assets=[case.asset])
    world.advance(days=1)
    world.sandbox.set_churn(terminal_order=order, only=[feed])
    world.sync(assets=[case.asset])

    assert differences(case, world) == []
    warnings = run_warnings(world, case.asset)[-1]
    if feed != "swap":
        # the Marketer docs promise no order: the check catches it and reads those lists in full
        assert any("not sorted newest-first; re-read in full" in w for w in warnings), warnings
    # (the Studio API filters by created date server-side: the order of its pages does not matter)


@pytest.mark.parametrize("feed", sorted(FEEDS))
def test_an_order_no_list_returns_is_kept_as_last_seen_with_a_warning(churn_world, feed):
    world, case = churn_world, FEEDS[feed]
    world.sync(assets=[case.asset])
    book = world.sandbox.dataset(case.dataset)
    gone = sorted(o.order_id for o in book.orders if o.status == book.active)[0]
    before = case.rows(world)[gone]
    world.sandbox.set_churn(hide=[gone])
    world.sync(assets=[case.asset])

    warnings = run_warnings(world, case.asset)[-1]
    assert any("not returned by any status list" in w and gone in w for w in warnings), warnings
    assert case.rows(world)[gone] == before  # kept as last seen
    truth = case.truth(world)
    assert {k: v for k, v in case.rows(world).items() if k != gone} == {k: v for k, v in truth.items() if k != gone}

    world.sandbox.set_churn()  # it is back
    world.sync(assets=[case.asset])
    assert differences(case, world) == []
    assert run_warnings(world, case.asset)[-1] == []
