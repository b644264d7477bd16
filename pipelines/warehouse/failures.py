"""Record a stream's failed sync in the warehouse, so ``affwh status`` can say what broke.

A failed sync commits nothing (its transaction rolled back), so its failure cannot be written with
its data: :func:`record_failure` writes one row to ``sync_failures`` in a short transaction of its
own, after the rollback. It is best effort: it waits for the warehouse lock only briefly, and when
it cannot write (the lock is held, the disk is full) it leaves a note on the original exception
and returns, never replacing the error that matters.
"""

from __future__ import annotations

from datetime import UTC, datetime

from pipelines.warehouse.connection import Warehouse

REASON_MAX_CHARS = 500
RECORD_LOCK_TIMEOUT_SECONDS = 15.0


def one_line(exc: BaseException) -> str:
    """``<ExceptionType>: <first line>``, as the Dagster step failure says it (the HTTP layer has
    already redacted secrets from the messages of its errors)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return text[:REASON_MAX_CHARS]


def record_failure(warehouse: Warehouse, *, stream: str, run_id: str, started_at: datetime, exc: BaseException) -> None:
    """One ``sync_failures`` row for this run and stream (a retried step of the same run replaces it)."""
    short = Warehouse(
        warehouse.location,
        memory_limit=warehouse.memory_limit,
        threads=warehouse.threads,
        lock_timeout=min(warehouse.lock_timeout, RECORD_LOCK_TIMEOUT_SECONDS),
    )
    try:
        short.ensure_schema()
        with short.connect() as con:
            con.execute(
                "INSERT OR REPLACE INTO sync_failures (run_id, stream, started_at, failed_at, reason) "
                "VALUES (?, ?, ?, ?, ?)",
                [run_id, stream, started_at, datetime.now(UTC), one_line(exc)],
            )
    except Exception as unrecorded:  # noqa: BLE001 - the sync's own error is the one to raise
        exc.add_note(f"(the failure could not be recorded in sync_failures: {type(unrecorded).__name__})")
