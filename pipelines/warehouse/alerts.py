"""The warehouse side of alert delivery: which alerts of ``v_order_alerts`` are due to be sent, and
what became of each attempt (table ``alert_deliveries``, declared in ``models/alerts.py``).

Why claims: two ticks of the alerts sensor can overlap (a tick the daemon gave up on keeps running
in the code server; ``dg dev`` and a second daemon on one instance; "Test sensor" in the UI).
Each tick therefore *claims* the alerts it will send, in one transaction that also registers
every new alert: a claimed row belongs to one tick until it records the outcome or its claim
expires (a killed tick). DuckDB runs one writing transaction on a file at a time, so two ticks
never claim the same row. The HTTP requests happen between the two short transactions, with the
file closed, so a sync is never held up by a slow receiver.

Times here are the wall clock (passed in): backoff and claims are about the receiver, which lives
in real time even when the warehouse follows the sandbox's simulated clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from pipelines.warehouse.connection import Warehouse, _is_lock_error

ALERTS_VIEW = "v_order_alerts"


@dataclass(frozen=True)
class PendingAlert:
    """One alert of ``v_order_alerts`` claimed for sending (``attempts``: requests made before)."""

    source: str
    order_id: str
    alert: str
    due_at: datetime
    detail: str | None
    attempts: int

    @property
    def key(self) -> tuple[str, str, str, datetime]:
        return (self.source, self.order_id, self.alert, self.due_at)


@dataclass(frozen=True)
class Outcome:
    """What happened to a claimed alert: delivered, failed (an attempt was made), or not tried
    (the tick stopped first); ``retry_at``: not before then."""

    alert: PendingAlert
    attempted: bool
    delivered_at: datetime | None = None
    retry_at: datetime | None = None
    error: str | None = None


@dataclass(frozen=True)
class Claim:
    """A tick's share: the alerts it sends, and how many other current undelivered alerts wait
    (backing off, claimed by another tick, or over the limit), the earliest due again when."""

    alerts: list[PendingAlert]
    waiting: int
    next_attempt_at: datetime | None


class AlertsNotBuilt(Exception):
    """The warehouse has no ``v_order_alerts`` yet (no sync has built the views)."""


class WarehouseBusy(Exception):
    """Another process held the warehouse file longer than the tick may wait (a sync committing)."""


def _busy(exc: Exception) -> WarehouseBusy | None:
    if _is_lock_error(exc):
        return WarehouseBusy("the warehouse is busy (another process, e.g. a sync, holds the file)")
    return None


_KEY = "source, order_id, alert, due_at"
_JOIN = "d.source = c.source AND d.order_id = c.order_id AND d.alert = c.alert AND d.due_at = c.due_at"


def _has_view(con: duckdb.DuckDBPyConnection) -> bool:
    return bool(
        con.execute(
            "SELECT count(*) FROM information_schema.tables "
            "WHERE table_name = ? AND table_catalog = current_database() AND table_schema = current_schema()",
            [ALERTS_VIEW],
        ).fetchone()[0]
    )


def claim_due_alerts(
    warehouse: Warehouse, *, token: str, now: datetime, claim_until: datetime, limit: int
) -> Claim:
    """Register every current alert not seen before, then claim for ``token`` up to ``limit`` of
    those that are current, not delivered, past their backoff and not claimed by a live tick
    (earliest ``due_at`` first).

    An alert that has cleared from the view is never claimed: it no longer needs a person.
    """
    if warehouse.is_local_file and not Path(warehouse.location).exists():
        raise AlertsNotBuilt(f"{ALERTS_VIEW} does not exist yet: no sync has created the warehouse")
    try:
        warehouse.ensure_schema()  # a warehouse from before alert_deliveries gets the table
        return _claim(warehouse, token=token, now=now, claim_until=claim_until, limit=limit)
    except Exception as exc:
        busy = _busy(exc)
        if busy is None:
            raise
        raise busy from None


def _claim(
    warehouse: Warehouse, *, token: str, now: datetime, claim_until: datetime, limit: int
) -> Claim:
    with warehouse.connect() as con:
        if not _has_view(con):
            raise AlertsNotBuilt(f"{ALERTS_VIEW} does not exist yet: no sync has built the views")
        con.execute("BEGIN TRANSACTION")
        try:
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE current_alerts AS
                SELECT DISTINCT ON ({_KEY}) CAST(source AS VARCHAR) AS source,
                       CAST(order_id AS VARCHAR) AS order_id, CAST(alert AS VARCHAR) AS alert,
                       CAST(detail AS VARCHAR) AS detail, due_at
                FROM {ALERTS_VIEW} WHERE due_at IS NOT NULL"""
            )
            con.execute(
                f"""INSERT OR IGNORE INTO alert_deliveries ({_KEY}, detail, first_seen_at, attempts)
                SELECT {_KEY}, detail, ?, 0 FROM current_alerts""",
                [now],
            )
            con.execute(
                f"""CREATE OR REPLACE TEMP TABLE claimable AS
                SELECT d.source, d.order_id, d.alert, d.due_at, c.detail
                FROM alert_deliveries AS d JOIN current_alerts AS c ON {_JOIN}
                WHERE d.delivered_at IS NULL
                  AND (d.next_attempt_at IS NULL OR d.next_attempt_at <= $now)
                  AND (d.claimed_until IS NULL OR d.claimed_until <= $now)""",
                {"now": now},
            )
            claimed = con.execute(
                f"""UPDATE alert_deliveries AS d
                SET claim_token = $token, claimed_until = $until, detail = c.detail
                FROM (SELECT * FROM claimable ORDER BY due_at, source, order_id, alert LIMIT $limit) AS c
                WHERE {_JOIN}
                RETURNING d.source, d.order_id, d.alert, d.due_at, d.detail, d.attempts""",
                {"token": token, "until": claim_until, "limit": limit},
            ).fetchall()
            waiting, next_at = con.execute(
                f"""SELECT count(*), min(d.next_attempt_at)
                FROM alert_deliveries AS d JOIN current_alerts AS c ON {_JOIN}
                WHERE d.delivered_at IS NULL AND d.claim_token IS DISTINCT FROM $token""",
                {"token": token},
            ).fetchone()
            con.execute("DROP TABLE claimable")
            con.execute("DROP TABLE current_alerts")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    alerts = [PendingAlert(s, o, a, due, detail, int(n)) for s, o, a, due, detail, n in claimed]
    return Claim(sorted(alerts, key=lambda a: (a.due_at, a.source, a.order_id, a.alert)), waiting, next_at)


