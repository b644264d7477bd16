"""Metapic API v2 client: campaigns (offers), their participants, and participants' daily statistics.

Docs: ``shared/api-docs/metapic-api-v2.md``. What matters for correctness:

- ``GET /v2/offers`` requires ``created_by`` (``METAPIC_USER_ID``; Laravel 422 without it) and lists
  only *active* offers unless ``statuses[]`` is given, so every status is listed explicitly.
  ``include[]=trafficSourcesCosts&include[]=store`` brings ``store_name``, ``currency`` and the
  costs into the list: no per-offer detail request. ``size`` is at most 100.
- Lists are Laravel pages (``data``, ``links``, ``meta.current_page/last_page/total``);
  :func:`walk_pages` follows ``meta.last_page`` whatever page size the server really uses.
- Errors: 401 ``{"message": "Unauthenticated."}`` (the client raises :class:`AuthError`), 422
  ``{"message", "errors"}``, and a 200 body with a ``message`` but no ``data`` is an error
  (:func:`metapic_envelope`), never an empty page.
- The API allows 300 requests per window (``x-ratelimit-*``): the client's rate limiter is shared
  by every client of the process (``RateLimiter.shared``, built by ``MetapicResource``, which also
  sends the token as the ``Authorization`` header).
- Pages are labelled ``offers``, ``participants:<offer_id>`` and ``stats:<offer_id>:<day>``: the
  feeds read the offer id (and day) of a participant record from its page's label.

Assumptions where the docs are silent:

- A 200 body with only a ``message`` is transient (e.g. "Too Many Attempts."): retried, bounded.
- Omitting ``active`` on participants-stats returns every participant; days are UTC days.

How records become rows (participant keys, e-mail scrubbing, the snapshot rule, the final read of
ended campaigns) is the feeds' part: :mod:`pipelines.feeds.metapic_specs` and the modules it names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import orjson

from models.status import STATUS_MAPPINGS, terminal_raw_statuses
from pipelines.sources.fetch import Emit
from pipelines.sources.http import ApiClient, ApiError, AuthError
from pipelines.page import Page

OFFERS_PATH = "/v2/offers"
OFFER_STATUSES = tuple(STATUS_MAPPINGS["metapic_offer"])  # every status, to list every offer
TERMINAL_OFFER_STATUSES = terminal_raw_statuses("metapic_offer")
OFFER_INCLUDES = ("trafficSourcesCosts", "store")
MAX_PAGE_SIZE = 100
MAX_PAGES = 10_000  # a list that never ends is a server bug, not data

LogFn = Callable[[str], None]

# -- envelope --------------------------------------------------------------------------------------


def metapic_envelope(data: Any, http_status: int) -> None:
    """Raise for an error reported in a (2xx) Laravel body; accept only an object with ``data``."""
    if not isinstance(data, dict):
        raise ApiError(f"expected a JSON object, got {type(data).__name__}", retryable=True)
    if "data" in data:
        return
    message = str(data.get("message") or "").strip()
    errors = data.get("errors")
    if isinstance(errors, dict) and errors:
        fields = ", ".join(sorted(str(k) for k in errors)[:10])
        raise ApiError(f"validation failed on {fields}: {message[:200]}", status_code=422)
    if message == "Unauthenticated.":
        raise AuthError(f"HTTP {http_status} body says {message!r}", status_code=401)
    if message:
        raise ApiError(f"error in HTTP {http_status} body: {message[:200]}", retryable=True)
    raise ApiError(f"HTTP {http_status} body has neither 'data' nor 'message'", retryable=True)


# -- Laravel pages -----------------------------------------------------------------------------------


@dataclass
class ListWalk:
    """What one walk of a paginated list saw."""

    label: str
    records: int = 0
    pages: int = 0
    total: int | None = None
    complete: bool = False  # every page read, at least ``meta.total`` records, and the total never moved
    moved: bool = False  # ``meta.total`` changed between pages: the list shifted while it was read
    not_found: bool = False  # HTTP 404: the list's parent (an offer) no longer exists
    warnings: list[str] = field(default_factory=list)


def walk_pages(
    client: ApiClient,
    path: str,
    params: dict[str, Any],
    emit: Emit[Page],
    *,
    label: str,
    size: int,
    allow_not_found: bool = False,
) -> ListWalk:
    """Emit every page of a Laravel-paginated list, following ``meta.last_page``.

    A page that repeats the previous one, or comes back empty before the last page, is asked for
    once more before the walk gives up on the list (not complete, with a warning). A total that
    changes between pages means records were added or removed while the list was read, so a record
    may have shifted onto a page already read: the walk is reported and never counts as complete,
    even when the number of records received matches the last total.
    """
    walk = ListWalk(label)
    page = 1
    previous_hash: int | None = None
    first_total: int | None = None
    asked_again: str | None = None  # what was wrong with the page asked for once more
    while True:
        try:
            response = client.get(path, params={**params, "size": size, "page": page})
        except ApiError as err:
            if allow_not_found and err.status_code == 404 and not isinstance(err, AuthError):
                walk.not_found = True
                walk.warnings.append(f"{label}: HTTP 404, kept as last seen")
                return walk
            raise
        body = response.data
        records = body["data"]
        if not isinstance(records, list):
            raise ApiError(f"{label}: 'data' is a {type(records).__name__}, not a list")
        meta = body.get("meta") if isinstance(body.get("meta"), dict) else {}
        links = body.get("links") if isinstance(body.get("links"), dict) else {}
        total, last_page, current = (_int(meta.get(k)) for k in ("total", "last_page", "current_page"))
        more = page < last_page if last_page is not None else bool(links.get("next"))
        page_hash = hash(orjson.dumps(records)) if records else None
        repeated = page_hash is not None and page_hash == previous_hash
        # empty, although more pages follow or the total says records are still to come
        hollow = not records and (more or (total is not None and walk.records < total))
        if (repeated or hollow) and asked_again is None:
            # a glitch or a lie: ask for the same page once more
            asked_again = "repeated the previous page" if repeated else "came back empty"
            continue
        if asked_again is not None and not repeated and records:
            walk.warnings.append(f"{label}: page {page} {asked_again} once; read again")
        if repeated:
            walk.warnings.append(f"{label}: page {page} repeated the previous page; list not complete")
            return walk
        asked_again = None
        previous_hash = page_hash
        emit(Page(response.content, len(records), label=label))
        walk.records += len(records)
        walk.pages += 1
        if total is not None:
            if first_total is None:
                first_total = total
            elif total != first_total and not walk.moved:
                walk.moved = True
                walk.warnings.append(
                    f"{label}: total changed from {first_total} to {total} between pages "
                    "(the list moved while it was read); list not complete"
                )
            walk.total = total
        if current is not None and current != page:
            walk.warnings.append(f"{label}: asked for page {page}, got page {current}; list not complete")
            return walk
        if more and not records:
            walk.warnings.append(f"{label}: page {page} is empty before the last page; list not complete")
            return walk
        if not more:
            walk.complete = (walk.total is None or walk.records >= walk.total) and not walk.moved
            if not walk.complete and not walk.moved:
                walk.warnings.append(f"{label}: received {walk.records} of {walk.total} records")
            return walk
        if page >= MAX_PAGES:
            walk.warnings.append(f"{label}: stopped after {MAX_PAGES} pages; list not complete")
            return walk
        page += 1


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# -- endpoints -------------------------------------------------------------------------------------


def participants_path(offer_id: int) -> str:
    return f"{OFFERS_PATH}/{offer_id}/participants"


def participant_stats_path(offer_id: int) -> str:
    return f"{OFFERS_PATH}/{offer_id}/participants-stats"


@dataclass
class Fetcher:
    """What every Metapic sync needs besides the warehouse: the client, who asks (``created_by``),
    the page size, how many lists are read at once, and where progress and log lines go."""

    client: ApiClient
    user_id: str
    page_size: int = MAX_PAGE_SIZE
    max_workers: int = 4
    log: LogFn = lambda _m: None
    on_progress: Callable[[str, int], None] | None = None

    @property
    def size(self) -> int:
        return max(1, min(self.page_size or MAX_PAGE_SIZE, MAX_PAGE_SIZE))

    def progress(self, label: str, records: int) -> None:
        """Progress per list kind (``participants``), not per offer."""
        if self.on_progress:
            self.on_progress(label.split(":", 1)[0], records)

    def offers(self, emit: Emit[Page]) -> ListWalk:
        """Every campaign, every status, with its costs and store, in pages labelled ``offers``."""
        params = {
            "created_by": self.user_id,
            "statuses[]": list(OFFER_STATUSES),
            "include[]": list(OFFER_INCLUDES),
            "sort_by": "id:asc",  # stable pages: new offers arrive at the end
        }
        return walk_pages(self.client, OFFERS_PATH, params, emit, label="offers", size=self.size)

    def participants(self, offer_id: int, emit: Emit[Page]) -> ListWalk:
        """One campaign's participants, in pages labelled ``participants:<offer_id>`` (404: kept as last seen)."""
        return walk_pages(
            self.client, participants_path(offer_id), {}, emit,
            label=f"participants:{offer_id}", size=self.size, allow_not_found=True,
        )

    def participant_stats(self, offer_id: int, day: date, emit: Emit[Page]) -> ListWalk:
        """One campaign's participants-stats of one UTC day (``start_date = end_date = day``), in
        pages labelled ``stats:<offer_id>:<day>`` (404: kept as last seen)."""
        params = {"start_date": day.isoformat(), "end_date": day.isoformat()}
        return walk_pages(
            self.client, participant_stats_path(offer_id), params, emit,
            label=f"stats:{offer_id}:{day.isoformat()}", size=self.size, allow_not_found=True,
        )
