"""OnlyTraffic Studio API: swap orders (``GET /swaps/orders``) and their two sides.

Docs: ``shared/api-docs/onlytraffic-studio-swap-orders.md``. What matters for correctness:

- A swap order record has **no status field**. Every status is requested explicitly, one list per
  ``status`` filter, and a record's status is the filter it was listed under (the loader falls
  back to ``Page.listed_status`` when ``$.status`` is absent; if the API ever sends one, it wins).
- Pagination is ``page`` (1-based) / ``page_size`` (default 50, **max 100**) with a ``pagination``
  block (``total``, ``total_pages``, ``has_next``). After the first page the remaining pages are
  fetched concurrently (the client bounds requests in flight). Pagination that lies (a total that
  moves, empty pages before the end, a list that keeps growing) is survived and reported, never
  looped on forever.
- ``from``/``to`` (``YYYY-MM-DD``, UTC, inclusive) bound the created date: the incremental read of
  a terminal list asks ``from=<since date>``; a partition-range run asks ``from``/``to``.
- Assumption (docs silent on errors): the error format is
  ``{"success": false, "error": {"code": ..., "message": ...}}``, sent with HTTP 422 for invalid
  parameters and possibly with HTTP 200 for rate limits. :func:`studio_envelope` accepts only
  ``{"success": true, "data": [...]}``; anything else is an error, never an empty page.
- Assumptions (docs silent): without ``role`` both roles are listed; money (``guaranteed_price``,
  ``subscribe_price``, ``transactions_sum``, ``arpu``) is in USD units, not cents.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from models.status import open_raw_statuses, terminal_raw_statuses
from pipelines.sources.fetch import Emit
from pipelines.sources.http import ApiClient, ApiError, AuthError
from pipelines.sources.page_shape import PageShape
from pipelines.sources.status_list import WalkOutcome
from pipelines.page import Page

SWAP_PATH = "/swaps/orders"
MAX_PAGE_SIZE = 100
OPEN_STATUSES = open_raw_statuses("swap")
TERMINAL_STATUSES = terminal_raw_statuses("swap")
# Error codes (or HTTP statuses) in an error body that mean "slow down and retry".
_RETRYABLE_CODES = {"rate_limited", "rate_limit_exceeded", "too_many_requests", "429", "server_error"}
_AUTH_CODES = {"unauthorized", "forbidden", "invalid_api_key", "401", "403"}


def studio_envelope(data: Any, http_status: int) -> None:
    """Raise for anything but ``{"success": true, "data": [...]}`` (rate limits are retryable)."""
    if not isinstance(data, dict):
        raise ApiError(f"expected a JSON object, got {type(data).__name__}")
    if data.get("success") is True:
        if not isinstance(data.get("data"), list):
            raise ApiError("success envelope without a 'data' list")
        return
    error = data.get("error")
    if data.get("success") is not False and not error:
        raise ApiError(f"unexpected envelope in HTTP {http_status} body: no success flag, no error")
    if isinstance(error, dict):
        code = str(error.get("code", "")).lower()
        message = str(error.get("message") or "no message")
    else:
        code, message = "", str(error or data.get("message") or "no message")
    described = f"error {code or 'without code'} in HTTP {http_status} body: {message[:300]}"
    if code in _AUTH_CODES:
        raise AuthError(described, status_code=http_status)
    retryable = code in _RETRYABLE_CODES or http_status == 429 or http_status >= 500
    raise ApiError(described, status_code=http_status, retryable=retryable)


@dataclass
class _Fetched:
    """One page: what it brought and what its pagination block claimed."""

    number: int
    records: int
    keys: int  # a hash of the page's keys (0 when empty): enough to spot a repeated page
    total: int | None
    total_pages: int | None
    has_next: bool | None


@dataclass
class _WalkState:
    """What one walk has seen so far; pages may arrive from several threads."""

    outcome: WalkOutcome
    label: str
    first_total: int | None = None
    records: int = 0
    warned_total: bool = False
    degraded: bool = False  # pages repeated or came back empty: the list may not be whole
    lock: threading.Lock = field(default_factory=threading.Lock)

    def observe(self, page: _Fetched) -> None:
        with self.lock:
            self.records += page.records
            if page.has_next is True and page.total_pages is not None and page.number >= page.total_pages:
                self.warn(
                    f"page {page.number} says has_next but total_pages is {page.total_pages}; "
                    "stopped at total_pages"
                )
            if (
                page.total is not None
                and self.first_total is not None
                and page.total != self.first_total
                and not self.warned_total
            ):
                self.warned_total = True
                self.outcome.moved = True  # an order may have fallen between two pages
                self.warn(
                    f"total changed from {self.first_total} to {page.total} between pages "
                    "(the list moved while it was read)"
                )

    def warn(self, message: str) -> None:
        self.outcome.warnings.append(f"{self.label}: {message}")

    def unobserve(self, page: _Fetched) -> None:
        """A page read again: its first reading does not count."""
        with self.lock:
            self.records -= page.records


class PageStatusListing:
    """One ``page``/``page_size`` list per status filter (the Studio API's pagination).

    Implements the ``StatusListing`` protocol of :mod:`pipelines.feeds.incremental`; ``walk_range``
    serves partition-range runs (every order created between two dates, inclusive).
    """

    open_statuses = OPEN_STATUSES
    terminal_statuses = TERMINAL_STATUSES

    def __init__(
        self,
        client: ApiClient,
        path: str = SWAP_PATH,
        *,
        label: str = "swap_orders",
        page_size: int = MAX_PAGE_SIZE,
        concurrency: int = 4,
        key: str = "order_id",
    ) -> None:
        self.client = client
        self.path = path
        self.label = label
        self.page_size = max(1, min(page_size or MAX_PAGE_SIZE, MAX_PAGE_SIZE))
        self.concurrency = max(1, concurrency)
        self.key = key
        # what the walk and studio_envelope read of a page: nothing else is decoded in Python
        self.shape = PageShape(members=("success", "error", "message", "pagination"), records="data", keys=(key,))

    # -- the StatusListing protocol --------------------------------------------------------------

    def walk(self, status: str, since: datetime | None, emit: Emit[Page]) -> WalkOutcome:
        """A whole status list, or (with ``since``) only orders created on or after its date.

        ``from`` is date-granular and inclusive, so a few known orders of that day come back
        (harmless). ``complete`` is only claimed for a whole list: the caller re-reads terminal
        lists in full when an order that left the open lists is not found.
        """
        params: dict[str, Any] = {"status": status, "sort": "created_at_desc"}
        if since is not None:
            params["from"] = since.astimezone(UTC).date().isoformat()
        outcome = self._walk(status, params, emit)
        if since is not None:
            outcome.complete = False
        return outcome

    def walk_range(self, status: str, first_day: date, last_day: date, emit: Emit[Page]) -> WalkOutcome:
        """Every order in ``status`` created from ``first_day`` to ``last_day`` (UTC, inclusive)."""
        params = {
            "status": status,
            "sort": "created_at_desc",
            "from": first_day.isoformat(),
            "to": last_day.isoformat(),
        }
        return self._walk(status, params, emit)

    # -- pagination --------------------------------------------------------------------------------

    def _fetch(self, params: dict[str, Any], number: int, emit: Emit[Page], status: str) -> _Fetched:
        response = self.client.get(
            self.path, params={**params, "page": number, "page_size": self.page_size}, shape=self.shape
        )
        body = response.data
        records = body["data"]
        pagination = body.get("pagination") if isinstance(body.get("pagination"), dict) else {}
        emit(Page(response.content, len(records), listed_status=status, label=f"{self.label}:{status}"))
        return _Fetched(
            number=number,
            records=len(records),
            keys=hash(frozenset(r.get(self.key) for r in records if isinstance(r, dict))) if records else 0,
            total=_int_or_none(pagination.get("total")),
            total_pages=_int_or_none(pagination.get("total_pages")),
            has_next=pagination.get("has_next") if isinstance(pagination.get("has_next"), bool) else None,
        )

    def _is_last(self, page: _Fetched) -> bool:
        """The end of a list: ``has_next`` false, at or past ``total_pages``, an empty page, or
        (without a pagination block) a short page."""
        if page.has_next is False or page.records == 0:
            return True
        if page.total_pages is not None and page.number >= page.total_pages:
            return True
        return page.has_next is None and page.total_pages is None and page.records < self.page_size

    def _walk(self, status: str, params: dict[str, Any], emit: Emit[Page]) -> WalkOutcome:
        outcome = WalkOutcome(status, complete=False)
        state = _WalkState(outcome, f"{self.label}:{status}")
        first = self._fetch(params, 1, emit, status)
        state.first_total = first.total
        state.observe(first)
        if self._is_last(first):
            if first.has_next is False and first.total_pages not in (None, 0, 1):
                state.degraded = True
                state.warn(f"has_next false on page 1 of {first.total_pages}; stopped there")
            return self._finish(state, complete=True)

        planned = first.total_pages
        # Enough headroom for a list that grows while it is read, never unbounded.
        cap = 2 * planned + 10 if planned else 10_000
        last = first
        if planned and planned > 1:
            pages = self._fetch_concurrently(params, range(2, planned + 1), emit, status, state)
            suspicious = _suspicious(first, pages, planned)
            if suspicious:  # an empty or repeated page may be a glitch: each is asked for once more
                again = {n: self._fetch(params, n, emit, status) for n in sorted(suspicious)}
                for page in pages:
                    if page.number in again:
                        state.unobserve(page)
                        state.observe(again[page.number])
                pages = [again.get(p.number, p) for p in pages]
                still = _suspicious(first, pages, planned)
                for number, what in sorted(suspicious.items()):
                    if number not in still:
                        state.warn(f"page {number} {what}; read again")
            self._refetch_where_the_list_moved(params, [first, *pages], emit, status, state)
            seen: dict[int, int] = {first.keys: 1} if first.keys else {}
            empty = [p.number for p in pages if p.records == 0 and p.number <= planned]
            repeated = []
            for page in pages:
                if page.keys and page.keys in seen:
                    repeated.append(f"{page.number}={seen[page.keys]}")
                seen.setdefault(page.keys, page.number)
            if empty:
                state.degraded = True
                state.warn(f"{len(empty)} page(s) of {planned} came back empty (e.g. page {empty[0]})")
            if repeated:
                state.degraded = True
                state.warn(f"{len(repeated)} page(s) repeated an earlier page (e.g. page {repeated[0]})")
            last = pages[-1]
            if self._is_last(last):
                return self._finish(state, complete=True)
            state.warn(f"the list grew past the {planned} page(s) announced; reading on")

        number = last.number
        previous_keys = last.keys
        repeats = 0
        empty_again = False
        while number < cap:
            number += 1
            page = self._fetch(params, number, emit, status)
            state.observe(page)
            if page.keys and page.keys == previous_keys:
                repeats += 1
                state.unobserve(page)
                state.warn(f"page {number} repeated the previous page; asked again")
                if repeats >= 3:
                    state.degraded = True
                    state.warn(f"pagination stuck at page {number}; list not complete")
                    return self._finish(state, complete=False)
                number -= 1  # the same page again: its own records are still to come
                continue
            repeats = 0
            previous_keys = page.keys
            before_end = page.records == 0 and page.total_pages is not None and number <= page.total_pages
            if before_end and not empty_again:  # may be a glitch: asked for once more
                empty_again = True
                number -= 1
                continue
            if page.records and empty_again:
                state.warn(f"page {number} came back empty once; read again")
            empty_again = False
            if self._is_last(page):
                if before_end:
                    state.degraded = True
                    state.warn(f"page {number} of {page.total_pages} was empty; stopped there")
                return self._finish(state, complete=True)
        state.warn(f"stopped after {cap} pages; list not complete")
        return self._finish(state, complete=False)

    def _refetch_where_the_list_moved(
        self, params: dict[str, Any], pages: list[_Fetched], emit: Emit[Page], status: str, state: _WalkState
    ) -> None:
        """Ask again for both pages at each boundary where the list changed size between them.

        Pages after the first are fetched concurrently, so not in order. An order entering the
        list (moved from another status) shifts every older order one place down: the one pushed
        from page k to page k+1 is lost if page k+1 was fetched before the move and page k after
        it; an order leaving shifts them up, and the one pulled from page k+1 to page k is lost if
        page k was fetched before and page k+1 after. Either way the two pages report different
        totals, and reading both again now finds the order (what they brought first is kept: the
        loader counts an order once)."""
        ordered = sorted(pages, key=lambda p: p.number)
        again: set[int] = set()
        for a, b in zip(ordered, ordered[1:], strict=False):
            if a.total is not None and b.total is not None and a.total != b.total and b.number == a.number + 1:
                again.update((a.number, b.number))
        if again:
            state.warn(f"{len(again)} page(s) around a change of the total read again")
            for number in sorted(again):
                self._fetch(params, number, emit, status)

    def _fetch_concurrently(
        self, params: dict[str, Any], numbers: range, emit: Emit[Page], status: str, state: _WalkState
    ) -> list[_Fetched]:
        """Fetch known pages in parallel; the first failure stops the rest and is re-raised."""
        stop = threading.Event()

        def one(number: int) -> _Fetched | None:
            if stop.is_set():
                return None
            try:
                page = self._fetch(params, number, emit, status)
            except BaseException:
                stop.set()
                raise
            state.observe(page)
            return page

        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(numbers)), thread_name_prefix="studio-page") as pool:
            futures = [pool.submit(one, n) for n in numbers]
            error: BaseException | None = None
            results = []
            for future in futures:
                try:
                    results.append(future.result())
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    error = error or exc
            if error is not None:
                raise error
        return [r for r in results if r is not None]

    def _finish(self, state: _WalkState, *, complete: bool) -> WalkOutcome:
        state.outcome.complete = complete and not state.degraded
        state.outcome.degraded = state.degraded
        if state.degraded:
            state.warn("pagination misbehaved; list not complete")
        total = state.first_total
        if complete and total is not None and not state.warned_total and state.records != total:
            state.warn(f"served {state.records} record(s) but announced a total of {total}")
        return state.outcome


def _suspicious(first: _Fetched, pages: list[_Fetched], planned: int) -> dict[int, str]:
    """Pages of a planned walk that look wrong: empty although page 1 announced it (every page
    up to ``total_pages`` has records), or repeating an earlier page (number -> what is wrong)."""
    seen: dict[int, int] = {first.keys: 1} if first.keys else {}
    found = {}
    for page in pages:
        if page.records == 0 and page.number <= planned:
            found[page.number] = "came back empty"
        elif page.keys and page.keys in seen:
            found[page.number] = f"repeated page {seen[page.keys]}"
        seen.setdefault(page.keys, page.number)
    return found


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
