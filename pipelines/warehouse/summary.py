"""Printing the warehouse for people: the closing summary of ``make run`` and ``affwh query``."""

from __future__ import annotations

import re
import sys
from decimal import Decimal
from pathlib import Path

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


# Money columns (models' ``money()`` and the views' sums: earned, amount, price_per_click, arpu,
# estimated_gp, ...) print with two decimals; other numbers as they are.
MONEY_NAME = re.compile(r"earn|amount|price|payout|payment|arpu|revenue|cost|(^|_)(gp|cpc|sum|total)($|_)")


def _cell(value: object, money: bool) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, Decimal | float) and money:
        return f"{value:.2f}"
    if isinstance(value, float):
        return f"{value:.6f}".rstrip("0").rstrip(".") if abs(value) < 1e15 else f"{value:g}"
    return str(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float | Decimal) and not isinstance(value, bool)


def format_table(columns: list[str], rows: list[tuple]) -> list[str]:
    """Lines of a plain-text table: numbers right-aligned, money with two decimals, NULL spelled out."""
    money = [bool(MONEY_NAME.search(c.lower())) for c in columns]
    cells = [[_cell(v, money[i]) for i, v in enumerate(row)] for row in rows]
    numeric = [
        any(_is_number(r[i]) for r in rows) and all(r[i] is None or _is_number(r[i]) for r in rows)
        for i in range(len(columns))
    ]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]

    def line(values: list[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric, strict=True)).rstrip()

    return [line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)]


def _print_relation(con: duckdb.DuckDBPyConnection, sql: str, max_rows: int = 100) -> None:
    cursor = con.execute(sql)
    if cursor.description is None:
        print("OK")
        return
    columns = [d[0] for d in cursor.description]
    rows = cursor.fetchmany(max_rows + 1)
    for line in format_table(columns, rows[:max_rows]):
        print(line)
    if len(rows) > max_rows:
        print(f"... (more than {max_rows} rows; --max-rows to show more)")


def run_query(location: str, sql: str, max_rows: int = 100) -> int:
    """Run ``sql`` read-only against the warehouse and print the result as a table (an error on
    stderr, exit status 1)."""
    if Warehouse(location).is_local_file and not Path(location).exists():
        print(f"error: no warehouse at {location} yet: `make run` creates it", file=sys.stderr)
        return 1
    try:
        with Warehouse(location, lock_timeout=30).connect(read_only=True) as con:
            _print_relation(con, sql, max_rows)
    except duckdb.Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def print_summary(location: str, first_sync: bool = False) -> None:
    """The closing summary of ``make run``: rows per table, the business views, and what needs a
    look (quarantined records) with where to see more."""
    with Warehouse(location, lock_timeout=60).connect(read_only=True) as con:
        existing = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        if first_sync:
            print("First sync of this warehouse: it was empty before this run, so every row below is new.\n")
        print("Rows per table")
        for name in sorted(metadata.tables):
            if name in existing:
                count = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
                print(f"  {name:<32} {count:>10,}")
        for title, sql in SUMMARY_QUERIES.items():
            print(f"\n{title}")
            try:
                _print_relation(con, sql, max_rows=40)
            except duckdb.Error as exc:
                print(f"  (unavailable: {exc})")
        quarantined = (
            con.execute("SELECT stream, count(*) FROM quarantine GROUP BY ALL ORDER BY stream").fetchall()
            if "quarantine" in existing else []
        )
    if quarantined:
        total = sum(n for _, n in quarantined)
        per_stream = ", ".join(f"{stream} {n:,}" for stream, n in quarantined)
        print(
            f"\n{total:,} records are in quarantine ({per_stream}): they could not be typed and were not "
            "loaded.\n  Reasons: `make status`; the records: "
            '`make query SQL="SELECT stream, reason, entity_id FROM quarantine"`'
        )
    print("\nPer stream, what this sync did: `make status` (`affwh status`).")