def record_outcomes(warehouse: Warehouse, *, token: str, outcomes: Sequence[Outcome]) -> int:
    """Write what became of this tick's claimed alerts and release them, in one statement; rows
    whose claim ``token`` no longer holds (it expired and another tick took them) are left alone.
    Returns the rows written."""
    if not outcomes:
        return 0
    columns = {
        "source": ([o.alert.source for o in outcomes], "VARCHAR[]"),
        "order_id": ([o.alert.order_id for o in outcomes], "VARCHAR[]"),
        "alert": ([o.alert.alert for o in outcomes], "VARCHAR[]"),
        "due_at": ([o.alert.due_at for o in outcomes], "TIMESTAMPTZ[]"),
        "attempted": ([o.attempted for o in outcomes], "BOOLEAN[]"),
        "delivered_at": ([o.delivered_at for o in outcomes], "TIMESTAMPTZ[]"),
        "retry_at": ([o.retry_at for o in outcomes], "TIMESTAMPTZ[]"),
        "error": ([o.error for o in outcomes], "VARCHAR[]"),
    }
    unnested = ", ".join(f"unnest(CAST(${name} AS {kind})) AS {name}" for name, (_, kind) in columns.items())
    with warehouse.connect() as con:
        written = con.execute(
            f"""UPDATE alert_deliveries AS d
            SET attempts = d.attempts + CAST(c.attempted AS BIGINT),
                delivered_at = c.delivered_at,
                next_attempt_at = CASE WHEN c.delivered_at IS NULL THEN c.retry_at END,
                last_error = CASE WHEN c.attempted THEN c.error ELSE d.last_error END,
                claim_token = NULL, claimed_until = NULL
            FROM (SELECT {unnested}) AS c
            WHERE {_JOIN} AND d.claim_token = $token
            RETURNING d.source""",
            {**{name: values for name, (values, _) in columns.items()}, "token": token},
        ).fetchall()
    return len(written)
