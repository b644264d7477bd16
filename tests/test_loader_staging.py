"""The loader stages raw page bodies as NDJSON chunk files and types them in chunks (issue 14).

Pages come from the sandbox over real HTTP and go through the one stream driver
(:func:`pipelines.feeds.run.run_stream`), as every feed's do. What must hold: every record of
every page is staged once, whatever the page's layout (a pretty-printed body has raw line breaks,
and strings may hold escaped ones); chunk files do not outlive their typing; a chunk that cannot
be read fails the sync before anything is written (warehouse and cursor as they were).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from pathlib import Path

import httpx
import pytest

from pipelines.feeds.onlytraffic_marketer import CPC_ORDERS
from pipelines.feeds.run import Fetched, run_stream
from pipelines.page import Page
from pipelines.sandbox.onlytraffic_marketer import API_KEY
from pipelines.sandbox.server import Sandbox
from pipelines.warehouse import Warehouse

STATUSES = ("waiting", "completed")


def _pages(base_url: str, limit: int = 20) -> list[Page]:
    """Every CPC order page of the tiny world, read from the sandbox as the client reads them."""
    pages = []
    with httpx.Client(base_url=base_url, headers={"authorization": API_KEY}) as client:
        for status in STATUSES:
            offset = 0
            while True:
                response = client.get("/api/marketer/cpc/orders", params={"status": status, "offset": offset, "limit": limit})
                response.raise_for_status()
                records = response.json()["data"]
                if not records:
                    break
                pages.append(Page(response.content, len(records), listed_status=status, label=f"cpc:{status}"))
                offset += len(records)
    return pages


@pytest.fixture
def sandbox() -> Sandbox:
    with Sandbox(scale="tiny") as sb:
        yield sb


@pytest.fixture
def warehouse(tmp_path: Path) -> Warehouse:
    wh = Warehouse(str(tmp_path / "warehouse.duckdb"))
    wh.ensure_schema()
    return wh


def _scalar(warehouse: Warehouse, sql: str):
    with warehouse.connect(read_only=True) as con:
        return con.execute(sql).fetchone()[0]


def test_pages_are_staged_as_ndjson_chunks_and_typed_once(sandbox: Sandbox, warehouse: Warehouse) -> None:
    pages = _pages(sandbox.env()["ONLYTRAFFIC_MARKETER_BASE_URL"])
    expected = sum(p.records for p in pages)
    ids = {r["order_id"] for p in pages for r in json.loads(p.body)["data"]}
    assert len(pages) >= 4 and len(ids) == expected
    seen: dict[str, object] = {}

    def fetch(load) -> Fetched:
        for page in pages[:3]:
            load.add(page)
        # bodies are on disk in the run's staging folder, not in Python, until a chunk is typed
        seen["chunk_files_while_fetching"] = sorted(p.name for p in load._dir.glob("pages-*.ndjson"))
        for page in pages[3:]:
            load.add(page)
        seen["recs"] = load.query("SELECT count(*), count(DISTINCT seq) FROM recs")[0]
        seen["left_after_flush"] = list(load._dir.glob("pages-*.ndjson"))
        return Fetched(cursor={"test": 1}, mode="full")

    report = run_stream(warehouse=warehouse, stream="cpc_orders", specs=[CPC_ORDERS], run_id="r1", fetch=fetch,
                        batch_records=45)  # several chunks
    assert seen["chunk_files_while_fetching"], "the first pages should sit in a chunk file"
    assert seen["recs"] == (expected, len(pages))
    assert seen["left_after_flush"] == []  # typed chunks are removed
    assert report.result.primary.inserted == expected
    assert _scalar(warehouse, "SELECT count(*) FROM cpc_orders") == expected
    assert _scalar(warehouse, "SELECT count(*) FROM quarantine") == 0


def test_a_record_read_twice_is_one_row_holding_the_copy_read_last(sandbox: Sandbox, warehouse: Warehouse) -> None:
    """``cur_<table>`` picks one row per key without copying the records; the row written (its
    ``raw`` too, which the merge reads from the typed row) is the copy fetched last, and a record
    of the wrong type is quarantined, never written."""
    pages = _pages(sandbox.env()["ONLYTRAFFIC_MARKETER_BASE_URL"])
    first = json.loads(pages[0].body)["data"]
    twice, bad = first[0]["order_id"], first[1]["order_id"]
    again = json.loads(pages[0].body)
    again["data"] = [dict(first[0], note="read last")]
    broken = json.loads(pages[0].body)
    broken["data"] = [dict(r, of_account_id="many") if r["order_id"] == bad else r for r in first]
    staged = [Page(json.dumps(broken), len(first), pages[0].listed_status, pages[0].label), *pages[1:],
              Page(json.dumps(again), 1, pages[0].listed_status, pages[0].label)]
    expected = {r["order_id"] for p in pages for r in json.loads(p.body)["data"]} - {bad}

    report = run_stream(warehouse=warehouse, stream="cpc_orders", specs=[CPC_ORDERS], run_id="r1",
                        fetch=lambda load: [load.add(p) for p in staged] and Fetched(cursor={}, mode="full"))

    with warehouse.connect(read_only=True) as con:
        rows = dict(con.execute("SELECT order_id, raw->>'note' FROM cpc_orders").fetchall())
        quarantined = con.execute("SELECT entity_id FROM quarantine").fetchall()
    assert set(rows) == expected and report.result.primary.inserted == len(expected)
    assert rows[twice] == "read last" and not any(note for oid, note in rows.items() if oid != twice)
    assert quarantined == [(bad,)]


@pytest.mark.parametrize("broken_first", [True, False], ids=["on-the-second-connection", "on-the-batch-thread"])
def test_a_spec_that_fails_to_type_fails_the_sync_whichever_connection_typed_it(
    sandbox: Sandbox, warehouse: Warehouse, broken_first: bool
) -> None:
    """A batch's first spec is typed on a second connection beside the others: its error fails
    the sync like any other, nothing is written and no typing thread is left behind."""
    pages = _pages(sandbox.env()["ONLYTRAFFIC_MARKETER_BASE_URL"])
    broken = dataclasses.replace(
        CPC_ORDERS, table="cpc_orders_broken",
        records_sql="SELECT seq, pos, listed_status, CAST(CAST('not a number' AS INTEGER) AS JSON) AS rec FROM recs",
    )
    specs = [broken, CPC_ORDERS] if broken_first else [CPC_ORDERS, broken]
    threads_before = set(threading.enumerate())
    seen = {}

    def fetch(load) -> Fetched:
        for page in pages:
            load.add(page)
        try:
            load.flush()  # waits for the batches' typing: the error is raised here, not at commit
        except Exception as exc:
            seen["flush"] = str(exc)
            raise
        return Fetched(cursor={"run": 1}, mode="full")

    with pytest.raises(Exception, match="not a number"):
        run_stream(warehouse=warehouse, stream="cpc_orders", specs=specs, run_id="r1", fetch=fetch, batch_records=45)
    assert "not a number" in seen.get("flush", "")

    assert _scalar(warehouse, "SELECT count(*) FROM cpc_orders") == 0
    assert _scalar(warehouse, "SELECT count(*) FROM sync_state WHERE stream = 'cpc_orders'") == 0
    assert not [t for t in set(threading.enumerate()) - threads_before if t.name.startswith(("type-", "stage-"))]


def test_pretty_printed_bodies_and_escaped_line_breaks(sandbox: Sandbox, warehouse: Warehouse) -> None:
    pages = _pages(sandbox.env()["ONLYTRAFFIC_MARKETER_BASE_URL"])
    reshaped = []
    for page in pages:
        body = json.loads(page.body)
        for record in body["data"]:
            record["note"] = "line one\nline two\r\n\"quoted\""  # an unknown field: kept in raw
        # raw line breaks between tokens, as a pretty-printing server sends them
        reshaped.append(Page(json.dumps(body, indent=2), page.records, page.listed_status, page.label))
    assert b"\n" in reshaped[0].body.encode()

    def fetch(load) -> Fetched:
        for page in reshaped:
            load.add(page)
        return Fetched(cursor=None, mode="full")

    run_stream(warehouse=warehouse, stream="cpc_orders", specs=[CPC_ORDERS], run_id="r1", fetch=fetch, batch_records=30)
    expected = sum(p.records for p in pages)
    assert _scalar(warehouse, "SELECT count(*) FROM cpc_orders") == expected
    notes = _scalar(warehouse, "SELECT count(*) FROM cpc_orders WHERE raw->>'note' = 'line one\nline two\r\n\"quoted\"'")
    assert notes == expected


def test_a_chunk_that_cannot_be_read_fails_the_sync_and_writes_nothing(sandbox: Sandbox, warehouse: Warehouse) -> None:
    pages = _pages(sandbox.env()["ONLYTRAFFIC_MARKETER_BASE_URL"])

    def good(load) -> Fetched:
        for page in pages:
            load.add(page)
        return Fetched(cursor={"generation": 1}, mode="full")

    run_stream(warehouse=warehouse, stream="cpc_orders", specs=[CPC_ORDERS], run_id="r1", fetch=good)
    rows = _scalar(warehouse, "SELECT count(*) FROM cpc_orders")
    cursor = _scalar(warehouse, "SELECT cursor FROM sync_state WHERE stream = 'cpc_orders'")

    def broken(load) -> Fetched:
        for page in pages[:2]:
            load.add(page)
        load.add(Page(b'{"data": [{"order_id": "x"', 1, "completed", "cpc:completed"))  # truncated body
        for page in pages[2:]:
            load.add(page)
        return Fetched(cursor={"generation": 2}, mode="full")

    with pytest.raises(Exception):
        run_stream(warehouse=warehouse, stream="cpc_orders", specs=[CPC_ORDERS], run_id="r2", fetch=broken,
                   batch_records=20)
    assert _scalar(warehouse, "SELECT count(*) FROM cpc_orders") == rows
    assert _scalar(warehouse, "SELECT cursor FROM sync_state WHERE stream = 'cpc_orders'") == cursor
    assert _scalar(warehouse, "SELECT count(*) FROM sync_runs WHERE run_id = 'r2' AND finished_at IS NOT NULL "
                              "AND inserted > 0") == 0


def _edited(pages: list[Page], note: str, share: float = 1.0) -> list[Page]:
    """The same pages with an unknown field added to the first ``share`` of each page's records
    (kept in raw, so those rows change)."""
    out = []
    for page in pages:
        body = json.loads(page.body)
        for record in body["data"][: round(len(body["data"]) * share)]:
            record["note"] = note
        out.append(Page(json.dumps(body), page.records, page.listed_status, page.label))
    return out


def _sync(warehouse: Warehouse, pages: list[Page], run_id: str, steps=()) -> None:
    def fetch(load) -> Fetched:
        for page in pages:
            load.add(page)
        return Fetched(cursor={"run": run_id}, mode="full", steps=list(steps))

    run_stream(warehouse=warehouse, stream="cpc_orders", specs=[CPC_ORDERS], run_id=run_id, fetch=fetch)


def _table_state(warehouse: Warehouse) -> dict:
    with warehouse.connect(read_only=True) as con:
        return {
            "ddl": con.execute("SELECT sql FROM duckdb_tables() WHERE table_name = 'cpc_orders'").fetchone()[0],
            "constraints": sorted(map(str, con.execute(
                "SELECT constraint_type, constraint_column_names FROM duckdb_constraints() "
                "WHERE table_name = 'cpc_orders'").fetchall())),
            "indexes": con.execute("SELECT index_name FROM duckdb_indexes() WHERE table_name = 'cpc_orders'").fetchall(),
            "rows": con.execute("SELECT count(*), count(DISTINCT order_id) FROM cpc_orders").fetchone(),
            "first_seen": dict(con.execute("SELECT order_id, first_seen_at FROM cpc_orders").fetchall()),
            "notes": dict(con.execute("SELECT coalesce(raw->>'note', ''), count(*) FROM cpc_orders GROUP BY 1").fetchall()),
        }


def test_replacing_most_rows_rebuilds_the_table_with_the_same_schema_and_rows(sandbox: Sandbox, warehouse: Warehouse,
                                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Past REBUILD_SHARE of a table changed, the loader writes the table afresh (its own DDL, in
    the commit's transaction) instead of delete + insert: the same table comes out, with its
    primary key, and views over it keep working. Below the share, and whenever the table has an
    index of a user's, rows are replaced in place as before (the index survives)."""
    pages = _pages(sandbox.env()["ONLYTRAFFIC_MARKETER_BASE_URL"])
    total = sum(p.records for p in pages)
    _sync(warehouse, pages, "r1")
    with warehouse.connect() as con:
        con.execute("CREATE VIEW my_orders AS SELECT order_id, raw->>'note' AS note FROM cpc_orders")
    before = _table_state(warehouse)

    caplog.set_level(logging.INFO, logger="pipelines.warehouse.loader")
    _sync(warehouse, _edited(pages, "v2"), "r2")  # every row changed: rebuilt
    assert "cpc_orders: %d of its" % total in caplog.text and "written afresh" in caplog.text
    caplog.clear()
    after = _table_state(warehouse)
    assert {k: after[k] for k in ("ddl", "constraints", "indexes", "rows")} == \
           {k: before[k] for k in ("ddl", "constraints", "indexes", "rows")}
    assert after["rows"] == (total, total)
    assert "raw JSON USING COMPRESSION ZSTD" in after["ddl"]  # the column's compression too
    assert after["first_seen"] == before["first_seen"]  # carried over from the old rows
    assert after["notes"] == {"v2": total}
    assert _scalar(warehouse, "SELECT count(*) FROM my_orders WHERE note = 'v2'") == total
    with warehouse.connect() as con, pytest.raises(Exception, match="(?i)duplicate key|primary key|constraint"):
        con.execute("INSERT INTO cpc_orders SELECT * FROM cpc_orders LIMIT 1")  # the key still holds

    with warehouse.connect() as con:
        con.execute("CREATE INDEX cpc_orders_by_status ON cpc_orders (status)")
    _sync(warehouse, _edited(pages, "v3"), "r3")  # every row changed, but a user's index: in place
    kept = _table_state(warehouse)
    assert "written afresh" not in caplog.text
    assert kept["indexes"] == [("cpc_orders_by_status",)]
    assert kept["rows"] == (total, total) and kept["notes"] == {"v3": total}
    assert kept["first_seen"] == before["first_seen"]


