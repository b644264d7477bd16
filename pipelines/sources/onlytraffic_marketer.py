"""OnlyTraffic Marketer API: CPC orders (and CPL orders, same API family).

Docs: ``shared/api-docs/onlytraffic-marketer-cpc-orders.openapi.md`` and
``onlytraffic-marketer-cpl-orders.md``. What matters for correctness:

- The list endpoints return only *active* orders unless ``status`` is passed (CPC), or an
  undocumented default subset (CPL), so every status is requested explicitly, one list per status.
- CPL statuses: the fact sheet lists waiting, accepted, rejected, completed; ``cancelled`` is in our
  mapping (and the Studio API's enum) so it is requested too. Assumption (docs silent): money is in
  USD units, ``clicks`` is NULL for campaigns that are not link-based.
- Errors arrive as ``{"status": "error", "error_code": 422|404|429, "message": ...}``, possibly with
  HTTP 200: :func:`marketer_envelope` turns them into errors (429 is retried), never empty pages.
- Pagination is ``offset``/``limit`` (max 1000) with no total: a page shorter than ``limit`` ends a
  list.
- Assumption (docs silent): lists are ordered newest-created first. The incremental terminal-list
  read relies on it only after checking it page by page (see :mod:`pipelines.feeds.incremental`).
- The lists have no sort parameter and no date filter, and move while they are read (an order
  accepted or completed between two requests shifts the list under ``offset``): pages are taken
  in order, so an order entering a list only repeats one (counted once); what leaving orders make
  a walk skip is handled across lists in :mod:`pipelines.feeds.incremental`.
- A full walk reads ahead (:mod:`pipelines.sources.read_ahead`): once a full page is in, the next
  ``concurrency`` pages are asked for at once, each overlapping the previous one by one order and
  used only if it starts with that order, so concurrency loses nothing a walk in order would keep.
  A walk with ``since`` reads one page at a time: it usually stops after its first small page.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from models.status import open_raw_statuses, terminal_raw_statuses
from pipelines.sources.fetch import Emit
from pipelines.sources.http import ApiClient, ApiError, AuthError
from pipelines.sources.page_shape import PageShape
from pipelines.sources.read_ahead import OffsetReadAhead
from pipelines.sources.status_list import WalkOutcome
from pipelines.page import Page

CPC_PATH = "/api/marketer/cpc/orders"
CPL_PATH = "/api/marketer/cpl/orders"
MAX_LIMIT = 1000
# An incremental read of a terminal list starts with a small page: usually nothing new is there,
# and the probe should not re-download a thousand orders we already have.
PROBE_LIMIT = 100


def marketer_envelope(data: Any, http_status: int) -> None:
    """Raise for the Marketer API's error envelope; accept only a success envelope with a list."""
    if not isinstance(data, dict):
        raise ApiError(f"expected a JSON object, got {type(data).__name__}")
    if data.get("status") == "error":
        code = data.get("error_code")
        message = str(data.get("message") or "no message")
        if code in (401, 403):
            raise AuthError(f"error {code} in body: {message}", status_code=code)
        retryable = code == 429 or (isinstance(code, int) and code >= 500)
        raise ApiError(f"error {code} in body: {message}", status_code=code, retryable=retryable)
    if data.get("status") != "success":
        raise ApiError(f"unexpected envelope status {str(data.get('status'))[:40]!r}")
    if not isinstance(data.get("data"), list):
        raise ApiError("success envelope without a 'data' list")


def record_time(record: dict, name: str = "created_at") -> datetime | None:
    """A record's timestamp from its Unix twin (``*_ts``) or its ISO string."""
    ts = record.get(f"{name}_ts")
    if isinstance(ts, int | float) and not isinstance(ts, bool):
        return datetime.fromtimestamp(ts, UTC)
    text = record.get(name)
    if isinstance(text, str):
        try:
            value = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return None
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return None


