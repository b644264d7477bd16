"""CPL orders end to end: sandbox Marketer API over HTTP -> cpl_orders, status history, cursor."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest

from models.status import STATUS_MAPPINGS
from dagster_results import materializations
from marketer_pages import served_in_a_full_walk

CPL_ROUTE = "marketer/cpl/orders"


STATUSES = {"waiting", "accepted", "rejected", "completed", "cancelled"}
TERMINAL = ("rejected", "completed", "cancelled")


def cpl_truth(world) -> dict[str, dict]:
    return {r["order_id"]: r for r in world.sandbox.dataset("marketer_cpl").truth()}


def _ts(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def assert_matches_truth(world) -> None:
    truth = cpl_truth(world)
    rows = {
        r[0]: r
        for r in world.query(
            "SELECT order_id, source_status, CAST(status AS VARCHAR), offer_id, of_account_id, "
            "campaign_type, campaign_url, quantity_ordered, quantity_delivered, price_per_fan, clicks, "
            "total_earned, created_at, completed_at FROM cpl_orders"
        )
    }
    assert set(rows) == set(truth)
    for order_id, t in truth.items():
        assert rows[order_id][1:] == (
            t["status"],
            STATUS_MAPPINGS["cpl"][t["status"]].value,
            t["offer_id"],
            t["of_account_id"],
            t["campaign_type"],
            t["campaign_url"],
            t["quantity_ordered"],
            t["quantity_delivered"],
            Decimal(str(t["price_per_fan"])),
            t["clicks"],
            Decimal(str(t["total_earned"])),
            _ts(t["created_at_ts"]),
            _ts(t["completed_at_ts"]),
        ), order_id


def test_full_sync_reads_every_status_explicitly_across_pages(world):
    result = world.sync(assets=["cpl_orders"])

    assert_matches_truth(world)
    truth = cpl_truth(world)
    metadata = materializations(result, "cpl_orders")[0].metadata
    assert metadata["earned_usd"].value == pytest.approx(sum(t["total_earned"] for t in truth.values()))
    assert metadata["orders_open"].value == sum(t["status"] in ("waiting", "accepted") for t in truth.values())
    assert {t["status"] for t in truth.values()} == STATUSES  # the world exercises every status
    assert {r[0] for r in world.query("SELECT DISTINCT source_status FROM cpl_orders")} == STATUSES
    stats = world.sandbox.stats.snapshot()
    for status in STATUSES:
        expected = sum(1 for t in truth.values() if t["status"] == status)
        assert stats["records"][f"{CPL_ROUTE}|{status}"] == served_in_a_full_walk(expected)
    # the undocumented default filter (accepted only in the sandbox) is never relied on
    requests = [r for r in world.sandbox.stats.recent if r.startswith(CPL_ROUTE)]
    assert len(requests) > len(STATUSES)  # page size 50: several pages for the big lists
    assert all("status=" in r for r in requests)

    # nullable fields land as NULL, not as a default, and undocumented fields stay in raw
    assert world.scalar("SELECT count(*) FROM cpl_orders WHERE clicks IS NULL") == sum(
        1 for t in truth.values() if t["clicks"] is None
    ) > 0
    assert world.scalar("SELECT count(*) FROM cpl_orders WHERE campaign_url IS NULL") > 0
    raw = world.scalar("SELECT raw FROM cpl_orders WHERE order_id = (SELECT max(order_id) FROM cpl_orders)")
    assert '"tags"' in raw and '"conversion_rate"' in raw

    assert world.scalar("SELECT count(*) FROM status_history WHERE source = 'cpl'") == len(truth)
    assert world.scalar("SELECT count(*) FROM status_history WHERE source = 'cpl' AND valid_to IS NOT NULL") == 0


def test_second_run_adds_no_rows_and_no_history(world):
    world.sync(assets=["cpl_orders"])
    before = world.query("SELECT order_id, row_hash, synced_at FROM cpl_orders ORDER BY order_id")
    history = world.query("SELECT * FROM status_history ORDER BY ALL")

    world.sync(assets=["cpl_orders"])

    assert world.query("SELECT order_id, row_hash, synced_at FROM cpl_orders ORDER BY order_id") == before
    assert world.query("SELECT * FROM status_history ORDER BY ALL") == history
    mode, inserted, updated, unchanged = world.query(
        "SELECT mode, inserted, updated, unchanged FROM sync_runs WHERE stream = 'cpl_orders' "
        "ORDER BY finished_at DESC LIMIT 1"
    )[0]
    assert (mode, inserted, updated) == ("incremental", 0, 0)
    assert 0 < unchanged < len(before)


def test_advancing_time_updates_rows_and_history_without_rereading_terminal_lists(world):
    world.sync(assets=["cpl_orders"])
    first = {r[0]: r[1] for r in world.query("SELECT order_id, source_status FROM cpl_orders")}
    world.sandbox.stats.reset()

    world.advance(days=4)  # longer than the 3-day auto-reject of waiting orders
    world.sync(assets=["cpl_orders"])

    assert_matches_truth(world)
    truth = cpl_truth(world)
    now = world.scalar("SELECT last_synced_at FROM sync_state WHERE stream = 'cpl_orders'")
    changed = {k for k, t in truth.items() if k in first and first[k] != t["status"]}
    new = set(truth) - set(first)
    assert changed and new
    for order_id in changed:
        rows = world.query(
            "SELECT source_status, valid_from, valid_to FROM status_history "
            "WHERE source = 'cpl' AND entity_id = ? ORDER BY valid_from",
            [order_id],
        )
        assert [r[0] for r in rows] == [first[order_id], truth[order_id]["status"]]
        assert rows[0][2] == now and rows[1][1] == now and rows[1][2] is None
    assert world.scalar("SELECT count(*) FROM status_history WHERE source = 'cpl'") == (
        len(first) + len(changed) + len(new)
    )

    # terminal lists were read only back to the oldest order that left the open lists (or the
    # newest order seen before), plus one page: never in full
    served = world.sandbox.stats.snapshot()["records"]
    created = {k: t["created_at_ts"] for k, t in truth.items()}
    vanished = [k for k, s in first.items() if s in ("waiting", "accepted") and truth[k]["status"] != s]
    since = min([created[k] for k in vanished] + [max(created[k] for k in first)])
    newly_terminal = {k for k, t in truth.items() if t["status"] in TERMINAL and first.get(k) != t["status"]}
    reachable = sum(1 for k, t in truth.items() if t["status"] in TERMINAL and created[k] >= since)
    served_terminal = sum(served.get(f"{CPL_ROUTE}|{s}", 0) for s in TERMINAL)
    all_terminal = sum(1 for t in truth.values() if t["status"] in TERMINAL)
    assert len(newly_terminal) <= served_terminal <= reachable + len(TERMINAL) * 50
    assert served_terminal < all_terminal


def test_unknown_status_value_is_kept_and_named_by_the_check(world):
    book = world.sandbox.dataset("marketer_cpl")
    order = next(o for o in book.orders if o.status == "accepted")
    book.status_overrides[order.order_id] = "paused_by_guarantee"

    result = world.sync(assets=["cpl_orders"])

    assert world.query(
        "SELECT source_status, status FROM cpl_orders WHERE order_id = ?", [order.order_id]
    ) == [("paused_by_guarantee", None)]
    assert world.scalar("SELECT count(*) FROM cpl_orders") == len(book.orders)
    check = next(e for e in result.get_asset_check_evaluations() if e.check_name == "cpl_orders_known_statuses")
    assert not check.passed
    assert "paused_by_guarantee" in check.description


def test_an_api_that_rejects_the_undocumented_cancelled_filter_does_not_fail_the_run(world):
    """The fact sheet lists four statuses; if the API refuses ``status=cancelled`` (422 in a 200
    body), the run goes on and says so, instead of failing every sync."""
    book = world.sandbox.dataset("marketer_cpl")
    book.cancelled = None  # this API version knows no cancelled list

    world.sync(assets=["cpl_orders"])

    warnings = world.scalar("SELECT warnings FROM sync_runs WHERE stream = 'cpl_orders'")
    assert "cpl_orders:cancelled" in warnings and "rejected this status filter" in warnings
    listed = {o.order_id for o in book.orders if o.status != "cancelled"}
    assert {r[0] for r in world.query("SELECT order_id FROM cpl_orders")} == listed


def test_error_envelope_in_http_200_is_retried_not_loaded_as_empty(world):
    world.sandbox.set_faults(rate=1.0, kinds=["error_200"], max_faults=3, retry_after=0, only=["cpl/orders"])

    world.sync(assets=["cpl_orders"])

    assert world.sandbox.faults.injected == {"error_200": 3}
    assert_matches_truth(world)
    assert world.scalar("SELECT retries FROM sync_runs WHERE stream = 'cpl_orders'") == 3


REJECTED_CPL_PARAMS = [
    ("query", {"status": "accepted", "of_account_id": "null"}, "of_account_id"),
    ("query", {"status": "accepted", "offer_id": "12.5"}, "offer_id"),
    ("query", {"status": "accepted", "offer_id": ""}, "offer_id"),
    ("query", {"status": "accepted", "limit": "-5"}, "limit"),
    ("query", {"status": "accepted", "limit": "1001"}, "limit"),
    ("query", {"status": "accepted", "offset": "-1"}, "offset"),
    ("query", {"status": "paused"}, "status"),
    ("json", {"status": "accepted", "of_account_id": None}, "of_account_id"),
    ("json", {"status": "accepted", "offer_id": "abc"}, "offer_id"),
    ("json", {"status": "accepted", "limit": True}, "limit"),
    ("json", {"status": None}, "status"),
]


@pytest.mark.parametrize(("where", "params", "field"), REJECTED_CPL_PARAMS)
def test_a_value_the_api_would_reject_gets_the_documented_422_envelope_never_a_500(world, where, params, field):
    """The docs' error envelope, ``error_code`` 422, naming the parameter: what a client must
    handle. (The sandbox used to answer HTTP 500 to ``of_account_id=null``.)"""
    env = world.sandbox.env()
    url = env["ONLYTRAFFIC_MARKETER_BASE_URL"] + "/api/marketer/cpl/orders"
    headers = {"Authorization": env["ONLYTRAFFIC_MARKETER_API_KEY"]}
    if where == "query":
        response = httpx.get(url, params=params, headers=headers, timeout=30)
    else:
        response = httpx.post(url, json=params, headers=headers, timeout=30)

    assert response.status_code == 200  # the Marketer API sends its errors in HTTP 200 bodies
    body = response.json()
    assert body["status"] == "error" and body["error_code"] == 422
    assert field in body["message"]


def test_valid_filters_narrow_the_list_and_unknown_parameters_are_ignored(world):
    env = world.sandbox.env()
    url = env["ONLYTRAFFIC_MARKETER_BASE_URL"] + "/api/marketer/cpl/orders"
    headers = {"Authorization": env["ONLYTRAFFIC_MARKETER_API_KEY"]}
    book = world.sandbox.dataset("marketer_cpl")
    order = next(o for o in book.orders if o.status == "completed")
    wanted = {
        o.order_id
        for o in book.orders
        if o.status == "completed" and o.extra["offer_id"] == order.extra["offer_id"] and o.account == order.account
    }
    params = {"status": "completed", "offer_id": str(order.extra["offer_id"]), "of_account_id": str(order.account),
              "creative_public_id": "not-a-cpl-filter", "limit": "1000"}
    body = httpx.get(url, params=params, headers=headers, timeout=30).json()

    assert body["status"] == "success"
    assert {r["order_id"] for r in body["data"]} == wanted
