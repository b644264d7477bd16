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
terminal lists are read again back to its created_at, then in full; if it is still missing it is
kept as last seen and reported as a warning. A first sync, or ``full_refresh``, reads everything.

Lists that move while they are read (an order accepted or completed between two page requests):
with offset or page-number pagination a move shifts every older order of that list by one place,
so one can fall between two pages, and the mover itself can be on no page read. Hence:

- the open lists are read first, one after the other in lifecycle order (waiting, then
  accepted/active), and the terminal lists after them: an order that leaves a list before the
  reader reaches it is in a list read later;
- an order listed under two statuses in one sync (or a list whose total changed between pages)
  shows the lists moved: the open lists are read once more (a skipped order still open is there),
  a warning says so, and the cursor keeps ``recheck_from``: the next sync reads the terminal lists
  back to there, which finds any order this one missed (an order missed was open when the sync
  began: either open in the warehouse, then found as vanished, or created after what the last
  sync had seen; after a full walk, no older than the oldest open order seen). An undisturbed
  sync drops ``recheck_from``. Tested in ``tests/test_list_churn.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from models.status import TERMINAL_STATUSES, sql_list

from pipelines.page import Page
from pipelines.sources.fetch import Emit, run_producers
from pipelines.sources.status_list import StatusListing, WalkOutcome
from pipelines.warehouse.loader import StreamLoad


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
    full_refresh: bool = False,
    max_workers: int = 4,
    log: Callable[[str], None] = lambda _m: None,
) -> ListingResult:
    """Fetch what changed into ``load`` (not committed) and return the new cursor.

    ``load`` is opened with the orders' key and creation time as ``recs.key`` and ``recs.created``
    (the load's ``key_path`` and ``created_path``): the queries here read those columns only."""
    state = load.read_state(
        {
            "prior_open": f"SELECT CAST({key_column} AS VARCHAR) AS key, created_at "
            f"FROM wh.main.{table} WHERE status IS NULL OR CAST(status AS VARCHAR) NOT IN ({sql_list(TERMINAL_STATUSES)})"
        }
    )
    watermark_text = state.get("created_watermark")
    recheck_text = state.get("recheck_from")
    full = full_refresh or not watermark_text
    warnings: list[str] = []
    outcomes: dict[str, WalkOutcome] = {}
    moved_lists: set[str] = set()

    def walker(status: str, since: datetime | None):
        return lambda emit: listing.walk(status, since, emit)

    def run(statuses: list[str], since: datetime | None) -> None:
        results = run_producers([walker(s, since) for s in statuses], load.add, max_workers=max_workers)
        for outcome in results:
            assert isinstance(outcome, WalkOutcome)
            outcomes[outcome.status] = outcome
            warnings.extend(outcome.warnings)
            if outcome.moved:
                moved_lists.add(outcome.status)

    def read_open_lists() -> None:
        # One after the other, in lifecycle order: an order accepted while ``waiting`` is read is
        # in ``accepted`` by the time that list is read, so it is seen in one list or both.
        for status in listing.open_statuses:
            run([status], None)

    old_watermark = datetime.fromisoformat(watermark_text) if watermark_text else None
    recheck = datetime.fromisoformat(recheck_text) if recheck_text and not full else None
    # The open lists first, then the terminal ones: an order that leaves an open list before the
    # reader reaches it is already in its terminal list when that list is read.
    read_open_lists()
    since: datetime | None = None
    if full:
        log(f"{table}: full walk of every status list")
        run(list(listing.terminal_statuses), None)
    else:
        vanished_count, vanished_min = load.query(f"SELECT count(*), min(created_at) {_NOT_LISTED}")[0]
        assert old_watermark is not None
        since = min(t for t in (vanished_min, old_watermark, recheck) if t is not None)
        if recheck is not None and recheck < old_watermark:
            log(f"{table}: the last sync saw its lists move; re-checking orders created since {recheck.isoformat()}")
        log(
            f"{table}: {vanished_count} order(s) left the open lists; reading terminal lists "
            f"back to {since.isoformat()}"
        )
        run(list(listing.terminal_statuses), since)
    redo = [s for s in listing.terminal_statuses if outcomes[s].out_of_order]
    if redo:
        warnings.append(f"{table}: status list(s) {redo} not sorted newest-first; re-read in full")
        run(redo, None)

    # Did the lists move while they were read? An order listed under two statuses in this sync
    # moved between two requests; a walk may report it too (a total that changed between pages).
    movers = _movers(load)
    missing = 0 if full else _missing(load)
    disturbed = bool(movers or moved_lists)
    if disturbed or missing:
        # A move shifts every older order of its list by one place: one may have fallen between
        # two pages. Read the open lists once more: what was skipped and is still open is there.
        log(
            f"{table}: {len(movers)} order(s) moved between lists while they were read, "
            f"{missing} order(s) left the open lists for no terminal list read; reading the open lists again"
        )
        read_open_lists()
        movers = _movers(load)
        disturbed = bool(movers or moved_lists)

    if not full:
        missing = _missing(load)
        if missing:
            # Left the open lists, in no terminal list read so far: it became terminal after the
            # reader passed its place. Its terminal list is read again back to its created_at
            # (or in full if that list could not be read in part).
            first_missing = load.query(f"SELECT min(created_at) {_NOT_LISTED}")[0][0]
            again = [s for s in listing.terminal_statuses if s not in redo]
            partial = [s for s in again if not outcomes[s].degraded]
            whole = [s for s in again if outcomes[s].degraded]
            warnings.append(
                f"{table}: {missing} order(s) that left the open lists were in no terminal list read; "
                f"terminal lists read again (back to {_iso(first_missing) or 'the start'})"
            )
            if partial:
                run(partial, first_missing)
            if whole:
                run(whole, None)
            missing = _missing(load)
            still = [s for s in again if outcomes[s].out_of_order or not outcomes[s].complete]
            if missing and still:
                run(still, None)
                missing = _missing(load)
        if missing:
            sample = ", ".join(
                r[0]
                for r in load.query(f"SELECT key {_NOT_LISTED} ORDER BY key LIMIT 5")
            )
            warnings.append(
                f"{table}: {missing} order(s) open at the last sync were not returned by any "
                f"status list (e.g. {sample}); kept as last seen"
            )

    newest = load.query("SELECT max(TRY_CAST(created AS TIMESTAMPTZ)) FROM recs")[0][0]
    candidates = [t for t in (newest, old_watermark) if t is not None]
    cursor = {"created_watermark": _iso(max(candidates)) if candidates else None}
    if disturbed:
        # This sync may have missed an order that moved twice, or fell between two pages twice,
        # while it read. Such an order was open when the sync began, so the next sync reads the
        # terminal lists back to the oldest such order could be: created after what the last
        # sync had seen (or, after a full walk, no older than the oldest open order seen).
        unknown_since = min(t for t in (old_watermark, recheck) if t is not None) if not full else None
        floor = _recheck_floor(load, full, unknown_since, listing.open_statuses)
        if floor is not None:
            cursor["recheck_from"] = _iso(floor)
        sample = ", ".join(f"{k} ({a} -> {b})" for k, a, b in movers[:5])
        warnings.append(
            f"{table}: the lists moved while they were read ({len(movers)} order(s) listed under two "
            f"statuses{', e.g. ' + sample if sample else ''}"
            f"{'; lists ' + str(sorted(moved_lists)) + ' changed size between pages' if moved_lists else ''}); "
            f"open lists read again; an order missed now is picked up by the next sync, which "
            f"re-reads terminal lists back to {_iso(floor) or 'the start'}"
        )
    return ListingResult("full" if full else "incremental", cursor, full, warnings)


