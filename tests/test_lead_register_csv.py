"""The lead register stages a file's lines one of two ways (pipelines/feeds/cpamoe_register.py):
split by DuckDB when the file has no quote, lone CR, NUL or overlong line, else parsed by Python's
csv reader. Both must stage exactly the same rows: line numbers, field counts and kept cells."""

from __future__ import annotations

import duckdb
import pytest

from pipelines.feeds import cpamoe_register as register

# Lines only a careful split gets right: CRLF and LF mixed, blank lines, a whitespace-only line,
# short and long lines, empty cells, a BOM, bytes that are not UTF-8, a trailing line without LF.
PLAIN = (
    "\ufeffID,phone,Offer,submitted_at\r\n"
    "700001,7999,217,2026-01-10T10:00:00Z\r\n"
    "\r\n"
    "700002,,,\n"
    "\n"
    " \n"
    "700003,7999\n"
    "700004,7999,218,1768471200,extra,cells\n"
    ",,,\n"
    "70\xe90005,1,2,3\n"
    "\t700006\t,x,  219 ,\n"
    "700007,x,220,"
).encode("utf-8").replace("\xe9".encode("utf-8"), b"\xe9")  # a Latin-1 byte: not UTF-8


def staged(path, monkeypatch, *, way: str, chunk: int) -> list[tuple]:
    """csv_rows as ``stage_csv`` stages the file: ``split`` (the csv reader must not be used),
    ``reader`` (splitting refused) or ``either``."""

    def refuse(*_args, **_kwargs):
        raise register._NeedsCsvReader

    def not_the_reader(*_args, **_kwargs):
        raise AssertionError("a plain file went to the csv reader")

    with monkeypatch.context() as m:
        m.setattr(register, "PLAIN_CHUNK_CHARS", chunk)
        if way == "reader":
            m.setattr(register, "_stage_plain_lines", refuse)
        elif way == "split":
            m.setattr(register, "_stage_with_csv_reader", not_the_reader)
        con = duckdb.connect()
        con.execute(register.STAGING_DDL)
        parsed = register.stage_csv(con, path, path.name, path.parent / "scratch.csv")
        rows = con.execute("SELECT * FROM csv_rows ORDER BY line").fetchall()
    assert parsed.rows == len(rows)
    return [(parsed.expected_fields, parsed.ignored_columns, parsed.sha256), *rows]


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
@pytest.mark.parametrize("chunk", [7, 64, 4_000_000])
def test_split_lines_stage_what_the_csv_reader_stages(tmp_path, monkeypatch, delimiter, chunk):
    path = tmp_path / "leads.csv"
    path.write_bytes(PLAIN.replace(b",", delimiter.encode()) if delimiter != "\t" else PLAIN.replace(b",", b"\t"))

    by_split = staged(path, monkeypatch, way="split", chunk=chunk)
    by_reader = staged(path, monkeypatch, way="reader", chunk=chunk)

    assert by_split == by_reader
    lines = [row[1] for row in by_split[1:]]
    assert lines == [2, 4, 6, 7, 8, 9, 10, 11, 12]  # blank lines 3 and 5 skipped, still counted


def test_a_quote_anywhere_sends_the_whole_file_to_the_csv_reader(tmp_path, monkeypatch):
    """A quoted field with a line break in the last chunk: the lines split before it are staged
    again by the csv reader, once, with the quoted record on its first line."""
    path = tmp_path / "leads.csv"
    path.write_text("id,phone\n700001,1\n700002,2\n700003,\"7999\n000\"\n700004,4\n")

    rows = staged(path, monkeypatch, way="either", chunk=8)[1:]

    assert [(r[1], r[2], r[3]) for r in rows] == [(2, 2, "700001"), (3, 2, "700002"), (4, 2, "700003"), (6, 2, "700004")]
