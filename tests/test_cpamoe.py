"""cpa.moe end to end: CSV register -> cpamoe_leads, list.json polling over HTTP, add.json.

The sandbox's ``cpamoe_leads`` dataset is the truth; its ``requests_by_id`` counter says which
lead ids list.json was asked for, so tests can prove final leads are never polled again.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest

from models.status import STATUS_MAPPINGS
from pipelines.sources.http import AuthError
from pipelines.defs.cpamoe.resources import CpamoeResource
from pipelines.resources import WarehouseResource
from pipelines.feeds.cpamoe import submit_lead
from pipelines.sources.cpamoe import CpamoeError
from dagster_results import materializations

ROUTE = "cpamoe/list"
ASSETS = ["cpamoe_lead_files", "cpamoe_leads"]
GHOSTS = ["ghost-1", "ghost-2"]  # registered by us, unknown to cpa.moe

# Written out from the docs (not imported), so a typo in the source's tables shows up here.
DOC_STATUS_NAMES = {
    1: "New order", 2: "Processing", 3: "Callback", 4: "Hold", 5: "Cancelled", 6: "Packing",
    7: "Sending", 8: "Transfer", 9: "Arrived", 10: "Completed", 11: "Return", 12: "Deleted",
}
DOC_REASON_NAMES = {
    1: "Incorrect phone (trash)", 2: "Changed his mind", 3: "Did not order (trash)",
    4: "Requires certificate", 5: "Wrong GEO (trash)", 6: "Errors or fakes (trash)",
    7: "Duplicate order (trash)", 8: "Ordered elsewhere (trash)", 9: "Expensive",
    10: "Not satisfied with delivery", 11: "Could not get through (trash)",
    12: "Possibly fraud (trash)", 13: "Speaks different language (trash)",
    14: "Product did not fit (trash)", 15: "Offer disabled",
}
DOC_MAPPING = {"wait": "pending", "hold": "on_hold", "approve": "completed", "cancel": "cancelled", "trash": "rejected"}
COLUMNS = (
    "lead_id, uid, offer_id, src, stage, stage_name, status_code, status_name, reason_code, "
    "reason_name, is_trash, item_count, comment, found, not_found_at, submitted_at, registered_from, "
    "last_checked_at, source_status, CAST(status AS VARCHAR) AS status, row_hash, synced_at, run_id"
)


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def leads_dir(world, tmp_path: Path) -> Path:
    directory = tmp_path / "cpamoe_leads"
    directory.mkdir()
    world.monkeypatch.setenv("CPAMOE_LEADS_DIR", str(directory))
    return directory


def book(world):
    return world.sandbox.dataset("cpamoe_leads")


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def register_all(world, leads_dir: Path, extra: list[str] = GHOSTS) -> list[str]:
    ids = sorted(book(world).by_id) + list(extra)
    write_csv(leads_dir / "leads.csv", ["id", "offer", "submitted_at"], [[i, "217", "2026-01-01T00:00:00Z"] for i in ids])
    return ids


def rows(world) -> dict[str, dict]:
    with_names = world.query(f"SELECT {COLUMNS} FROM cpamoe_leads")
    names = [c.strip().split(" AS ")[-1] for c in COLUMNS.split(",")]
    return {r[0]: dict(zip(names, r, strict=True)) for r in with_names}


def now_of(world) -> datetime:
    return world.sandbox.world.now


def assert_matches_truth(world) -> None:
    truth = book(world).truth()
    got = rows(world)
    assert set(truth) <= set(got)
    for lead_id, t in truth.items():
        r = got[lead_id]
        reason = t.get("reason")
        assert r["uid"] == str(t["uid"])
        assert r["stage"] == r["source_status"] == t["stage"]
        assert r["status"] == DOC_MAPPING[t["stage"]] == STATUS_MAPPINGS["cpamoe"][t["stage"]].value
        assert r["status_code"] == t["status"]
        assert r["status_name"] == DOC_STATUS_NAMES[t["status"]]
        assert r["reason_code"] == reason
        assert r["reason_name"] == (DOC_REASON_NAMES[reason] if reason else None)
        assert r["is_trash"] == (t["stage"] == "trash" or (reason is not None and "(trash)" in DOC_REASON_NAMES[reason]))
        assert r["item_count"] == t.get("count")
        assert r["comment"] == t.get("comment")
        assert r["src"] == (str(t["src"]) if "src" in t else None)
        assert r["found"] is True and r["not_found_at"] is None
        assert r["stage_name"] is not None


def warehouse_text(world) -> str:
    """Every value of every table, as text (to search for secrets and personal data)."""
    tables = [r[0] for r in world.query("SELECT table_name FROM information_schema.tables")]
    return "\n".join(str(world.query(f'SELECT * FROM "{t}"')) for t in tables)


def materialization(result, asset: str) -> dict:
    (event,) = materializations(result, asset)
    return {k: v.value for k, v in event.metadata.items()}


def checks(result) -> dict[str, object]:
    return {c.check_name: c for c in result.get_asset_check_evaluations()}


def final_ids(world) -> set[str]:
    return {i for i in book(world).by_id if book(world).is_final(i)}


# -- the register ------------------------------------------------------------------------------


def test_register_loads_good_lines_and_reports_bad_lines_by_number(world, leads_dir):
    (leads_dir / "batch1.csv").write_text(
        "id,offer,submitted_at,phone,email\n"  # 1
        "700001,217,2026-01-10T10:00:00Z,79990000001,a@example.com\n"  # 2 ok
        "700002,,2026-01-10 11:00,79990000002,b@example.com\n"  # 3 ok: no offer, naive time = UTC
        ",217,,79990000003,c@example.com\n"  # 4 id missing
        "700003,abc,,79990000004,d@example.com\n"  # 5 offer
        "700004,217,yesterday,79990000005,e@example.com\n"  # 6 submitted_at
        "bad id!,217,,79990000006,f@example.com\n"  # 7 charset
        "700001,218,,79990000007,g@example.com\n"  # 8 duplicate of line 2
        '700005,217,1768471200,79990000008,"Doe, Jane"\n'  # 9 ok: Unix seconds, quoted comma
        "\n"  # 10 blank: skipped
        "700006,217,,79990000009\n"  # 11 one field short
        '"700007",217,,"7999\n0000010",h@example.com\n'  # 12-13 ok: a quoted newline
        "700008,217,,79990000011,i@example.com\n"  # 14 ok
    )

    result = world.sync(assets=["cpamoe_lead_files"])

    loaded = rows(world)
    assert set(loaded) == {"700001", "700002", "700005", "700007", "700008"}
    assert loaded["700001"]["offer_id"] == 217 and loaded["700002"]["offer_id"] is None
    assert loaded["700002"]["submitted_at"] == datetime(2026, 1, 10, 11, tzinfo=UTC)
    assert loaded["700005"]["submitted_at"] == datetime.fromtimestamp(1768471200, UTC)
    assert all(r["registered_from"] == "batch1.csv" and r["status"] is None for r in loaded.values())

    errors = world.query("SELECT line, error FROM cpamoe_lead_file_errors ORDER BY line")
    assert [line for line, _ in errors] == [4, 5, 6, 7, 8, 11]
    by_line = dict(errors)
    assert "id is missing" in by_line[4]
    assert "offer is not a whole number: abc" in by_line[5]
    assert "submitted_at is not a timestamp: yesterday" in by_line[6]
    assert "id may only contain" in by_line[7]
    assert by_line[8] == "duplicate id 700001: first on line 2"
    assert "expected 5 fields as in the header, got 4" in by_line[11]

    (name, outcome, loaded_n, rejected_n, ignored, stored_errors), = world.query(
        "SELECT file_name, outcome, rows_loaded, rows_rejected, ignored_columns, errors FROM cpamoe_lead_files"
    )
    assert (name, outcome, loaded_n, rejected_n) == ("batch1.csv", "loaded", 5, 6)
    assert '"phone"' in ignored and '"email"' in ignored
    assert '"line":4' in stored_errors.replace(" ", "")

    meta = materialization(result, "cpamoe_lead_files")
    assert meta["rows_loaded"] == 5 and meta["rows_rejected"] == 6
    assert "batch1.csv:4: id is missing" in meta["problems"]
    assert "batch1.csv:11:" in meta["problems"]

    text = warehouse_text(world)
    for personal in ("79990000001", "a@example.com", "Doe, Jane", "0000010"):
        assert personal not in text


def test_register_loads_each_file_once_and_never_half_loads_a_file(world, leads_dir):
    write_csv(leads_dir / "batch1.csv", ["id", "offer"], [["700001", "217"], ["700002", "217"]])
    world.sync(assets=["cpamoe_lead_files"])
    first_runs = world.scalar("SELECT count(*) FROM sync_runs WHERE stream = 'cpamoe_lead_files'")

    result = world.sync(assets=["cpamoe_lead_files"])  # nothing new

    assert materialization(result, "cpamoe_lead_files")["files_already_loaded"] == 1
    assert world.scalar("SELECT count(*) FROM cpamoe_lead_files") == 1
    assert world.scalar("SELECT count(*) FROM sync_runs WHERE stream = 'cpamoe_lead_files'") == first_runs

    write_csv(leads_dir / "batch2.csv", ["ID", "Offer"], [["700001", "217"], ["700003", "217"]])
    write_csv(leads_dir / "wrong_header.csv", ["lead", "offer"], [["700004", "217"]])
    (leads_dir / "copy.csv").write_bytes((leads_dir / "batch1.csv").read_bytes())
    (leads_dir / "huge_field.csv").write_text("id\n700005\n" + "x" * 200_000 + "\n700006\n")
    with (leads_dir / "batch1.csv").open("a", newline="") as f:
        f.write("700007,217\r\n")

    result = world.sync(assets=["cpamoe_lead_files"])

    assert set(rows(world)) == {"700001", "700002", "700003", "700007"}
    files = {
        (r[0], r[1]): r[2:]
        for r in world.query(
            "SELECT file_name, outcome, rows_loaded, rows_rejected, message FROM cpamoe_lead_files "
            "WHERE run_id = ?",
            [result.run_id],
        )
    }
    assert len(files) == 5
    assert files[("batch2.csv", "loaded")][:2] == (1, 1)
    assert files[("wrong_header.csv", "rejected")][:2] == (0, 0)
    assert "no 'id' column in the header line (found: lead, offer)" in files[("wrong_header.csv", "rejected")][2]
    assert "same content as batch1.csv" in files[("copy.csv", "duplicate_file")][2]
    assert "malformed CSV: line 3" in files[("huge_field.csv", "rejected")][2]  # 700005 not loaded
    assert files[("batch1.csv", "loaded")][:2] == (1, 2)
    assert "content changed" in files[("batch1.csv", "loaded")][2]
    errors = world.query(
        "SELECT file_name, line, error FROM cpamoe_lead_file_errors ORDER BY file_name, line"
    )
    assert errors == [
        ("batch1.csv", 2, "id 700001 is already registered (from batch1.csv)"),
        ("batch1.csv", 3, "id 700002 is already registered (from batch1.csv)"),
        ("batch2.csv", 2, "id 700001 is already registered (from batch1.csv)"),
    ]
    warnings = materialization(result, "cpamoe_lead_files")["warning_messages"]
    assert "wrong_header.csv: no 'id' column" in warnings


def test_register_keeps_an_empty_cell_apart_from_a_missing_one(world, leads_dir):
    """A cell the line does not have (no such column, a short line) is null in ``raw``; an empty
    cell is an empty string; a long cell is cut, never dropped."""
    write_csv(leads_dir / "ids_only.csv", ["id"], [["700001"]])
    write_csv(leads_dir / "with_offer.csv", ["submitted_at", "offer", "id"],
              [["", "", "700002"], ["1768471200", "217", "700003"], ["x" * 300, "", "700004"]])

    world.sync(assets=["cpamoe_lead_files"])

    raw = {lead: json.loads(r) for lead, r in world.query("SELECT lead_id, CAST(raw AS VARCHAR) FROM cpamoe_leads")}
    assert set(raw) == {"700001", "700002", "700003"}
    assert raw["700001"]["offer"] is None and raw["700001"]["submitted_at"] is None
    assert raw["700002"]["offer"] == "" and raw["700002"]["submitted_at"] == ""
    assert raw["700003"]["offer"] == "217" and raw["700003"]["submitted_at"] == "1768471200"
    (error,), = world.query("SELECT error FROM cpamoe_lead_file_errors WHERE lead_id = '700004'")
    assert error == "submitted_at is not a timestamp: " + "x" * 40


# -- polling -----------------------------------------------------------------------------------


def test_full_poll_matches_sandbox_truth_and_records_ids_not_found(world, leads_dir):
    ids = register_all(world, leads_dir)

    result = world.sync(assets=ASSETS)

    assert_matches_truth(world)
    got = rows(world)
    now = now_of(world)
    for ghost in GHOSTS:
        r = got[ghost]
        assert (r["found"], r["not_found_at"], r["stage"], r["status"]) == (False, now, None, None)
        assert r["last_checked_at"] == now
    assert world.scalar("SELECT count(*) FROM cpamoe_leads WHERE last_checked_at = ?", [now]) == len(ids)
    # the register's columns survive the poll
    assert {r["offer_id"] for r in got.values()} == {217}
    assert {r["submitted_at"] for r in got.values()} == {datetime(2026, 1, 1, tzinfo=UTC)}

    # at most 50 ids a request, every id asked exactly once
    assert book(world).largest_request == 50 and book(world).oversized_requests == 0
    assert world.sandbox.stats.snapshot()["requests"][ROUTE] == -(-len(ids) // 50)
    assert set(book(world).requests_by_id) == set(ids)
    assert set(book(world).requests_by_id.values()) == {1}

    # one current history interval per found lead; "not found" is no status
    history = world.query("SELECT entity_id, source_status, valid_to FROM status_history WHERE source = 'cpamoe'")
    assert len(history) == len(ids) - len(GHOSTS)
    assert {h[0] for h in history} == set(ids) - set(GHOSTS)
    assert all(h[1] == got[h[0]]["stage"] and h[2] is None for h in history)

    found_check = checks(result)["cpamoe_leads_found"]
    assert not found_check.passed and "ghost-1" in found_check.description
    assert checks(result)["cpamoe_leads_known_statuses"].passed
    assert checks(result)["cpamoe_leads_known_codes"].passed
    meta = materialization(result, "cpamoe_leads")
    assert meta["leads_polled"] == len(ids) and meta["leads_not_found"] == len(GHOSTS)


def test_list_form_response_gives_the_same_rows(world, leads_dir):
    register_all(world, leads_dir)
    book(world).response_form = "list"

    world.sync(assets=ASSETS)

    assert_matches_truth(world)
    assert world.scalar("SELECT count(*) FROM cpamoe_leads WHERE found = false") == len(GHOSTS)
    assert world.scalar("SELECT count(*) FROM quarantine") == 0


def test_second_run_adds_nothing_and_polls_only_open_leads(world, leads_dir):
    ids = register_all(world, leads_dir)
    world.sync(assets=ASSETS)
    snapshot = {t: world.query(f"SELECT * FROM {t} ORDER BY ALL") for t in ("cpamoe_leads", "status_history", "cpamoe_lead_files")}
    final = final_ids(world)
    assert 0 < len(final) < len(ids)
    book(world).requests_by_id.clear()

    world.sync(assets=ASSETS)

    for table, before in snapshot.items():
        assert world.query(f"SELECT * FROM {table} ORDER BY ALL") == before, table
    inserted, updated, unchanged = world.query(
        "SELECT inserted, updated, unchanged FROM sync_runs WHERE stream = 'cpamoe_leads' "
        "ORDER BY finished_at DESC LIMIT 1"
    )[0]
    assert (inserted, updated) == (0, 0) and unchanged == len(ids) - len(final) - len(GHOSTS)
    asked = set(book(world).requests_by_id)
    assert asked == set(ids) - final  # open leads and the ones not found, never a final one


def test_advancing_time_updates_rows_and_history_without_repolling_final_leads(world, leads_dir):
    ids = register_all(world, leads_dir)
    world.sync(assets=ASSETS)
    first = {k: r for k, r in rows(world).items()}
    first_now = now_of(world)
    final_before = final_ids(world)
    book(world).requests_by_id.clear()

    world.advance(days=2)
    world.sync(assets=ASSETS)

    assert_matches_truth(world)
    now = now_of(world)
    truth = book(world).truth()
    changed = {k for k, t in truth.items() if first[k]["stage"] != t["stage"]}
    moved = {k for k, t in truth.items() if first[k]["status_code"] != t["status"]}
    assert changed and moved - changed, "two days should move leads between stages and within one"

    # final leads were not asked for again; every other lead exactly once
    assert not final_before & set(book(world).requests_by_id)
    assert set(book(world).requests_by_id) == set(ids) - final_before
    assert set(book(world).requests_by_id.values()) == {1}

    # a stage change closes the old interval at the observation time and opens a new one
    for lead_id in changed:
        history = world.query(
            "SELECT source_status, valid_from, valid_to FROM status_history "
            "WHERE source = 'cpamoe' AND entity_id = ? ORDER BY valid_from",
            [lead_id],
        )
        assert [h[0] for h in history] == [first[lead_id]["stage"], truth[lead_id]["stage"]]
        assert history[0][2] == now and history[1][1] == now and history[1][2] is None
    assert world.scalar("SELECT count(*) FROM status_history") == len(ids) - len(GHOSTS) + len(changed)

    got = rows(world)
    for lead_id in set(ids) - final_before:
        assert got[lead_id]["last_checked_at"] == now
    for lead_id in final_before:
        assert got[lead_id]["last_checked_at"] == first_now
        assert got[lead_id]["synced_at"] == first[lead_id]["synced_at"]
    # checking a lead that did not change is not a change
    for lead_id in set(ids) - final_before - moved - set(GHOSTS):
        assert got[lead_id]["synced_at"] == first_now and got[lead_id]["row_hash"] == first[lead_id]["row_hash"]
    for ghost in GHOSTS:  # still not found: since the first time, not re-dated
        assert got[ghost]["not_found_at"] == first_now and got[ghost]["synced_at"] == first_now


def test_full_refresh_polls_final_leads_too(world, leads_dir):
    ids = register_all(world, leads_dir)
    world.sync(assets=ASSETS)
    book(world).requests_by_id.clear()

    world.sync(assets=ASSETS, full_refresh=True)

    assert set(book(world).requests_by_id) == set(ids)
    assert world.scalar("SELECT mode FROM sync_runs WHERE stream = 'cpamoe_leads' ORDER BY finished_at DESC LIMIT 1") == "full"


def test_unknown_stage_and_codes_keep_the_row_and_fail_the_checks(world, leads_dir):
    register_all(world, leads_dir, extra=[])
    lead = book(world).by_id["700001"]
    lead.stage_override, lead.status, lead.reason, lead.next_at = "refund", 42, 77, None

    result = world.sync(assets=ASSETS)

    r = rows(world)["700001"]
    assert (r["source_status"], r["stage"], r["status"]) == ("refund", "refund", None)
    assert (r["status_code"], r["status_name"], r["stage_name"]) == (42, None, None)
    assert world.scalar("SELECT count(*) FROM cpamoe_leads") == len(book(world).by_id)
    evaluations = checks(result)
    assert not evaluations["cpamoe_leads_known_statuses"].passed
    assert "refund" in evaluations["cpamoe_leads_known_statuses"].description
    assert not evaluations["cpamoe_leads_known_codes"].passed
    assert "status=42" in evaluations["cpamoe_leads_known_codes"].description
    # a history interval for the raw value all the same
    assert world.scalar(
        "SELECT source_status FROM status_history WHERE source = 'cpamoe' AND entity_id = '700001'"
    ) == "refund"


def test_unknown_fields_kept_in_raw_personal_fields_never_stored(world, leads_dir):
    register_all(world, leads_dir, extra=[])
    book(world).extra_fields = {
        "payout": {"amount": 1250, "currency": "RUB"},
        "phone": "79991234567",
        "email": "jane@example.com",
        "ip": "203.0.113.77",
        "name": "Jane Roe",
    }

    world.sync(assets=ASSETS)

    raw = world.scalar("SELECT raw FROM cpamoe_leads WHERE lead_id = '700001'")
    assert '"payout"' in raw and '"currency"' in raw
    text = warehouse_text(world)
    for personal in ("79991234567", "jane@example.com", "203.0.113.77", "Jane Roe"):
        assert personal not in text


# -- failures and secrets ----------------------------------------------------------------------


def test_list_json_reads_ids_from_the_query_string_only_and_refuses_bad_input_with_the_envelope(world):
    """The sandbox itself, asked over HTTP without our client: ids where the docs put them are
    answered; ids anywhere else are not seen; bad ids get the documented envelope, never a 500."""
    env = world.sandbox.env()
    url = env["CPAMOE_BASE_URL"] + "/ext/list.json"
    auth = f"{env['CPAMOE_USER_ID']}-{env['CPAMOE_API_KEY']}"
    known = sorted(book(world).by_id)[:3]
    noid = {"status": "error", "error": "noid"}
    with httpx.Client(timeout=30) as http:

        def ask(ids: str | None = None, **body) -> object:
            params = {"id": auth} if ids is None else {"id": auth, "ids": ids}
            response = http.post(url, params=params, **body)
            assert response.status_code == 200, response.text
            return response.json()

        # in the query string: answered, the commas percent-encoded or raw as in the docs' example
        assert set(ask(",".join(known))) == set(known)
        assert set(http.post(f"{url}?id={auth}&ids={','.join(known)}").json()) == set(known)
        # in a form or JSON body only: not seen
        assert ask(data={"ids": ",".join(known)}) == noid
        assert ask(json={"ids": ",".join(known)}) == noid
        assert ask(json={"ids": known}) == noid
        # none, more than 50, an empty or malformed one: the whole request is refused
        too_many = ",".join(known + [f"x{i}" for i in range(48)])
        for bad in ["", ",", f"{known[0]},,{known[1]}", f"{known[0]},", f"{known[0]}, {known[1]}", "a b", "x;y",
                    "caf\u00e9", "a" * 65, too_many]:
            assert ask(bad) == noid, bad
        # 50 ids of 64 characters (a 3.4 kB query) are the most a request holds: answered
        assert ask(",".join(f"{i:064d}" for i in range(50))) == []  # none exists: PHP's empty array
    assert book(world).rejected_requests == {"no ids": 4, "more than 50 ids": 1, "malformed id": 8}
    assert book(world).oversized_requests == 1


def test_fifty_ids_of_64_characters_are_polled_in_one_query_string(world, leads_dir):
    long_ids = [f"lead.{i:02d}_" + "x" * 52 + f"-{i:03d}" for i in range(50)]
    assert {len(i) for i in long_ids} == {64}
    for i, lead_id in enumerate(long_ids):  # created at cpa.moe (the sandbox's own add.json logic)
        answer = book(world).add({"id": lead_id, "offer": "217", "phone": f"7999{i:07d}", "ip": "10.0.0.1"})
        assert answer["status"] == "ok"
    write_csv(leads_dir / "long.csv", ["id", "offer"], [[i, "217"] for i in long_ids])

    world.sync(assets=ASSETS)

    (arrival,) = world.sandbox.stats.arrivals_for("/ext/list.json")
    assert arrival.method == "POST"
    assert parse_qs(arrival.query)["ids"] == [",".join(sorted(long_ids))]  # one request, every id in the URL
    assert len(arrival.query) > 50 * 64
    truth = book(world).truth()
    got = rows(world)
    assert set(got) == set(long_ids)
    for lead_id in long_ids:
        assert got[lead_id]["found"] is True
        assert got[lead_id]["stage"] == truth[lead_id]["stage"]
        assert got[lead_id]["status_code"] == truth[lead_id]["status"]


def test_leads_moving_while_syncs_poll_are_caught_up_by_the_next_sync_history_included(world, leads_dir):
    """cpa.moe answers by ids, so no list shifts under a poll; but a lead can move after its batch
    was answered and before the commit. Such a lead is still open in the warehouse, so the next
    sync polls it again: with the switch off, that sync leaves the warehouse equal to the truth,
    and every lead's history is the stages it really went through, in order, none invented."""
    ids = register_all(world, leads_dir)
    leads = book(world)
    start = {lead_id: t["stage"] for lead_id, t in leads.truth().items()}
    leads.record_changes = True
    leads.move_share = 1.0  # every list.json request moves an open lead one status on first

    world.sync(assets=ASSETS)
    moved_first = {lead_id for lead_id, _, _ in leads.moves}
    got, truth = rows(world), leads.truth()
    behind = {k for k in moved_first if got[k]["status_code"] != truth[k]["status"]}
    assert behind, "some leads should have moved after their batch was answered"
    world.advance(hours=8)
    world.sync(assets=ASSETS)  # incremental, leads still moving
    world.advance(hours=8)
    world.sync(assets=ASSETS, full_refresh=True)  # full, leads still moving
    assert len(leads.moves) >= 12

    leads.move_share = 0.0
    moves = len(leads.moves)
    world.sync(assets=ASSETS)

    assert len(leads.moves) == moves
    assert_matches_truth(world)
    assert world.scalar("SELECT count(*) FROM quarantine") == 0
    # history: contiguous, one current interval, and the stages each lead really went through
    true_path: dict[str, list[tuple[float, str]]] = {k: [(float("-inf"), stage)] for k, stage in start.items()}
    for at, lead_id, _, stage in leads.changes:
        if true_path[lead_id][-1][1] != stage:
            true_path[lead_id].append((at, stage))
    history: dict[str, list[tuple]] = {}
    for entity_id, stage, valid_from, valid_to in world.query(
        "SELECT entity_id, source_status, valid_from, valid_to FROM status_history "
        "WHERE source = 'cpamoe' ORDER BY entity_id, valid_from"
    ):
        history.setdefault(entity_id, []).append((stage, valid_from, valid_to))
    assert set(history) == set(ids) - set(GHOSTS)
    for lead_id, intervals in history.items():
        stages = [stage for stage, _, _ in intervals]
        assert stages[-1] == truth_stage(leads, lead_id) and intervals[-1][2] is None, lead_id
        assert all(a[2] == b[1] for a, b in zip(intervals, intervals[1:], strict=False)), lead_id
        assert all(a != b for a, b in zip(stages, stages[1:], strict=False)), lead_id
        # each observed stage is one the lead was in by then, after the one observed before it
        position = 0
        for stage, valid_from, _ in intervals:
            while position < len(true_path[lead_id]) and not (
                true_path[lead_id][position][1] == stage and true_path[lead_id][position][0] <= valid_from.timestamp()
            ):
                position += 1
            assert position < len(true_path[lead_id]), (lead_id, stages, true_path[lead_id])
            position += 1
    # the switch did change stages, and those changes are in the history
    assert any(len(history.get(lead_id, [])) > 1 for lead_id, _, _ in leads.moves)


