"""``affwh status``: the last sync of every stream, its failures, quarantine and freshness, printed.

The reading is :mod:`pipelines.warehouse.status`; this module adds the freshness policies (the
same windows the Dagster assets carry: :mod:`pipelines.schedules`, tagged by
:mod:`pipelines.defs.feed_asset`) and the terminal layout, or ``--json`` for scripts.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta

import duckdb

from pipelines.warehouse.status import FRESH, NEVER, NO_POLICY, STALE, WARN, Policy, Status, read_status


def feed_policies() -> tuple[dict[str, Policy], str | None]:
    """Asset key (= stream, or family of per-day streams) -> its freshness policy; with the reason
    when the definitions cannot be loaded (status still prints, without freshness)."""
    try:
        from pipelines.defs.feed_asset import FEED_TAG, defined_assets
        from pipelines.schedules import OperationsSettings

        settings = OperationsSettings.from_env()
        windows = {"current": settings.freshness, "daily": settings.daily_freshness}
        policies = {}
        for asset in defined_assets():
            for spec in asset.specs:
                window = windows.get(spec.tags.get(FEED_TAG, ""))
                if window is not None:
                    policies[spec.key.to_user_string()] = Policy(*window)
        return policies, None
    except Exception as exc:  # noqa: BLE001 - a bad setting or a broken feed module: say so, go on
        return {}, f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M") if value is not None else "-"


def _ago(age: timedelta | None) -> str:
    if age is None:
        return "-"
    seconds = max(age.total_seconds(), 0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _span(delta: timedelta) -> str:
    """A policy window in its own unit: ``60 min``, ``26 h``."""
    minutes = delta.total_seconds() / 60
    return f"{minutes / 60:g} h" if minutes >= 120 and minutes % 60 == 0 else f"{minutes:g} min"


FRESHNESS_LABELS = {FRESH: "fresh", WARN: "LATE (warn)", STALE: "STALE (fail)", NEVER: "never synced", NO_POLICY: "-"}

RUN_COLUMNS = [("stream", False), ("freshness", False), ("last commit (UTC)", False), ("ago", True), ("mode", False), ("took", True)]
COUNT_COLUMNS = [
    ("stream", False), ("received", True), ("inserted", True), ("updated", True), ("unchanged", True),
    ("quarantined", True), ("requests", True), ("retries", True), ("warnings", True),
]


def table(header: list[tuple[str, bool]], rows: list[list[str]], indent: str = "  ") -> list[str]:
    """Rows under a header, text left-aligned and numbers right-aligned (``(title, right)``)."""
    widths = [max([len(title)] + [len(r[i]) for r in rows]) for i, (title, _) in enumerate(header)]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if right else c.ljust(w) for c, w, (_, right) in zip(cells, widths, header, strict=True)]
        return (indent + "  ".join(parts)).rstrip()

    return [line([t for t, _ in header]), line(["-" * w for w in widths]), *(line(r) for r in rows)]


def render(status: Status, policy_problem: str | None = None) -> str:
    """The status as a person reads it in a terminal (two tables of at most ~110 columns)."""
    out = [f"Warehouse {status.warehouse} (checked {_when(status.checked_at)} UTC)"]
    if not status.exists:
        out.append("  no warehouse yet: `make run` (or `affwh run`) creates it with a first sync")
    runs, counts = [], []
    for s in status.streams:
        r = s.last_run
        name = s.stream + (f" ({s.days} days)" if s.days else "")
        if r is None:
            runs.append([name, FRESHNESS_LABELS[s.freshness], "-", "-", "-", "-"])
            continue
        runs.append([name, FRESHNESS_LABELS[s.freshness], _when(r.finished_at), _ago(s.age), r.mode, f"{r.seconds:.1f} s"])
        counts.append([
            name, *(f"{n:,}" for n in (r.received, r.inserted, r.updated, r.unchanged, r.quarantined, r.requests, r.retries)),
            f"{len(r.warnings):,}",
        ])
    out += ["", "Last committed run per stream:"]
    out += table(RUN_COLUMNS, runs) if runs else ["  none yet"]
    windows = {}
    for s in status.streams:
        if s.policy is not None:
            windows.setdefault((s.policy.warn, s.policy.fail), []).append(s.stream)
    for (warn, fail), names in sorted(windows.items()):
        out.append(f"  late after {_span(warn)}, stale after {_span(fail)}: {', '.join(names)}")
    if windows:
        out.append("  (FRESHNESS_* settings, README \"Operations\"; measured from the last commit)")
    if policy_problem:
        out.append(f"  freshness unknown: the definitions did not load ({policy_problem})")
    if counts:
        out += ["", "What that run did:"]
        out += table(COUNT_COLUMNS, counts)

    warned = [(s.stream, w) for s in status.streams if s.last_run for w in s.last_run.warnings]
    if warned:
        out += ["", "Warnings of those runs:"]
        out += [f"  {stream}: {w}" for stream, w in warned[:20]]
        if len(warned) > 20:
            out.append(f"  ... and {len(warned) - 20} more (`affwh status --json`)")

    failures = [s for s in status.streams if s.last_failure is not None]
    out += ["", "Last failure per stream:"]
    if not failures:
        out.append("  none recorded")
    for s in failures:
        f = s.last_failure
        state = "a run committed since" if f.resolved else "NOT synced since"
        out.append(f"  {s.stream}: {_when(f.failed_at)} UTC ({state}): {f.reason}")

    out += ["", "Rows in quarantine (records that could not be typed; `make query SQL=\"SELECT * FROM quarantine\"`):"]
    if not status.quarantine:
        out.append("  none")
    else:
        out += table([("stream", False), ("rows", True), ("reason", False)],
                     [[stream, f"{n:,}", reason] for stream, reason, n in status.quarantine])
    return "\n".join(out)


def run_status(location: str, as_json: bool, wait_seconds: float) -> int:
    """Print the status (exit 0), or say on stderr why it cannot be read (exit 1)."""
    policies, problem = feed_policies()
    try:
        status = read_status(location, datetime.now(UTC), policies, lock_timeout=wait_seconds)
    except duckdb.Error as exc:
        first = (str(exc).splitlines() or [""])[0]
        if "lock" in first.lower():
            print(
                f"error: the warehouse {location} stayed held by another process for {wait_seconds:g} s "
                f"(a sync committing, or a DuckDB shell): try again, or wait longer with --wait. ({first})",
                file=sys.stderr,
            )
        else:
            print(f"error: cannot read the warehouse {location}: {first}", file=sys.stderr)
        return 1
    if as_json:
        body = json.loads(status.to_json())
        body["freshness_unknown"] = problem  # why no stream has a policy, when the definitions did not load
        print(json.dumps(body, indent=2))
    else:
        print(render(status, problem))
    return 0