def test_a_rebuild_that_fails_later_in_the_commit_leaves_the_table_as_it_was(sandbox: Sandbox, warehouse: Warehouse) -> None:
    from pipelines.warehouse.loader import CommitStep

    pages = _pages(sandbox.env()["ONLYTRAFFIC_MARKETER_BASE_URL"])
    _sync(warehouse, pages, "r1")
    _sync(warehouse, _edited(pages, "few", share=0.1), "r1b")  # below REBUILD_SHARE: in place
    before = _table_state(warehouse)
    assert before["notes"].get("few")

    def boom(con, now):
        raise RuntimeError("a commit step failed after the merge")

    with pytest.raises(RuntimeError, match="after the merge"):
        _sync(warehouse, _edited(pages, "v2"), "r2", steps=[CommitStep("boom", boom)])
    assert _table_state(warehouse) == before
    assert _scalar(warehouse, "SELECT cursor->>'run' FROM sync_state WHERE stream = 'cpc_orders'") == "r1b"
    with warehouse.connect(read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    assert not any(t.endswith("__rebuilt") for t in tables)


def _swap_pages(base_url: str) -> list[Page]:
    """Every swap order page of the tiny world, in every status, as the Studio client reads them."""
    from pipelines.sandbox.onlytraffic_studio import API_KEY as STUDIO_KEY

    pages = []
    with httpx.Client(base_url=base_url, headers={"x-api-key": STUDIO_KEY}) as client:
        for status in ("waiting", "accepted", "completed", "cancelled", "rejected"):
            number = 1
            while True:
                response = client.get("/swaps/orders", params={"status": status, "page": number, "page_size": 5})
                response.raise_for_status()
                records = response.json()["data"]
                if not records:
                    break
                pages.append(Page(response.content, len(records), listed_status=status, label=f"swap:{status}"))
                number += 1
    return pages


def test_swap_sides_typed_in_halves_after_the_fetch_are_the_rows_typed_during_it(sandbox: Sandbox, tmp_path: Path) -> None:
    """Chunks still waiting when the fetch is over are typed with both connections busy (the
    sides split in two halves by ``pos``): the warehouse gets exactly the rows it gets when every
    chunk is typed while pages still arrive, one spec per connection."""
    from pipelines.feeds.onlytraffic_studio import SWAP_SPECS

    pages = _swap_pages(sandbox.env()["ONLYTRAFFIC_STUDIO_BASE_URL"])
    orders = sum(p.records for p in pages)
    assert len(pages) >= 6 and orders >= 20

    def load_all(folder: str, typed_during_fetch: bool) -> tuple[dict[str, list[tuple]], bool]:
        warehouse = Warehouse(str(tmp_path / folder / "warehouse.duckdb"))
        warehouse.ensure_schema()
        seen = {}

        def fetch(load) -> Fetched:
            for page in pages:
                load.add(page)
                if typed_during_fetch:
                    for future in list(load._pending):  # this chunk typed before the next page comes
                        future.result()
            load.flush()
            seen["halves"] = load.query(
                "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'records_swap_order_sides'"
            )[0][0] > 0
            return Fetched(cursor={}, mode="full")

        run_stream(warehouse=warehouse, stream="swap_orders", specs=list(SWAP_SPECS), run_id="r1", fetch=fetch,
                   key_path="$.order_id", keep_records=False, batch_pages=1)
        with warehouse.connect(read_only=True) as con:
            rows = {
                table: sorted(con.execute(f"SELECT * EXCLUDE (first_seen_at, synced_at) FROM {table}").fetchall(), key=str)
                for table in ("swap_orders", "swap_order_sides")
            }
        return rows, seen["halves"]

    during, split_during = load_all("during", typed_during_fetch=True)
    after, split_after = load_all("after", typed_during_fetch=False)
    assert not split_during and split_after  # each way was taken
    assert len(during["swap_orders"]) == orders and len(during["swap_order_sides"]) == 2 * orders
    assert after == during