def truth_stage(leads, lead_id: str) -> str:
    return leads.stage(leads.by_id[lead_id])


def test_internal_error_in_http_200_is_retried_not_read_as_empty(world, leads_dir):
    register_all(world, leads_dir)
    world.sandbox.set_faults(rate=1.0, kinds=["error_200"], max_faults=3, retry_after=0, only=["list.json"])

    world.sync(assets=ASSETS)

    assert world.sandbox.faults.injected == {"error_200": 3}
    assert_matches_truth(world)
    assert world.scalar("SELECT retries FROM sync_runs WHERE stream = 'cpamoe_leads'") == 3


def test_failed_poll_commits_nothing_and_the_next_run_catches_up(world, leads_dir):
    register_all(world, leads_dir)
    world.sync(assets=ASSETS)
    tables = ("cpamoe_leads", "status_history", "sync_state", "sync_runs", "quarantine")
    snapshot = {t: world.query(f"SELECT * FROM {t} ORDER BY ALL") for t in tables}

    world.advance(days=2)
    world.sandbox.set_faults(rate=1.0, kinds=["error_200"], retry_after=0, only=["list.json"], seed=3)
    result = world.sync(assets=ASSETS, raise_on_error=False)

    assert not result.success
    message = result.failure_data_for_node("cpamoe_leads").error.to_string()
    assert "error 'db': internal error at cpa.moe" in message and "gave up after" in message
    for table, before in snapshot.items():
        assert world.query(f"SELECT * FROM {table} ORDER BY ALL") == before, table

    world.sandbox.set_faults(rate=0)
    world.sync(assets=ASSETS)
    assert_matches_truth(world)


