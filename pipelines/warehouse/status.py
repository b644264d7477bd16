"""What the last syncs did, read from the warehouse: the data behind ``affwh status``.

Everything comes from tables the syncs write themselves, so it is the same whichever route ran
them (``make run``, ``dg launch``, the UI, a schedule): ``sync_runs`` (one row per committed run of
a stream, written in the stream's commit transaction), ``sync_failures`` (the one-line reason of a
failed run, written after its rollback), ``sync_state`` and ``quarantine``.

Reading is read-only and short: one connection, a handful of aggregate queries, closed before
formatting. DuckDB lets a reader in only while no process holds the file for writing; a sync holds
it only while it commits (a feed stages elsewhere) or builds the views, so :func:`read_status`
waits for that window (``lock_timeout``) and a sync in turn waits at most as long as these queries
take. Per-day streams (``metapic_participant_daily_stats:2026-01-31``) are shown as one family.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from pipelines.warehouse.connection import Warehouse

FRESH, WARN, STALE, NEVER, NO_POLICY = "fresh", "warn", "stale", "never synced", "no policy"


@dataclass(frozen=True)
class Policy:
    """A freshness policy: a stream is late after ``warn`` and failing after ``fail``."""

    warn: timedelta
    fail: timedelta


@dataclass
class LastRun:
    run_id: str
    mode: str
    started_at: datetime
    finished_at: datetime
    seconds: float
    received: int
    inserted: int
    updated: int
    unchanged: int
    quarantined: int
    requests: int
    retries: int
    warnings: list[str]


@dataclass
class Failure:
    run_id: str
    failed_at: datetime
    reason: str
    resolved: bool  # a later run of the stream committed


@dataclass
class StreamStatus:
    stream: str  # the stream, or the family of per-day streams (``name`` before ``:``)
    last_run: LastRun | None = None
    runs: int = 0
    days: int = 0  # per-day streams of the family (0 for a plain stream)
    last_failure: Failure | None = None
    freshness: str = NO_POLICY
    age: timedelta | None = None  # since the last committed run
    policy: Policy | None = None


@dataclass
class Status:
    warehouse: str
    checked_at: datetime
    exists: bool
    streams: list[StreamStatus] = field(default_factory=list)
    quarantine: list[tuple[str, str, int]] = field(default_factory=list)  # (stream, reason, rows)

    def to_json(self) -> str:
        """The status as JSON for scripts: timestamps ISO-8601, durations in seconds."""

        def plain(value):
            if isinstance(value, datetime):
                return value.isoformat()
            if isinstance(value, timedelta):
                return value.total_seconds()
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, list | tuple):
                return [plain(v) for v in value]
            return value

        body = asdict(self)
        body["quarantine"] = [{"stream": s, "reason": r, "rows": n} for s, r, n in self.quarantine]
        return json.dumps(plain(body), indent=2)


def family(stream: str) -> str:
    """The family a stream's status is shown under: per-day streams (``<table>:<day>``) as one."""
    return stream.split(":", 1)[0]


def freshness(age: timedelta | None, policy: Policy | None) -> str:
    if policy is None:
        return NO_POLICY
    if age is None:
        return NEVER
    if age > policy.fail:
        return STALE
    if age > policy.warn:
        return WARN
    return FRESH


_LAST_RUNS = """
SELECT family, run_id, mode, started_at, finished_at, records_received, inserted, updated, unchanged,
       quarantined, requests, retries, warnings, runs, days
FROM (
    SELECT split_part(stream, ':', 1) AS family, *,
           count(*) OVER (PARTITION BY split_part(stream, ':', 1)) AS runs,
           count(DISTINCT stream) FILTER (WHERE stream LIKE '%:%')
               OVER (PARTITION BY split_part(stream, ':', 1)) AS days
    FROM sync_runs
)
QUALIFY row_number() OVER (PARTITION BY family ORDER BY finished_at DESC, stream DESC) = 1
"""

_LAST_FAILURES = """
SELECT split_part(stream, ':', 1) AS family, run_id, failed_at, reason
FROM sync_failures
QUALIFY row_number() OVER (PARTITION BY family ORDER BY failed_at DESC) = 1
"""

_QUARANTINE = "SELECT stream, reason, count(*) AS n FROM quarantine GROUP BY ALL ORDER BY stream, n DESC, reason"


def read_status(
    location: str,
    now: datetime,
    policies: dict[str, Policy] | None = None,
    lock_timeout: float = 30.0,
) -> Status:
    """The status of every stream the warehouse knows of, and of every stream ``policies`` expects.

    ``now`` is compared with ``sync_runs.finished_at`` (the wall clock of the commit), like
    Dagster's own freshness policies compare it with the materialization time.
    """
    policies = policies or {}
    warehouse = Warehouse(location, lock_timeout=lock_timeout, threads=1)
    status = Status(warehouse=location, checked_at=now, exists=True)
    if warehouse.is_local_file and not Path(warehouse.location).exists():
        status.exists = False
        rows = {}
    else:
        with warehouse.connect(read_only=True) as con:
            tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}

            def query(sql: str, table: str) -> list[tuple]:
                return con.execute(sql).fetchall() if table in tables else []

            runs = query(_LAST_RUNS, "sync_runs")
            failures = query(_LAST_FAILURES, "sync_failures")
            states = query("SELECT DISTINCT split_part(stream, ':', 1) FROM sync_state", "sync_state")
            status.quarantine = [(s, r, n) for s, r, n in query(_QUARANTINE, "quarantine")]
        rows = {name: StreamStatus(name) for (name,) in states}
        for name, run_id, mode, started, finished, received, ins, upd, unch, quar, req, ret, warns, n, days in runs:
            stream = rows.setdefault(name, StreamStatus(name))
            stream.runs, stream.days = n, days
            stream.last_run = LastRun(
                run_id, mode, started, finished, (finished - started).total_seconds(), received or 0, ins or 0,
                upd or 0, unch or 0, quar or 0, req or 0, ret or 0, _warnings(warns),
            )
        for name, run_id, failed_at, reason in failures:
            stream = rows.setdefault(name, StreamStatus(name))
            resolved = stream.last_run is not None and stream.last_run.finished_at > failed_at
            stream.last_failure = Failure(run_id, failed_at, reason, resolved)
    for name in policies:
        rows.setdefault(name, StreamStatus(name))
    for stream in rows.values():
        stream.policy = policies.get(stream.stream)
        stream.age = now - stream.last_run.finished_at if stream.last_run is not None else None
        stream.freshness = freshness(stream.age, stream.policy)
    status.streams = sorted(rows.values(), key=lambda s: s.stream)
    return status


def _warnings(raw) -> list[str]:
    if raw is None:
        return []
    value = json.loads(raw) if isinstance(raw, str) else raw
    return [str(w) for w in value] if isinstance(value, list) else [str(value)]


def never_synced(location: str, lock_timeout: float = 30.0) -> bool:
    """True when no stream has committed into the warehouse yet (no file, no schema, no state)."""
    warehouse = Warehouse(location, lock_timeout=lock_timeout, threads=1)
    if warehouse.is_local_file and not Path(warehouse.location).exists():
        return True
    with warehouse.connect(read_only=True) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        return "sync_state" not in tables or con.execute("SELECT count(*) FROM sync_state").fetchone()[0] == 0
