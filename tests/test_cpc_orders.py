"""CPC orders end to end: sandbox over HTTP -> DuckDB table, status history, cursor, views."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
from marketer_pages import served_in_a_full_walk

from models.status import STATUS_MAPPINGS

CPC_ROUTE = "marketer/cpc/orders"


def cpc_truth(world) -> dict[str, dict]:
    return {r["order_id"]: r for r in world.sandbox.dataset("marketer_cpc").truth()}


def warehouse_rows(world) -> dict[str, tuple]:
    rows = world.query(
        "SELECT order_id, source_status, CAST(status AS VARCHAR), clicks_ordered, clicks_delivered, "
        "price_per_click, total_earned, created_at, date_start, date_finish, creative_public_id, "
        "of_account_id, url FROM cpc_orders"
    )
    return {r[0]: r for r in rows}


def assert_matches_truth(world) -> None:
    truth = cpc_truth(world)
    rows = warehouse_rows(world)
    assert set(rows) == set(truth)
    for order_id, t in truth.items():
        r = rows[order_id]
        assert r[1] == t["status"]
        assert r[2] == STATUS_MAPPINGS["cpc"][t["status"]].value
        assert r[3] == t["clicks"]["ordered"]
        assert r[4] == t["clicks"]["delivered"]
        assert r[5] == Decimal(str(t["price_per_click"]))
        assert r[6] == Decimal(str(t["total_earned"]))
        assert r[7] == datetime.fromtimestamp(t["created_at_ts"], UTC)
        assert r[8] == (datetime.fromtimestamp(t["date_start"], UTC) if t["date_start"] else None)
        assert r[9] == (datetime.fromtimestamp(t["date_finish"], UTC) if t["date_finish"] else None)
        assert r[10] == t["creative"]["public_id"]
        assert r[11] == t["of_account_id"]
        assert r[12] == t["url"]


def test_full_sync_fetches_every_status_across_pages(world):
    world.sync(assets=["cpc_orders"])

    assert_matches_truth(world)
    statuses = {r[0] for r in world.query("SELECT DISTINCT source_status FROM cpc_orders")}
    assert statuses == {"waiting", "active", "rejected", "completed"}

    stats = world.sandbox.stats.snapshot()
    truth = cpc_truth(world)
    for status in statuses:
        expected = sum(1 for t in truth.values() if t["status"] == status)
        assert stats["records"][f"{CPC_ROUTE}|{status}"] == served_in_a_full_walk(expected)
    # page size 50 and 240 orders: several pages per list, not one request per status
    assert stats["requests"][CPC_ROUTE] > 6

    # raw record kept whole, including fields we do not model
    raw = world.scalar("SELECT raw FROM cpc_orders ORDER BY order_id LIMIT 1")
    assert '"creative"' in raw and '"categories"' in raw

    # one history row per order, all current
    assert world.scalar("SELECT count(*) FROM status_history WHERE source = 'cpc'") == len(truth)
    assert world.scalar("SELECT count(*) FROM status_history WHERE valid_to IS NOT NULL") == 0


def test_second_run_adds_no_rows_and_no_history(world):
    world.sync(assets=["cpc_orders"])
    before = world.query("SELECT order_id, row_hash, synced_at FROM cpc_orders ORDER BY order_id")
    history_before = world.query("SELECT * FROM status_history ORDER BY entity_id")

    world.sync(assets=["cpc_orders"])

    assert world.query("SELECT order_id, row_hash, synced_at FROM cpc_orders ORDER BY order_id") == before
    assert world.query("SELECT * FROM status_history ORDER BY entity_id") == history_before
    mode, inserted, updated, unchanged = world.query(
        "SELECT mode, inserted, updated, unchanged FROM sync_runs ORDER BY finished_at DESC LIMIT 1"
    )[0]
    assert (mode, inserted, updated) == ("incremental", 0, 0)
    assert 0 < unchanged < len(before)  # only open orders (and a probe page) were re-read


def test_advancing_time_updates_rows_and_appends_history(world):
    world.sync(assets=["cpc_orders"])
    first = {r[0]: r[1] for r in world.query("SELECT order_id, source_status FROM cpc_orders")}
    world.sandbox.stats.reset()

    world.advance(days=2)
    world.sync(assets=["cpc_orders"])

    assert_matches_truth(world)
    now = world.scalar("SELECT max(last_synced_at) FROM sync_state")
    truth = cpc_truth(world)
    changed = {k for k, t in truth.items() if k in first and first[k] != t["status"]}
    new = set(truth) - set(first)
    assert changed, "the sandbox should have moved some orders on in two days"

    # every change closed the old interval at the observation time and opened a new one
    for order_id in changed:
        rows = world.query(
            "SELECT source_status, valid_from, valid_to FROM status_history "
            "WHERE source = 'cpc' AND entity_id = ? ORDER BY valid_from",
            [order_id],
        )
        assert [r[0] for r in rows] == [first[order_id], truth[order_id]["status"]]
        assert rows[0][2] == now and rows[1][1] == now and rows[1][2] is None
    assert world.scalar("SELECT count(*) FROM status_history") == len(first) + len(changed) + len(new)
    assert world.scalar(
        "SELECT count(*) FROM (SELECT entity_id FROM status_history WHERE valid_to IS NULL "
        "GROUP BY entity_id HAVING count(*) > 1)"
    ) == 0

    # terminal lists were not walked again: only back to the oldest order that left the open
    # lists (or the newest order seen before), plus one page
    stats = world.sandbox.stats.snapshot()["records"]
    created = {k: t["created_at_ts"] for k, t in truth.items()}
    vanished = [k for k, s in first.items() if s in ("waiting", "active") and truth[k]["status"] != s]
    since = min([created[k] for k in vanished] + [max(created[k] for k in first)])
    newly_terminal = {
        k for k, t in truth.items() if t["status"] in ("completed", "rejected") and first.get(k) != t["status"]
    }
    reachable = sum(
        1 for k, t in truth.items() if t["status"] in ("completed", "rejected") and created[k] >= since
    )
    served_terminal = stats.get(f"{CPC_ROUTE}|completed", 0) + stats.get(f"{CPC_ROUTE}|rejected", 0)
    assert len(newly_terminal) <= served_terminal <= reachable + 2 * 50


def test_error_envelope_in_http_200_is_retried_not_loaded_as_empty(world):
    world.sandbox.set_faults(rate=1.0, kinds=["error_200"], max_faults=3, retry_after=0)

    world.sync(assets=["cpc_orders"])

    assert world.sandbox.faults.injected == {"error_200": 3}
    assert_matches_truth(world)
    assert world.scalar("SELECT retries FROM sync_runs") == 3


def test_persistent_error_envelope_fails_and_commits_nothing(world):
    world.sandbox.set_faults(rate=1.0, kinds=["error_200"], retry_after=0)

    result = world.sync(assets=["cpc_orders"], raise_on_error=False)

    assert not result.success
    failure = result.failure_data_for_node("cpc_orders")
    message = failure.error.to_string()
    assert "FeedFailed: cpc_orders: ApiError: " in message, message[:2000]
    assert "GET http://127.0.0.1" in message and "/api/marketer/cpc/orders" in message
    assert "gave up after" in message
    assert world.sandbox.env()["ONLYTRAFFIC_MARKETER_API_KEY"] not in message
    assert world.scalar("SELECT count(*) FROM cpc_orders") == 0
    assert world.scalar("SELECT count(*) FROM sync_state") == 0


@pytest.mark.parametrize("kind", ["500", "error_200", "drop"])
def test_failure_mid_sync_leaves_previous_state_and_cursor(world, kind):
    world.sync(assets=["cpc_orders"])
    snapshot = {
        t: world.query(f"SELECT * FROM {t} ORDER BY ALL")
        for t in ("cpc_orders", "status_history", "sync_state", "sync_runs")
    }

    world.advance(days=2)
    # the open lists are read fine, then every request for a terminal list fails
    world.sandbox.set_faults(rate=1.0, kinds=[kind], only=["status=completed"], retry_after=0)
    result = world.sync(assets=["cpc_orders"], raise_on_error=False)

    assert not result.success
    for table, rows in snapshot.items():
        assert world.query(f"SELECT * FROM {table} ORDER BY ALL") == rows, table

    # and once the API recovers, the next run catches up completely
    world.sandbox.set_faults(rate=0)
    world.sync(assets=["cpc_orders"])
    assert_matches_truth(world)


def test_views_expose_fill_rate_and_earnings(world):
    world.sync()
    truth = cpc_truth(world)
    fill = {r[0]: r for r in world.query(
        "SELECT order_id, source, side, units_ordered, units_delivered, fill_rate, status "
        "FROM v_fill_rate WHERE source = 'cpc'"
    )}
    earned = {r[0]: r for r in world.query(
        "SELECT order_id, currency, earned, status FROM v_earnings WHERE source = 'cpc'"
    )}
    assert set(fill) == set(truth) == set(earned)
    for order_id, t in truth.items():
        ordered, delivered = t["clicks"]["ordered"], t["clicks"]["delivered"]
        row = fill[order_id]
        assert row[2] is None and row[3] == ordered and row[4] == delivered
        assert row[5] == pytest.approx(delivered / ordered)
        assert earned[order_id][1] == "USD"
        assert earned[order_id][2] == Decimal(str(t["total_earned"]))


@pytest.mark.parametrize(
    ("where", "params", "field"),
    [
        ("query", {"status": "active", "of_account_id": "null"}, "of_account_id"),
        ("query", {"status": "active", "of_account_id": "1e3"}, "of_account_id"),
        ("query", {"status": "active", "limit": "0"}, "limit"),
        ("query", {"status": "active", "limit": "99999999999999999999999"}, "limit"),
        ("query", {"status": "cancelled"}, "status"),
        ("json", {"status": "active", "of_account_id": None}, "of_account_id"),
        ("json", {"status": "active", "creative_public_id": 12}, "creative_public_id"),
        ("json", {"status": "active", "offset": 1.5}, "offset"),
    ],
)
def test_a_value_the_api_would_reject_gets_the_documented_422_envelope_never_a_500(world, where, params, field):
    """The OpenAPI spec's ErrorResponse, ``error_code`` 422 ("bad request params"), naming the
    parameter; ``cancelled`` is not in the CPC status enum."""
    env = world.sandbox.env()
    url = env["ONLYTRAFFIC_MARKETER_BASE_URL"] + "/api/marketer/cpc/orders"
    headers = {"Authorization": env["ONLYTRAFFIC_MARKETER_API_KEY"]}
    if where == "query":
        response = httpx.get(url, params=params, headers=headers, timeout=30)
    else:
        response = httpx.post(url, json=params, headers=headers, timeout=30)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "error" and body["error_code"] == 422
    assert field in body["message"]


def test_a_list_that_ends_exactly_at_a_page_boundary_is_complete_without_a_warning(world):
    """The marketer lists carry no total, so the empty page after the last full one is checked by
    reading again from the previous page's last order: one order back means the list really ends
    there (no warning, list complete), more would mean the empty page lied."""
    truth = cpc_truth(world)
    completed = sum(1 for t in truth.values() if t["status"] == "completed")
    page = completed // 2 if completed % 2 == 0 else completed  # the list is two full pages, or one
    world.monkeypatch.setenv("ONLYTRAFFIC_MARKETER_PAGE_SIZE", str(page))
    world.sync(assets=["cpc_orders"])

    assert_matches_truth(world)
    warnings = " ".join(r[0] for r in world.query("SELECT warnings FROM sync_runs WHERE stream = 'cpc_orders'"))
    assert "cpc_orders:completed" not in warnings
    asked = [a for a in world.sandbox.stats.recent if CPC_ROUTE in a and "status=completed" in a]
    assert any(f"offset={completed - 1}" in a for a in asked), asked  # the overlapping read was made
