"""Read an ``offset``/``limit`` list ahead of the walk, several pages in flight, overlapping by one.

The Marketer API gives no total, but once a full page is in, the next pages' offsets are known, so
a full walk need not wait for each page before asking for the next. Pages fetched concurrently
are not read in order, though, and a list that moves between two of them shifts every older
order by one place: an order entering the list above a boundary pushes the order at the boundary
onto a page that may already have been read, and it is lost, which a walk read in order never
does (it only sees that order twice). So pages read ahead overlap by one order: each asks from
the previous page's last order (``offset - 1``) and counts only when it starts with that very
order. Keys are unique, so a page that starts with it sits exactly where the previous page ended
when both were read: nothing fell between them. Any other answer (an empty page, a repeated page,
a list that moved) stops reading ahead for the rest of the walk, which goes on one page at a time
from where the checked pages end, as it always did.

Only pages the walk reaches are used: one asked for beyond the end of the list is dropped unread
(its error too); a page the walk needs raises its error in the walk's thread, after the client's
own bounded retries. The window opens gradually (two pages ahead, one more per page taken, up to
``depth``), so a short list asks for at most one page past its end, a long one at most
``depth - 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pipelines.sources.http import ApiResponse

Fetch = Callable[[int, int], ApiResponse]  # (offset, limit) -> the page's response


class OffsetReadAhead:
    """Up to ``depth`` overlapping pages of one list in flight, handed to the walk in order."""

    def __init__(self, fetch: Fetch, *, limit: int, depth: int, key: str) -> None:
        self.fetch = fetch
        self.limit = limit
        self.depth = max(1, depth)
        self.key = key
        self.stopped = False
        self._pool: ThreadPoolExecutor | None = None
        self._pending: dict[int, Future] = {}  # request offset -> its response
        self._taken = 0  # pages handed to the walk so far

    def next_page(self, offset: int, last_key: Any) -> tuple[ApiResponse | None, list, str | None]:
        """The page that goes on from ``offset`` (the previous page's last order, ``last_key``,
        is at ``offset - 1``).

        Returns (response, its records after the overlapping one, None) when the page starts with
        ``last_key``, else (None, [], why) and reading ahead stops: the caller asks for
        ``offset`` itself. A page holding only ``last_key`` means the list ends at ``offset``.
        """
        if self.stopped or last_key is None or offset < 1:
            return None, [], None
        start = offset - 1
        stride = self.limit - 1  # each page read ahead brings limit - 1 new orders
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.depth, thread_name_prefix="read-ahead")
        for ahead in range(min(self.depth, 2 + self._taken)):
            at = start + ahead * stride
            if at not in self._pending:
                self._pending[at] = self._pool.submit(self.fetch, at, self.limit)
        for stale in [at for at in self._pending if at < start]:
            self._pending.pop(stale).cancel()
        response = self._pending.pop(start).result()
        records = response.data["data"]
        first = records[0] if records and isinstance(records[0], dict) else None
        if first is not None and first.get(self.key) == last_key:
            self._taken += 1
            return response, records[1:], None
        if not records:
            why = f"page read ahead from offset {start} came back empty"
        elif any(isinstance(r, dict) and r.get(self.key) == last_key for r in records[1:]):
            why = f"page read ahead from offset {start} repeated orders of the previous page"
        else:
            why = (
                f"page read ahead from offset {start} did not start with the previous page's last order "
                "(the list moved, or a page was repeated or skipped)"
            )
        self.close()
        return None, [], why

    def close(self) -> None:
        """Stop reading ahead; requests not started are dropped, those in flight are waited for."""
        self.stopped = True
        for future in self._pending.values():
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