def _movers(load: StreamLoad) -> list[tuple[str, str, str]]:
    """Orders listed under more than one status in this sync (they moved while it read), with the
    first and the last status they were listed under."""
    return [
        (r[0], r[1], r[2])
        for r in load.query(
            "SELECT key, arg_min(listed_status, seq), arg_max(listed_status, seq) FROM recs "
            "WHERE key IS NOT NULL AND listed_status IS NOT NULL "
            "GROUP BY key HAVING count(DISTINCT listed_status) > 1 ORDER BY key"
        )
    ]


def _recheck_floor(
    load: StreamLoad, full: bool, since: datetime | None, open_statuses: tuple[str, ...]
) -> datetime | None:
    """How far back the next sync must read terminal lists to find what this one may have missed.

    An order this sync never saw was open when it began. After an incremental sync, such an order
    was either open in the warehouse (the next sync finds it as one that left the open lists) or
    unknown to it, hence created after what the sync before had seen (``since``: the old
    watermark, or the old ``recheck_from`` when that one is older). After a full
    walk nothing was known: the floor is the oldest order seen open (an order open at the start
    of the sync and missed is no older, unless it was the very last of its list)."""
    if not full:
        return since
    return load.query(
        "SELECT min(TRY_CAST(created AS TIMESTAMPTZ)) FROM recs "
        "WHERE list_contains($1, listed_status)",
        [list(open_statuses)],
    )[0][0]


# Orders open at the last sync that no list read in this sync has returned (so far).
_NOT_LISTED = "FROM prior_open WHERE key NOT IN (SELECT key FROM recs WHERE key IS NOT NULL)"


def _missing(load: StreamLoad) -> int:
    return load.query(f"SELECT count(*) {_NOT_LISTED}")[0][0]
