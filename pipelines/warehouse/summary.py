"""Printing the warehouse for people: the closing summary of ``make run`` and ``affwh query``."""

from __future__ import annotations

import duckdb

from models import metadata
from pipelines.warehouse import Warehouse

SUMMARY_QUERIES = {
    "v_summary: orders, units and earnings by source and status": (
        "SELECT source, status, currency, orders, units_ordered, units_delivered, "
        "round(earned, 2) AS earned FROM v_summary ORDER BY source, status, currency"
    ),
    "v_earnings_daily: the last days": (
        "SELECT source, currency, day, round(earned, 2) AS earned FROM v_earnings_daily "
        "ORDER BY day DESC, source, currency LIMIT 10"
    ),
    "v_order_alerts: what needs a person": (
        "SELECT alert, source, count(*) AS alerts, min(due_at) AS first_due FROM v_order_alerts "
        "GROUP BY ALL ORDER BY alert, source"
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
                _print_relation(con, sql, max_rows=40)
            except duckdb.Error as exc:
                print(f"  (unavailable: {exc})")