class OffsetStatusListing:
    """One ``offset``/``limit`` list per status, as the Marketer API serves them."""

    def __init__(
        self,
        client: ApiClient,
        path: str,
        *,
        open_statuses: tuple[str, ...],
        terminal_statuses: tuple[str, ...],
        label: str,
        key: str = "order_id",
        limit: int = MAX_LIMIT,
        extra_params: dict[str, Any] | None = None,
        optional_statuses: tuple[str, ...] = (),
        concurrency: int = 1,
    ) -> None:
        self.client = client
        self.path = path
        self.open_statuses = open_statuses
        self.terminal_statuses = terminal_statuses
        self.label = label
        self.key = key
        self.limit = min(limit, MAX_LIMIT)
        self.extra_params = extra_params or {}
        # Statuses the docs do not list (CPL ``cancelled``): if the API rejects the filter as
        # invalid (422), that list is treated as empty with a warning instead of failing the run.
        self.optional_statuses = optional_statuses
        self.concurrency = max(1, concurrency)
        # what the walk and marketer_envelope read of a page: nothing else is decoded in Python
        self.shape = PageShape(
            members=("status", "error_code", "message"), records="data", keys=(key, "created_at", "created_at_ts")
        )

    def walk(self, status: str, since: datetime | None, emit: Emit[Page]) -> WalkOutcome:
        """Read one status list page by page. The API gives no total, so a page is trusted only
        after checks: a page repeating the previous one is asked for again (up to 3 times), and an
        EMPTY page after full ones is asked for again, then read once more starting one order
        earlier (``offset - 1``): a list that really ends there answers with just the previous
        page's last order, while a page that lies answers with that order and the ones after it,
        which the walk takes and goes on from (a short non-empty page ends the list at once)."""
        outcome = WalkOutcome(status, complete=False)
        label = f"{self.label}:{status}"
        limit = min(PROBE_LIMIT, self.limit) if since is not None else self.limit
        ahead = None
        if since is None and self.concurrency > 1 and self.limit > 1:
            ahead = OffsetReadAhead(
                lambda at, size: self.client.get(
                    self.path,
                    params={**self.extra_params, "status": status, "offset": at, "limit": size},
                    shape=self.shape,
                ),
                limit=self.limit,
                depth=self.concurrency,
                key=self.key,
            )
        try:
            return self._walk(status, since, emit, outcome, label, limit, ahead)
        finally:
            if ahead is not None:
                ahead.close()

    def _walk(
        self,
        status: str,
        since: datetime | None,
        emit: Emit[Page],
        outcome: WalkOutcome,
        label: str,
        limit: int,
        ahead: OffsetReadAhead | None,
    ) -> WalkOutcome:
        offset = 0
        previous_keys: set = set()
        previous_oldest: datetime | None = None
        repeats = 0
        empty_checks = 0  # 1: the empty page was asked again; 2: read again from one order earlier
        hole_at: int | None = None  # the offset of a page that came back empty twice
        last_key = None  # the last order of the previous page
        while True:
            response = None
            if ahead is not None and hole_at is None and not empty_checks and not repeats and limit == self.limit:
                response, records, why = ahead.next_page(offset, last_key)
                if why:
                    outcome.warnings.append(f"{label}: {why}; read on one page at a time from offset {offset}")
                if response is not None:
                    served = len(records) + 1  # the overlapping order counts towards a full page
                    if not records:  # only the previous page's last order: the list ends there
                        outcome.complete = not outcome.degraded
                        return outcome
            if response is None:
                params = {**self.extra_params, "status": status, "offset": offset, "limit": limit}
                try:
                    response = self.client.get(self.path, params=params, shape=self.shape)
                except ApiError as err:
                    if offset == 0 and status in self.optional_statuses and err.status_code == 422:
                        outcome.complete = True
                        outcome.warnings.append(
                            f"{label}: the API rejected this status filter ({err.reason}); treated as an empty list"
                        )
                        return outcome
                    raise
                records = response.data["data"]
                served = len(records)
            keys = {r.get(self.key) for r in records if isinstance(r, dict)}
            if hole_at is not None:  # the read from one order before a page that stayed empty
                first = records[0].get(self.key) if records and isinstance(records[0], dict) else None
                if first is None or first != last_key:
                    # the previous page's last order is not where it was: the list moved or the API
                    # keeps lying; with no total, what follows the empty page cannot be known
                    outcome.warnings.append(
                        f"{label}: page at offset {hole_at} stayed empty and the read from offset "
                        f"{offset} did not start with the previous page's last order; orders from "
                        f"{hole_at} on may be missing; list not complete"
                    )
                    outcome.degraded = True
                    return outcome
                if len(records) == 1:  # the list really ends at the empty page
                    outcome.complete = not outcome.degraded
                    return outcome
                outcome.warnings.append(
                    f"{label}: page at offset {hole_at} stayed empty, but the read from offset {offset} "
                    f"returned its orders; read on from there"
                )
                hole_at, empty_checks, previous_keys = None, 0, set()
            if records and keys and keys == previous_keys:
                repeats += 1
                outcome.warnings.append(f"{label}: page at offset {offset} repeated the previous page; asked again")
                if repeats >= 3:
                    outcome.warnings.append(f"{label}: pagination stuck at offset {offset}; list not complete")
                    return outcome
                continue  # the same offset again: its own records are still to come
            repeats = 0
            if not records and offset > 0 and empty_checks < 2:
                empty_checks += 1
                if empty_checks == 2:  # empty twice: read again from the previous page's last order
                    hole_at = offset
                    offset -= 1
                continue
            if records and empty_checks:
                outcome.warnings.append(f"{label}: page at offset {offset} came back empty once; read again")
                empty_checks = 0
            emit(Page(response.content, len(records), listed_status=status, label=label))
            if served < limit:
                outcome.complete = not outcome.degraded
                return outcome
            if since is not None:
                times = [record_time(r) for r in records if isinstance(r, dict)]
                if not _newest_first(times, previous_oldest):
                    outcome.out_of_order = True
                    return outcome
                oldest = times[-1] if times else None
                if oldest is not None and oldest < since:
                    return outcome
                previous_oldest = oldest
            previous_keys = keys
            last = records[-1]
            last_key = last.get(self.key) if isinstance(last, dict) else None
            offset += len(records)
            limit = self.limit


def _newest_first(times: list[datetime | None], previous_oldest: datetime | None) -> bool:
    known = [t for t in times if t is not None]
    if len(known) != len(times):
        return False
    if previous_oldest is not None and known and known[0] > previous_oldest:
        return False
    return all(a >= b for a, b in zip(known, known[1:], strict=False))


# The raw statuses of each list come from models/status.py (mappings "cpc" and "cpl", the ``source``
# of the feeds' table specs in pipelines/feeds/onlytraffic_marketer.py).


def cpc_listing(client: ApiClient, limit: int = MAX_LIMIT, concurrency: int = 1) -> OffsetStatusListing:
    return OffsetStatusListing(
        client,
        CPC_PATH,
        open_statuses=open_raw_statuses("cpc"),
        terminal_statuses=terminal_raw_statuses("cpc"),
        label="cpc_orders",
        limit=limit,
        concurrency=concurrency,
    )


def cpl_listing(client: ApiClient, limit: int = MAX_LIMIT, concurrency: int = 1) -> OffsetStatusListing:
    return OffsetStatusListing(
        client,
        CPL_PATH,
        open_statuses=open_raw_statuses("cpl"),
        terminal_statuses=terminal_raw_statuses("cpl"),
        label="cpl_orders",
        limit=limit,
        concurrency=concurrency,
        optional_statuses=("cancelled",),
    )
