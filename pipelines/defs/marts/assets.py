"""Mart inputs that are not API feeds: cpa.moe payouts (a CSV file) and daily snapshots of totals."""

import os
from pathlib import Path

import dagster as dg

from pipelines.clock import utc_now
from pipelines.defs.table_metadata import table_metadata
from pipelines.resources import WRITER_POOL, WarehouseResource

PAYOUTS_VARIABLE = "CPAMOE_PAYOUTS_FILE"


class PayoutsFileError(ValueError):
    """The payouts file exists but cannot be used as a whole."""


def load_payouts(con, path: Path) -> dict[str, object]:
    """Replace ``cpamoe_payouts`` with the file's valid lines; report invalid ones by line number.

    The file is the whole configuration (CSV header ``offer,amount,currency``), so the table
    mirrors it; an unreadable file or a wrong header changes nothing.
    """
    literal = str(path).replace("'", "''")
    try:
        header = con.execute(
            f"SELECT * FROM read_csv('{literal}', all_varchar = true, header = true) LIMIT 0"
        ).description
    except Exception as exc:  # duckdb's errors: not a CSV, unreadable
        raise PayoutsFileError(f"{PAYOUTS_VARIABLE}={path}: cannot read it as CSV ({exc})") from None
    columns = {d[0].strip().lower() for d in header}
    missing = {"offer", "amount", "currency"} - columns
    if missing:
        raise PayoutsFileError(
            f"{PAYOUTS_VARIABLE}={path}: the header must have offer,amount,currency; missing {sorted(missing)}"
        )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE payout_lines AS
        SELECT row_number() OVER () + 1 AS line,
               trim(offer) AS offer, trim(amount) AS amount, upper(trim(currency)) AS currency
        FROM read_csv('{literal}', all_varchar = true, header = true)
        """
    )
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE payout_checked AS
        SELECT *,
               CASE WHEN TRY_CAST(offer AS BIGINT) IS NULL THEN 'offer is not an integer'
                    WHEN TRY_CAST(amount AS DECIMAL(18,6)) IS NULL THEN 'amount is not a number'
                    WHEN TRY_CAST(amount AS DECIMAL(18,6)) < 0 THEN 'amount is negative'
                    WHEN NOT regexp_full_match(coalesce(currency, ''), '[A-Z]{3}') THEN 'currency is not a 3-letter code'
                    WHEN count(*) OVER (PARTITION BY TRY_CAST(offer AS BIGINT)) > 1 THEN 'offer listed more than once'
               END AS error
        FROM payout_lines
        """
    )
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM cpamoe_payouts")
        con.execute(
            """
            INSERT INTO cpamoe_payouts (offer_id, amount, currency, source_file, loaded_at)
            SELECT CAST(offer AS BIGINT), CAST(amount AS DECIMAL(18,6)), currency, ?, ?
            FROM payout_checked WHERE error IS NULL
            """,
            [str(path), utc_now()],
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    loaded = con.execute("SELECT count(*) FROM payout_checked WHERE error IS NULL").fetchone()[0]
    errors = con.execute("SELECT line, error FROM payout_checked WHERE error IS NOT NULL ORDER BY line").fetchall()
    return {"payouts_loaded": loaded, "lines_rejected": len(errors), "rejected_lines": {str(n): e for n, e in errors[:100]}}


@dg.asset(
    group_name="marts",
    pool=WRITER_POOL,
    kinds={"duckdb", "csv"},
    # a small step with no upstream: after the feeds among ready steps, not before them
    op_tags={"dagster/priority": "-1"},
    description="Payout per cpa.moe offer (CSV offer,amount,currency from CPAMOE_PAYOUTS_FILE), used by v_earnings.",
    metadata=table_metadata("cpamoe_payouts"),
)
def cpamoe_payouts(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
    configured = os.environ.get(PAYOUTS_VARIABLE, "").strip()
    with warehouse.open(on_wait=context.log.warning).connect() as con:
        if not configured:
            con.execute("DELETE FROM cpamoe_payouts")
            context.log.info(f"{PAYOUTS_VARIABLE} is not set: no cpa.moe payouts configured (earnings NULL)")
            return dg.MaterializeResult(metadata={"configured": False, "payouts_loaded": 0})
        path = Path(configured)
        if not path.is_file():
            message = (
                f"{PAYOUTS_VARIABLE}={configured}: no such file. cpa.moe earnings keep the payouts "
                "loaded before (none if never loaded); create the CSV (offer,amount,currency) or unset the variable."
            )
            context.log.warning(message)
            return dg.MaterializeResult(metadata={"configured": True, "error": message})
        try:
            result = load_payouts(con, path)
        except PayoutsFileError as exc:
            context.log.warning(f"{exc}; payouts unchanged")
            return dg.MaterializeResult(metadata={"configured": True, "error": str(exc)})
    for line, error in result["rejected_lines"].items():
        context.log.warning(f"{configured} line {line}: {error}")
    return dg.MaterializeResult(
        metadata={
            "configured": True,
            "payouts_loaded": result["payouts_loaded"],
            "dagster/row_count": result["payouts_loaded"],  # the table mirrors the file
            "lines_rejected": result["lines_rejected"],
            "rejected_lines": dg.MetadataValue.json(result["rejected_lines"]),
        }
    )


SNAPSHOT_SQL = """
WITH current AS (
    SELECT e.source, e.order_id, e.currency, e.earned, f.delivered
    FROM v_earnings AS e
    LEFT JOIN (SELECT source, order_id, sum(units_delivered) AS delivered
               FROM v_fill_rate GROUP BY ALL) AS f USING (source, order_id)
),
last_before AS (
    SELECT source, order_id, arg_max(earned, day) AS earned, arg_max(units_delivered, day) AS delivered
    FROM order_daily_snapshots WHERE day < $day GROUP BY ALL
)
INSERT OR REPLACE INTO order_daily_snapshots (source, order_id, day, currency, earned, units_delivered, captured_at)
SELECT c.source, c.order_id, $day, c.currency, c.earned, c.delivered, $now
FROM current AS c
LEFT JOIN last_before AS b USING (source, order_id)
LEFT JOIN order_daily_snapshots AS t ON t.source = c.source AND t.order_id = c.order_id AND t.day = $day
WHERE CASE WHEN t.order_id IS NOT NULL          -- today's row: rewritten only when the totals moved
           THEN c.earned IS DISTINCT FROM t.earned OR c.delivered IS DISTINCT FROM t.units_delivered
           ELSE b.order_id IS NULL                -- first time we see this order
                OR c.earned IS DISTINCT FROM b.earned OR c.delivered IS DISTINCT FROM b.delivered END
"""

# Baselines of the sources that have snapshot rows but none yet: run after SNAPSHOT_SQL, in its
# transaction. For a source synced for the first time, its rows are exactly this run's (every
# order gets a row the first time it is seen), so each order present at the source's first sync
# gets what it had then; orders first seen by a later sync never get a baseline (they count from
# zero). A warehouse snapshotted before baselines existed gets its first day's rows once (the
# end-of-first-day totals v_earnings_daily used as the baseline then), so its past days keep their
# numbers. The scan of the source column is cheap; no unchanged row is rewritten.
BASELINE_SQL = """
INSERT INTO order_baselines (source, order_id, currency, earned, units_delivered, captured_at)
SELECT s.source, s.order_id, s.currency, s.earned, s.units_delivered, s.captured_at
FROM order_daily_snapshots AS s
JOIN (SELECT source, min(day) AS first_day FROM order_daily_snapshots
      WHERE source NOT IN (SELECT DISTINCT source FROM order_baselines)
      GROUP BY source) AS f
  ON s.source = f.source AND s.day = f.first_day
"""


SNAPSHOTS = "order_daily_snapshots"
SNAPSHOT_DEPS = ("v_earnings", "v_fill_rate")
SNAPSHOT_DESCRIPTION = (
    "Each order's cumulative earned and delivered units, last value per UTC day (rows only on days they "
    "changed), and in order_baselines what each order had when its source's first sync saw it."
)


def take_snapshot(con) -> dict[str, object]:
    """Write today's ``order_daily_snapshots`` rows (and first baselines) in one transaction; the
    figures for the materialization. Run by the views' step, right after the views it reads
    (pipelines/defs/views/assets.py): a step of its own would cost a process and split the views'
    step in three around it."""
    now = utc_now()
    day = now.date()
    before = con.execute("SELECT count(*) FROM order_daily_snapshots").fetchone()[0]
    con.execute("BEGIN TRANSACTION")
    try:
        written = con.execute(SNAPSHOT_SQL, {"day": day, "now": now}).fetchone()[0]
        baselines = con.execute(BASELINE_SQL).fetchone()[0]
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    total = con.execute("SELECT count(*) FROM order_daily_snapshots").fetchone()[0]
    return {
        "day": str(day), "rows_written": written, "new_rows": total - before, "rows_total": total,
        "baselines_written": baselines, "dagster/row_count": total,
    }
