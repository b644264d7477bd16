"""Printing the warehouse for people: the closing summary of ``make run`` and ``affwh query``."""

from __future__ import annotations

import duckdb

from models import metadata
from pipelines.warehouse import Warehouse

SUMMARY_QUERIES = {
    "Earnings by source": (
        "SELECT source, currency, count(*) AS orders, round(sum(earned), 2) AS earned "
        "FROM v_earnings GROUP BY ALL ORDER BY ALL"
    ),
    "Fill rate by source and status": (
        "SELECT source, status, count(*) AS orders, sum(units_ordered) AS ordered, "
        "sum(units_delivered) AS delivered, round(avg(fill_rate), 3) AS avg_fill_rate "
        "FROM v_fill_rate GROUP BY ALL ORDER BY ALL"
    ),
}


def _print_relation(con: duckdb.DuckDBPyConnection, sql: str, max_rows: int = 100) -> None:
    cursor = con.execute(sql)
    if cursor.description is None:
        print("OK")
        return
    columns = [d[0] for d in cursor.description]
    rows = cursor.fetchmany(max_rows + 1)
    cells = [[("NULL" if v is None else str(v)) for v in row] for row in rows[:max_rows]]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    print(line)
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    if len(rows) > max_rows:
        print(f"... (more than {max_rows} rows)")


def run_query(location: str, sql: str, max_rows: int = 100) -> int:
    """Run ``sql`` read-only against the warehouse and print the result as a table."""
    try:
        with Warehouse(location, lock_timeout=30).connect(read_only=True) as con:
            _print_relation(con, sql, max_rows)
    except duckdb.Error as exc:
        print(f"error: {exc}")
        return 1
    return 0


def print_summary(location: str) -> None:
    with Warehouse(location, lock_timeout=60).connect(read_only=True) as con:
        existing = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        print("Rows per table")
        for name in sorted(metadata.tables):
            if name in existing:
                count = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
                print(f"  {name:<32} {count:>10}")
        for title, sql in SUMMARY_QUERIES.items():
            print(f"\n{title}")
            try:
                _print_relation(con, sql, max_rows=20)
            except duckdb.Error as exc:
                print(f"  (unavailable: {exc})")