def test_wrong_key_fails_at_once_and_the_key_never_leaks(world, leads_dir, capfd):
    register_all(world, leads_dir)
    key = world.sandbox.env()["CPAMOE_API_KEY"]
    world.sandbox.set_faults(rate=1.0, kinds=["error_200", "500", "timeout", "drop"], max_faults=4, retry_after=0, slow_seconds=3)
    good = world.sync(assets=ASSETS)

    wrong = "wrong-cpamoe-key-5d2e"
    world.sandbox.set_faults(rate=0)
    world.sandbox.stats.reset()
    world.monkeypatch.setattr(world, "env", lambda: {**type(world).env(world), "CPAMOE_API_KEY": wrong})
    bad = world.sync(assets=["cpamoe_leads"], raise_on_error=False)

    assert not bad.success
    message = bad.failure_data_for_node("cpamoe_leads").error.to_string()
    assert "error 'security'" in message and "CPAMOE_USER_ID or CPAMOE_API_KEY" in message
    assert world.sandbox.stats.snapshot()["requests"][ROUTE] <= 4  # no retry storm: the first failure ends the run

    events = "\n".join(
        f"{e.message} {e.event_specific_data}" for run in (good, bad) for e in run.all_events
    )
    out, err = capfd.readouterr()
    for secret in (key, wrong, f"4242-{key}"):
        assert secret not in events
        assert secret not in out + err
        assert secret not in warehouse_text(world)


