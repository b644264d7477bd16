"""What the report shows, read from the warehouse in one short read-only visit.

Every figure is aggregated in DuckDB (one row per chart trace or table row, never one per order),
so the page costs the same at any warehouse size. The connection is read-only and closed before
the page is built: a sync waiting for the write lock waits for these few queries only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import duckdb

from models.status import OPEN_STATUSES, LifecycleStatus, sql_list
from pipelines.warehouse import Warehouse

EARNINGS_DAYS = 90
MAX_ALERT_ROWS = 200  # the table lists the earliest due; the counts above it cover every alert

# The days are counted back from the warehouse's "as of" time (the last sync, on the sandbox's
# simulated clock when it is the source), not the wall clock: a report of an old warehouse
# still shows its last 90 days.
EARNINGS_SQL = f"""
WITH clock AS (SELECT CAST(as_of AS DATE) AS today FROM v_warehouse_clock)
SELECT e.source, e.currency,
       list(e.day ORDER BY e.day) AS days,
       list(round(e.earned, 2) ORDER BY e.day) AS earned,
       round(sum(e.earned), 2) AS total
FROM v_earnings_daily AS e, clock AS c
WHERE e.day > c.today - {EARNINGS_DAYS} AND e.day <= c.today
GROUP BY ALL
ORDER BY e.currency, e.source
"""

# Orders that were accepted (delivery started or finished): a waiting, rejected or cancelled
# order delivers nothing by design and would only pull the rate towards zero. An order whose raw
# status is unknown (status NULL) is counted.
NOT_ACCEPTED = (LifecycleStatus.PENDING.value, LifecycleStatus.REJECTED.value, LifecycleStatus.CANCELLED.value)
FILL_RATE_SQL = f"""
SELECT source,
       count(*) AS orders,
       sum(units_ordered) AS units_ordered,
       sum(units_delivered) AS units_delivered,
       round(sum(units_delivered) / nullif(sum(units_ordered), 0), 4) AS fill_rate,
       round(median(fill_rate), 4) AS median_order_fill_rate
FROM v_fill_rate
WHERE fill_rate IS NOT NULL
  AND coalesce(CAST(status AS VARCHAR), '') NOT IN ({sql_list(NOT_ACCEPTED)})
GROUP BY source
ORDER BY source
"""

OPEN_ORDERS_SQL = f"""
SELECT source, CAST(status AS VARCHAR) AS status, count(*) AS orders
FROM v_earnings
WHERE CAST(status AS VARCHAR) IN ({sql_list(OPEN_STATUSES)})
GROUP BY ALL
ORDER BY source, status
"""

ALERT_COUNTS_SQL = """
SELECT alert, source, count(*) AS alerts, min(due_at) AS first_due
FROM v_order_alerts
GROUP BY ALL
ORDER BY alert, source
"""

ALERTS_SQL = f"""
SELECT alert, source, order_id, detail, due_at
FROM v_order_alerts
ORDER BY due_at, source, order_id
LIMIT {MAX_ALERT_ROWS}
"""

# The cursor is left out: it is the sync's bookkeeping, not something a reader acts on.
SYNCS_SQL = """
SELECT s.stream, r.mode, s.last_synced_at, r.finished_at - r.started_at AS duration,
       r.records_received, r.inserted, r.updated, r.unchanged, r.quarantined,
       s.last_full_walk_at
FROM sync_state AS s
LEFT JOIN sync_runs AS r ON r.run_id = s.last_run_id AND r.stream = s.stream
ORDER BY s.stream
"""


@dataclass
class Table:
    """Rows of one query with their column names; ``missing`` says why there are none to show
    when the query could not run (a view not built yet)."""

    columns: list[str] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)
    missing: str | None = None

    def records(self) -> list[dict]:
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


@dataclass
class ReportData:
    location: str
    synced: bool  # False: no sync has committed anything yet (the page says so)
    as_of: datetime | None = None
    earnings: Table = field(default_factory=Table)
    fill_rate: Table = field(default_factory=Table)
    open_orders: Table = field(default_factory=Table)
    alert_counts: Table = field(default_factory=Table)
    alerts: Table = field(default_factory=Table)
    alerts_total: int = 0
    syncs: Table = field(default_factory=Table)


def _table(con: duckdb.DuckDBPyConnection, sql: str) -> Table:
    try:
        cursor = con.execute(sql)
    except duckdb.CatalogException as exc:
        return Table(missing=f"not built yet ({str(exc).splitlines()[0]})")
    return Table([d[0] for d in cursor.description], cursor.fetchall())


def read_report(location: str, lock_timeout: float = 60.0) -> ReportData:
    """Everything the page shows, read read-only. A warehouse no sync has written (no file, no
    schema or no stream in ``sync_state``) gives ``synced=False`` and nothing else."""
    warehouse = Warehouse(location, lock_timeout=lock_timeout)
    if warehouse.is_local_file and not Path(warehouse.location).exists():
        return ReportData(location, synced=False)
    with warehouse.connect(read_only=True) as con:
        try:
            streams = con.execute("SELECT count(*) FROM sync_state").fetchone()[0]
        except duckdb.CatalogException:
            return ReportData(location, synced=False)
        if streams == 0:
            return ReportData(location, synced=False)
        data = ReportData(location, synced=True)
        data.as_of = con.execute("SELECT max(last_synced_at) FROM sync_state").fetchone()[0]
        data.earnings = _table(con, EARNINGS_SQL)
        data.fill_rate = _table(con, FILL_RATE_SQL)
        data.open_orders = _table(con, OPEN_ORDERS_SQL)
        data.alert_counts = _table(con, ALERT_COUNTS_SQL)
        data.alerts = _table(con, ALERTS_SQL)
        data.alerts_total = sum(r["alerts"] for r in data.alert_counts.records())
        data.syncs = _table(con, SYNCS_SQL)
    return data
