"""Swap orders end to end: sandbox Studio API over HTTP -> swap_orders, swap_order_sides, history.

The API sends no status: every status comes from the filter an order was listed under, so the
truth compared here is the sandbox's internal status, which it never serves.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from urllib.parse import parse_qs, urlsplit

import dagster as dg
import duckdb
import httpx
import pytest

from models.onlytraffic import SWAP_COUNT_BLOCKS
from models.status import STATUS_MAPPINGS
from pipelines.feeds.onlytraffic_studio import _SIDE_RECORDS_SQL
from dagster_results import materializations

ROUTE = "studio/swaps/orders"
STATUSES = {"waiting", "accepted", "rejected", "completed", "cancelled"}
TERMINAL = ("rejected", "completed", "cancelled")
PAGE_SIZE = 20
ORDER_COLUMNS = (
    "order_id, source_status, CAST(status AS VARCHAR), offer_id, quantity, max_days, guaranteed_price, "
    "stats_public_arpu, is_offer_mine, is_order_mine, created_at, started_at, completed_at"
)
SIDE_STATS = [
    ("fans_subscribed", "total"),
    ("fans_subscribed", "today"),
    ("transactions_sum", "total"),
    ("transactions_sum", "today"),
    *((block, part) for block in SWAP_COUNT_BLOCKS for part in ("total", "today", "percent")),
]
SIDE_COLUMNS = (
    "order_id, side, source_status, CAST(status AS VARCHAR), is_mine, of_account_id, username, performer_top, subscribe_price, "
    "campaign_link, arpu, arpu_paying, romi, " + ", ".join(f"{b}_{p}" for b, p in SIDE_STATS)
)


@pytest.fixture
def swap_world(world):
    world.monkeypatch.setenv("ONLYTRAFFIC_STUDIO_PAGE_SIZE", str(PAGE_SIZE))
    return world


def truth(world) -> dict[str, dict]:
    book = world.sandbox.dataset("studio_swap")
    return {r["order_id"]: {**r, "_status": book.status_of(r["order_id"])} for r in book.truth()}


def _ts(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def _num(value) -> Decimal | None:
    return Decimal(str(value)) if value is not None else None


def expected_order(t: dict) -> tuple:
    return (
        t["order_id"],
        t["_status"],
        STATUS_MAPPINGS["swap"][t["_status"]].value,
        t["offer_id"],
        t["quantity"],
        t["max_days"],
        _num(t["guaranteed_price"]),
        t["stats_public_arpu"],
        t["is_offer_mine"],
        t["is_order_mine"],
        _ts(t["created_at_ts"]),
        _ts(t["started_at_ts"]),
        _ts(t["completed_at_ts"]),
    )


def expected_side(t: dict, side: str) -> tuple:
    s = t[f"{side}_side"]
    stats = s["stats"]
    values = [stats[block][part] for block, part in SIDE_STATS]
    return (
        t["order_id"],
        side,
        t["_status"],
        STATUS_MAPPINGS["swap"][t["_status"]].value,
        s["is_mine"],
        s["model"]["of_account_id"],
        s["model"]["username"],
        _num(s["model"]["performer_top"]),
        _num(s["model"]["subscribe_price"]),
        s["campaign_link"],
        _num(stats["arpu"]),
        _num(stats["arpu_paying"]),
        _num(stats["romi"]),
        *(_num(v) if isinstance(v, float) else v for v in values),
    )


def assert_matches(world, expected: dict[str, dict]) -> None:
    orders = {r[0]: r for r in world.query(f"SELECT {ORDER_COLUMNS} FROM swap_orders")}
    assert set(orders) == set(expected)
    for order_id, t in expected.items():
        assert orders[order_id] == expected_order(t), order_id
    sides = {(r[0], r[1]): r for r in world.query(f"SELECT {SIDE_COLUMNS} FROM swap_order_sides")}
    assert set(sides) == {(k, side) for k in expected for side in ("offer", "order")}
    for (order_id, side), row in sides.items():
        assert row == expected_side(expected[order_id], side), (order_id, side)


def served(world) -> dict[str, int]:
    records = world.sandbox.stats.snapshot()["records"]
    return {k.split("|", 1)[1]: v for k, v in records.items() if k.startswith(ROUTE + "|")}


def swap_requests(world) -> list[dict[str, str]]:
    return [
        {k: v[0] for k, v in parse_qs(urlsplit(r).query).items()}
        for r in world.sandbox.stats.recent
        if r.startswith(ROUTE + "?")
    ]


def test_full_sync_takes_status_from_the_filter_and_flattens_both_sides(swap_world):
    world = swap_world
    result = world.sync(assets=["swap_orders"])

    expected = truth(world)
    assert {t["_status"] for t in expected.values()} == STATUSES
    metadata = materializations(result, "swap_orders")[0].metadata
    mine = [s for t in expected.values() for s in (t["offer_side"], t["order_side"]) if s["is_mine"]]
    assert metadata["earned_usd"].value == pytest.approx(sum(s["stats"]["transactions_sum"]["total"] for s in mine))
    assert metadata["orders_open"].value == sum(t["_status"] in ("waiting", "accepted") for t in expected.values())
    assert metadata["swap_order_sides.inserted"].value == 2 * len(expected)
    assert all("status" not in t for t in expected.values())  # as documented: no status field
    assert_matches(world, expected)

    counts = served(world)
    for status in STATUSES:
        assert counts[status] == sum(1 for t in expected.values() if t["_status"] == status)
    requests = swap_requests(world)
    assert {r["status"] for r in requests} == STATUSES  # every status asked for, never "all"
    assert {int(r["page_size"]) for r in requests} == {PAGE_SIZE}
    assert len(requests) >= len(expected) / PAGE_SIZE  # several pages per list

    assert world.scalar("SELECT count(*) FROM status_history WHERE source = 'swap'") == len(expected)
    assert world.scalar("SELECT count(*) FROM status_history WHERE valid_to IS NOT NULL") == 0
    assert world.scalar("SELECT count(*) FROM quarantine") == 0
    # the raw record is the API's, unknown blocks included; a side's raw is its block
    raw = world.scalar("SELECT raw FROM swap_orders ORDER BY order_id LIMIT 1")
    assert '"offer_side"' in raw and '"created_at_ts"' in raw
    side_raw = world.scalar("SELECT raw FROM swap_order_sides ORDER BY order_id, side LIMIT 1")
    assert '"messages_3"' in side_raw and '"model"' in side_raw


def test_page_size_is_capped_at_100_and_the_sandbox_rejects_101(swap_world):
    world = swap_world
    world.monkeypatch.setenv("ONLYTRAFFIC_STUDIO_PAGE_SIZE", "500")
    world.sync(assets=["swap_orders"])

    assert {int(r["page_size"]) for r in swap_requests(world)} == {100}
    assert world.scalar("SELECT count(*) FROM swap_orders") == len(truth(world))

    env = world.sandbox.env()
    response = httpx.get(
        env["ONLYTRAFFIC_STUDIO_BASE_URL"] + "/swaps/orders",
        params={"status": "completed", "page_size": 101},
        headers={"X-API-Key": env["ONLYTRAFFIC_STUDIO_API_KEY"]},
    )
    assert response.status_code == 422
    assert response.json() == {
        "success": False,
        "error": {"code": "validation_error", "message": "page_size must be between 1 and 100"},
    }


def test_second_run_adds_no_rows_and_no_history(swap_world):
    world = swap_world
    world.sync(assets=["swap_orders"])
    tables = ("swap_orders", "swap_order_sides", "status_history")
    before = {t: world.query(f"SELECT * FROM {t} ORDER BY ALL") for t in tables}

    world.sync(assets=["swap_orders"])

    for table in tables:
        assert world.query(f"SELECT * FROM {table} ORDER BY ALL") == before[table], table
    mode, inserted, updated, unchanged = world.query(
        "SELECT mode, inserted, updated, unchanged FROM sync_runs WHERE stream = 'swap_orders' "
        "ORDER BY finished_at DESC LIMIT 1"
    )[0]
    assert (mode, inserted, updated) == ("incremental", 0, 0)
    assert 0 < unchanged < len(before["swap_orders"])


def test_advancing_time_updates_orders_sides_and_history_reading_terminal_lists_from_a_date(swap_world):
    world = swap_world
    world.sync(assets=["swap_orders"])
    first = {r[0]: r[1] for r in world.query("SELECT order_id, source_status FROM swap_orders")}
    world.sandbox.stats.reset()

    world.advance(days=3)
    world.sync(assets=["swap_orders"])

    expected = truth(world)
    assert_matches(world, expected)
    now = world.scalar("SELECT last_synced_at FROM sync_state WHERE stream = 'swap_orders'")
    changed = {k for k, t in expected.items() if k in first and first[k] != t["_status"]}
    new = set(expected) - set(first)
    assert changed and new
    for order_id in changed:
        rows = world.query(
            "SELECT source_status, valid_from, valid_to FROM status_history "
            "WHERE source = 'swap' AND entity_id = ? ORDER BY valid_from",
            [order_id],
        )
        assert [r[0] for r in rows] == [first[order_id], expected[order_id]["_status"]]
        assert rows[0][2] == now and rows[1][1] == now and rows[1][2] is None
    assert world.scalar("SELECT count(*) FROM status_history WHERE source = 'swap'") == (
        len(first) + len(changed) + len(new)
    )

    # Terminal lists were asked only from=<date of the oldest order that left the open lists, or
    # of the newest order seen before>: exactly the terminal orders created on or after that day.
    created = {k: _ts(t["created_at_ts"]) for k, t in expected.items()}
    vanished = [k for k, s in first.items() if s in ("waiting", "accepted") and expected[k]["_status"] != s]
    since = min([created[k] for k in vanished] + [max(created[k] for k in first)]).date()
    terminal_requests = [r for r in swap_requests(world) if r["status"] in TERMINAL]
    assert terminal_requests and all(r["from"] == since.isoformat() for r in terminal_requests)
    counts = served(world)
    for status in TERMINAL:
        reachable = sum(1 for k, t in expected.items() if t["_status"] == status and created[k].date() >= since)
        assert counts.get(status, 0) == reachable
    assert sum(counts.get(s, 0) for s in TERMINAL) < sum(1 for t in expected.values() if t["_status"] in TERMINAL)


def run_days(world, first_day: str, last_day: str) -> dg.ExecuteInProcessResult:
    """Materialize the daily-partitioned asset for a day range, as one run (single-run backfill)."""
    from pipelines.definitions import build_defs

    world.apply_env()
    job = build_defs().resolve_job_def("swap_orders_by_created_day_job")
    return job.execute_in_process(
        instance=dg.DagsterInstance.ephemeral(),
        tags={
            "dagster/asset_partition_range_start": first_day,
            "dagster/asset_partition_range_end": last_day,
        },
    )


def test_partition_range_run_loads_exactly_the_orders_created_on_those_days(swap_world):
    world = swap_world
    result = run_days(world, "2026-01-05", "2026-01-09")

    assert result.success
    days = (date(2026, 1, 5), date(2026, 1, 9))
    everything = truth(world)
    inside = {k: t for k, t in everything.items() if days[0] <= _ts(t["created_at_ts"]).date() <= days[1]}
    assert 0 < len(inside) < len(everything)
    assert_matches(world, inside)
    # one walk per status over the whole range, each with from/to
    requests = swap_requests(world)
    assert {r["status"] for r in requests} == STATUSES
    assert all((r["from"], r["to"]) == ("2026-01-05", "2026-01-09") for r in requests)
    # its own stream: the incremental cursor does not exist yet
    assert [r[0] for r in world.query("SELECT stream FROM sync_state")] == ["swap_orders_by_created_day"]

    # the incremental sync afterwards completes the table; the backfilled orders are unchanged
    before = world.query("SELECT order_id, row_hash, synced_at FROM swap_orders ORDER BY order_id")
    world.sync(assets=["swap_orders"])
    assert_matches(world, everything)
    after = {r[0]: r for r in world.query("SELECT order_id, row_hash, synced_at FROM swap_orders")}
    assert all(after[r[0]] == r for r in before)
    assert world.scalar("SELECT count(*) FROM status_history WHERE source = 'swap'") == len(everything)


def test_partition_run_after_incremental_changes_nothing_and_keeps_the_cursor(swap_world):
    world = swap_world
    world.sync(assets=["swap_orders"])
    tables = ("swap_orders", "swap_order_sides", "status_history")
    before = {t: world.query(f"SELECT * FROM {t} ORDER BY ALL") for t in tables}
    cursor = world.scalar("SELECT cursor FROM sync_state WHERE stream = 'swap_orders'")

    assert run_days(world, "2026-01-01", "2026-01-03").success

    for table in tables:
        assert world.query(f"SELECT * FROM {table} ORDER BY ALL") == before[table], table
    assert world.scalar("SELECT cursor FROM sync_state WHERE stream = 'swap_orders'") == cursor
    inserted, updated, received = world.query(
        "SELECT inserted, updated, records_received FROM sync_runs WHERE stream = 'swap_orders_by_created_day'"
    )[0]
    assert (inserted, updated) == (0, 0) and received > 0


def test_error_envelope_in_http_200_is_retried_not_loaded_as_empty(swap_world):
    world = swap_world
    world.sandbox.set_faults(rate=1.0, kinds=["error_200"], max_faults=4, retry_after=0, only=["/studio/"])

    world.sync(assets=["swap_orders"])

    assert world.sandbox.faults.injected == {"error_200": 4}
    assert_matches(world, truth(world))
    assert world.scalar("SELECT retries FROM sync_runs WHERE stream = 'swap_orders'") == 4


def test_persistent_error_envelope_fails_and_commits_nothing(swap_world):
    world = swap_world
    world.sandbox.set_faults(rate=1.0, kinds=["error_200"], retry_after=0, only=["status=completed"])

    result = world.sync(assets=["swap_orders"], raise_on_error=False)

    assert not result.success
    message = result.failure_data_for_node("swap_orders").error.to_string()
    assert "/studio/swaps/orders" in message and "gave up after" in message and "rate_limited" in message
    assert world.sandbox.env()["ONLYTRAFFIC_STUDIO_API_KEY"] not in message
    for table in ("swap_orders", "swap_order_sides", "status_history", "sync_state"):
        assert world.scalar(f"SELECT count(*) FROM {table}") == 0, table


@pytest.mark.parametrize(
    ("quirk", "warning"),
    [("ignore_page", "repeated an earlier page"), ("has_next_always", "was empty; stopped there")],
)
def test_lying_pagination_ends_the_walk_with_a_warning(swap_world, quirk, warning):
    world = swap_world
    api = next(m for m in world.sandbox.modules if m.name == "onlytraffic_studio")
    api.pagination_quirk = quirk

    result = world.sync(assets=["swap_orders"], raise_on_error=False)

    assert result.success  # finished: no endless loop, no crash
    warnings = world.scalar("SELECT warnings FROM sync_runs WHERE stream = 'swap_orders'")
    assert warning in warnings
    pages = len(swap_requests(world))
    assert pages <= 2 * (len(truth(world)) / PAGE_SIZE + 2 * len(STATUSES))


@pytest.mark.parametrize("kind", ["503", "malformed", "drop"])
def test_failure_mid_sync_leaves_tables_and_cursor_as_they_were(swap_world, kind):
    world = swap_world
    world.sync(assets=["swap_orders"])
    tables = ("swap_orders", "swap_order_sides", "status_history", "sync_state", "sync_runs")
    snapshot = {t: world.query(f"SELECT * FROM {t} ORDER BY ALL") for t in tables}

    world.advance(days=2)
    # the open lists are read fine, then every request for a terminal list fails
    world.sandbox.set_faults(rate=1.0, kinds=[kind], only=["status=rejected"], retry_after=0)
    result = world.sync(assets=["swap_orders"], raise_on_error=False)

    assert not result.success
    for table in tables:
        assert world.query(f"SELECT * FROM {table} ORDER BY ALL") == snapshot[table], table

    world.sandbox.set_faults(rate=0)
    world.sync(assets=["swap_orders"])
    assert_matches(world, truth(world))


@pytest.mark.parametrize(
    "params",
    [
        {"status": "accepted", "offer_id": "null"},
        {"status": "accepted", "of_account_id": "1.5"},
        {"status": "accepted", "page": "0"},
        {"status": "accepted", "page_size": "101"},
        {"status": "paused"},
        {"sort": "price_desc"},
        {"from": "2026-13-01"},
        {"from": "2026-01-10", "to": "2026-01-01"},
    ],
)
def test_a_value_the_api_would_reject_gets_a_422_error_envelope_never_a_500(swap_world, params):
    env = swap_world.sandbox.env()
    response = httpx.get(
        env["ONLYTRAFFIC_STUDIO_BASE_URL"] + "/swaps/orders",
        params=params,
        headers={"X-API-Key": env["ONLYTRAFFIC_STUDIO_API_KEY"]},
        timeout=30,
    )

    assert response.status_code == 422
    body = response.json()
    assert body["success"] is False and body["error"]["code"] == "validation_error"


# Orders whose sides hit every branch of the side-record SQL: a null, missing or non-object side,
# an empty side, a side that already holds "order_id"/"side"/"order_status" (at its top or deeper),
# order ids and statuses of every JSON type, strings that need escaping, numbers JSON rewrites.
_ODD_ORDERS = [
    (None, {"order_id": 5, "offer_side": None, "order_side": [1]}),
    ("active", {"order_id": "x", "status": "done", "offer_side": {"a": 1, "order_id": 9}}),
    (None, {"offer_side": {"b": 2}}),
    ('x"y', {"order_id": None, "offer_side": {}, "order_side": {"side": "q", "z": "é\n"}}),
    (None, {"order_id": 1.50, "status": 'a"b', "offer_side": {"n": {"order_id": 1}}}),
    ("l", {"order_id": {"k": [1, 2]}, "status": 7, "offer_side": {"x": 1e5}, "order_side": "str"}),
    ("l", {"order_id": "q", "status": True, "offer_side": {"x": "é\t"}, "order_side": {"order_status": 1}}),
    ("l", {"order_id": "r", "status": None, "offer_side": {"x": 1, "y": None}}),
    ("l", {"order_id": "s", "status": {"a": 1}, "offer_side": {"x": [], "y": {}}, "order_side": {}}),
]


def test_side_records_are_byte_for_byte_what_json_merge_patch_writes():
    """The side records (their text is each side row's ``raw`` and row hash) are built by appending
    to the side's text; json_merge_patch, which they replaced, is the reference: any byte of
    difference would rewrite every side row on the first sync after an upgrade."""
    reference = " UNION ALL ".join(
        f"""SELECT seq, pos * 2 + {i} AS pos, listed_status,
               json_merge_patch(json_extract(rec, '$.{side}_side'),
                   json_object('order_id', json_extract(rec, '$.order_id'), 'side', '{side}',
                               'order_status', coalesce(json_extract_string(rec, '$.status'), listed_status))) AS rec
            FROM recs WHERE json_type(rec, '$.{side}_side') = 'OBJECT'"""
        for i, side in enumerate(("offer", "order"))
    )
    with duckdb.connect() as con:
        con.execute("CREATE TABLE recs (seq BIGINT, pos BIGINT, listed_status VARCHAR, rec JSON)")
        con.executemany(
            "INSERT INTO recs VALUES (1, ?, ?, ?)",
            [(pos, listed, json.dumps(order, ensure_ascii=False)) for pos, (listed, order) in enumerate(_ODD_ORDERS)],
        )
        expected = con.execute(f"SELECT pos, CAST(rec AS VARCHAR) FROM ({reference}) ORDER BY pos").fetchall()
        built = con.execute(f"SELECT pos, CAST(rec AS VARCHAR) FROM ({_SIDE_RECORDS_SQL}) ORDER BY pos").fetchall()
    assert len(expected) == 11
    assert built == expected


def test_the_cursor_keeps_the_newest_created_at_served(swap_world):
    """The watermark is read from ``recs.created`` (each order's ``created_at`` text, taken as its
    page is split; the orders' JSON is not kept in ``recs``): it must be the newest order served."""
    swap_world.sync(assets=["swap_orders"])
    served = [t["created_at"] for t in truth(swap_world).values() if t.get("created_at")]
    newest = max(datetime.fromisoformat(text.replace("Z", "+00:00")) for text in served)
    cursor = json.loads(swap_world.scalar("SELECT cursor FROM sync_state WHERE stream = 'swap_orders'"))
    assert datetime.fromisoformat(cursor["created_watermark"]) == newest