# -- submitting leads ----------------------------------------------------------------------------


def cpamoe_resource(world, **overrides) -> CpamoeResource:
    env = world.sandbox.env()
    fields = {
        "base_url": env["CPAMOE_BASE_URL"],
        "user_id": env["CPAMOE_USER_ID"],
        "api_key": env["CPAMOE_API_KEY"],
        **overrides,
    }
    return CpamoeResource(**fields)


def test_submit_lead_records_the_ids_never_the_customer(world, leads_dir):
    warehouse = WarehouseResource(path=str(world.warehouse_path)).open()
    cpamoe = cpamoe_resource(world)

    auto = submit_lead(
        cpamoe, warehouse, offer=217, phone="77000000123", ip="198.51.100.23",
        name="John Doe", email="john@example.com", country="kz",
    )
    ours = submit_lead(cpamoe, warehouse, lead_id="shop-42", offer="218", phone="77000000124", ip="198.51.100.24")

    created = book(world).by_id
    assert auto.lead_id in created and created[auto.lead_id].phone == "77000000123"
    assert auto.uid == str(created[auto.lead_id].uid)
    assert ours.lead_id == "shop-42" and ours.uid == str(created["shop-42"].uid)
    got = rows(world)
    assert got[auto.lead_id]["uid"] == auto.uid and got[auto.lead_id]["offer_id"] == 217
    assert got["shop-42"]["offer_id"] == 218 and got["shop-42"]["registered_from"] == "add.json"
    assert got["shop-42"]["submitted_at"] == now_of(world)

    world.sync(assets=ASSETS)  # the submitted leads are polled like any other
    got = rows(world)
    assert got["shop-42"]["stage"] == "wait" and got["shop-42"]["found"] is True
    assert got["shop-42"]["uid"] == ours.uid
    text = warehouse_text(world)
    for personal in ("77000000123", "198.51.100.23", "John Doe", "john@example.com", "77000000124"):
        assert personal not in text


