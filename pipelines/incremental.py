"""Incremental sync of order lists that can only be filtered by status (OnlyTraffic CPC/CPL/swap).

The trick that makes these cheap: an order in a terminal status (completed, rejected, cancelled)
never changes again, so re-reading the terminal lists every run is wasted calls. What must be read:

- every *open* list (waiting, accepted/active) in full: those orders can change;
- from each terminal list, only the orders that became terminal since the last sync. Those are
  (a) orders we saw open last time and that have now left the open lists ("vanished"), and
  (b) orders created after the last sync that were finished before this one. Both were created at
  or after ``since = min(created_at of the vanished, newest created_at seen last time)``, so a
  terminal list read newest-first can stop at the first page that reaches below ``since``
  (server-side with a ``from`` filter where the API has one).

Trust but verify: a terminal list that turns out not to be sorted newest-first is re-read in
full, and if an order that vanished from the open lists is not found in any terminal list, the
terminal lists are re-read in full; if it is still missing it is kept as last seen and reported
as a warning. A first sync, or ``full_refresh``, reads everything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from pipelines.fetch import Emit, run_producers
from pipelines.loader import Page, StreamLoad


@dataclass
class WalkOutcome:
    status: str
    complete: bool  # the list was read to its end
    out_of_order: bool = False  # pages were not newest-first: an early stop would be unsafe
    warnings: list[str] = field(default_factory=list)
    degraded: bool = False  # pagination misbehaved (e.g. an empty page before the end): not whole


class StatusListing(Protocol):
    open_statuses: tuple[str, ...]
    terminal_statuses: tuple[str, ...]

    def walk(self, status: str, since: datetime | None, emit: Emit[Page]) -> WalkOutcome:
        """Emit the pages of one status list; with ``since``, newest first, stopping once the
        list reaches orders created before ``since``."""
        ...


@dataclass
class ListingResult:
    mode: str  # "full" or "incremental"
    cursor: dict
    full_walk: bool
    warnings: list[str]


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def sync_status_lists(
    listing: StatusListing,
    load: StreamLoad,
    *,
    table: str,
    key_column: str,
    created_path: str = "$.created_at",
    full_refresh: bool = False,
    max_workers: int = 4,
    log: Callable[[str], None] = lambda _m: None,
) -> ListingResult:
    """Fetch what changed into ``load`` (not committed) and return the new cursor."""
    terminal = "', '".join(("completed", "rejected", "cancelled"))
    state = load.read_state(
        {
            "prior_open": f"SELECT CAST({key_column} AS VARCHAR) AS key, created_at "
            f"FROM wh.main.{table} WHERE status IS NULL OR CAST(status AS VARCHAR) NOT IN ('{terminal}')"
        }
    )
    watermark_text = state.get("created_watermark")
    full = full_refresh or not watermark_text
    warnings: list[str] = []
    outcomes: dict[str, WalkOutcome] = {}

    def walker(status: str, since: datetime | None):
        return lambda emit: listing.walk(status, since, emit)

    def run(statuses: list[str], since: datetime | None) -> None:
        results = run_producers([walker(s, since) for s in statuses], load.add, max_workers=max_workers)
        for outcome in results:
            assert isinstance(outcome, WalkOutcome)
            outcomes[outcome.status] = outcome
            warnings.extend(outcome.warnings)

    if full:
        log(f"{table}: full walk of every status list")
        run([*listing.open_statuses, *listing.terminal_statuses], None)
    else:
        run(list(listing.open_statuses), None)
        vanished_count, vanished_min = load.query(
            "SELECT count(*), min(created_at) FROM prior_open "
            "WHERE key NOT IN (SELECT key FROM recs WHERE key IS NOT NULL)"
        )[0]
        watermark = datetime.fromisoformat(watermark_text)
        since = min(vanished_min, watermark) if vanished_min is not None else watermark
        log(
            f"{table}: {vanished_count} order(s) left the open lists; reading terminal lists "
            f"back to {since.isoformat()}"
        )
        run(list(listing.terminal_statuses), since)
        redo = [s for s in listing.terminal_statuses if outcomes[s].out_of_order]
        if redo:
            warnings.append(f"{table}: status list(s) {redo} not sorted newest-first; re-read in full")
        missing = _missing(load) if vanished_count else 0
        if missing:
            redo = sorted(set(redo) | {s for s in listing.terminal_statuses if not outcomes[s].complete})
        if redo:
            run(redo, None)
            missing = _missing(load) if vanished_count else 0
        if missing:
            sample = ", ".join(
                r[0]
                for r in load.query(
                    "SELECT key FROM prior_open WHERE key NOT IN "
                    "(SELECT key FROM recs WHERE key IS NOT NULL) ORDER BY key LIMIT 5"
                )
            )
            warnings.append(
                f"{table}: {missing} order(s) open at the last sync were not returned by any "
                f"status list (e.g. {sample}); kept as last seen"
            )

    newest = load.query(
        f"SELECT max(TRY_CAST(json_extract_string(rec, '{created_path}') AS TIMESTAMPTZ)) FROM recs"
    )[0][0]
    old = datetime.fromisoformat(watermark_text) if watermark_text else None
    candidates = [t for t in (newest, old) if t is not None]
    cursor = {"created_watermark": _iso(max(candidates)) if candidates else None}
    return ListingResult("full" if full else "incremental", cursor, full, warnings)


def _missing(load: StreamLoad) -> int:
    return load.query(
        "SELECT count(*) FROM prior_open WHERE key NOT IN (SELECT key FROM recs WHERE key IS NOT NULL)"
    )[0][0]