@pytest.mark.parametrize(
    ("fields", "code", "description"),
    [
        ({"offer": 999}, "offer", "offer was not found"),
        ({"offer": 239}, "traffic", "offer is blocked"),
        ({"lead_id": "700001"}, "duplicate", "the order with the same info had already been created"),
        ({"phone": ""}, "nophone", "no phone present"),
        ({"phone": "70000000000"}, "ban", "customer IP or phone is banned"),
    ],
)
def test_submit_lead_names_the_api_error(world, fields, code, description):
    warehouse = WarehouseResource(path=str(world.warehouse_path)).open()
    lead = {"offer": 217, "phone": "77000000999", "ip": "198.51.100.9", "lead_id": "new-1", **fields}

    with pytest.raises(CpamoeError) as raised:
        submit_lead(cpamoe_resource(world), warehouse, **lead)

    assert raised.value.code == code and raised.value.description == description
    assert f"error '{code}': {description}" in str(raised.value)
    assert world.scalar("SELECT count(*) FROM cpamoe_leads") == 0
    assert world.sandbox.stats.snapshot()["requests"]["cpamoe/add"] == 1  # never retried


def test_submit_lead_with_a_wrong_key_is_an_auth_error(world):
    warehouse = WarehouseResource(path=str(world.warehouse_path)).open()

    with pytest.raises(AuthError) as raised:
        submit_lead(cpamoe_resource(world, api_key="not-the-key"), warehouse, offer=217, phone="77000000998", ip="1.2.3.4")

    assert "CPAMOE_API_KEY" in str(raised.value) and "not-the-key" not in str(raised.value)


def test_submit_lead_command(world, capsys):
    from pipelines.cli import main

    ok = main(["submit-lead", "--id", "cli-1", "--offer", "217", "--phone", "77000000555", "--ip", "192.0.2.5", "--name", "Ann Example"])
    out, _ = capsys.readouterr()
    refused = main(["submit-lead", "--offer", "999", "--phone", "77000000556", "--ip", "192.0.2.6"])
    _, err = capsys.readouterr()

    assert ok == 0 and "submitted lead cli-1" in out
    assert refused == 1 and "offer (offer was not found)" in err
    assert world.query("SELECT lead_id, offer_id FROM cpamoe_leads") == [("cli-1", 217)]
    assert "77000000555" not in warehouse_text(world) and "Ann Example" not in warehouse_text(world)
    assert world.sandbox.env()["CPAMOE_API_KEY"] not in out + err
    assert world.scalar("SELECT submitted_at FROM cpamoe_leads") == now_of(world)
