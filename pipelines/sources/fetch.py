"""Run several page producers at once and hand their pages to one consumer, with backpressure.

Fetching is I/O-bound and loading is DuckDB-bound (which releases the GIL), so producers run in
threads while the calling thread loads. The queue is bounded: a slow loader slows the fetchers
instead of letting pages pile up in memory. The first error stops every producer and is re-raised
in the caller; nothing is committed by this module.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
Emit = Callable[[T], None]
Producer = Callable[[Emit], object]

_DONE = object()


class Cancelled(Exception):
    """Raised inside a producer when another producer failed."""


def run_producers(
    producers: list[Producer],
    consume: Callable[[T], None],
    *,
    max_workers: int = 4,
    queue_size: int = 16,
) -> list[object]:
    """Run ``producers`` concurrently; each calls ``emit(item)``; ``consume`` runs in this thread.

    Returns each producer's return value, in order.
    """
    if not producers:
        return []
    q: queue.Queue = queue.Queue(maxsize=queue_size)
    stop = threading.Event()
    results: list[object] = [None] * len(producers)
    errors: list[BaseException] = []

    def emit(item: T) -> None:
        while True:
            if stop.is_set():
                raise Cancelled()
            try:
                q.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def run(index: int, producer: Producer) -> None:
        try:
            if stop.is_set():
                return  # another producer failed: do not start requests nobody will use
            results[index] = producer(emit)
        except Cancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)
            stop.set()
        finally:
            q.put(_DONE)

    with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(producers)))) as pool:
        for i, p in enumerate(producers):
            pool.submit(run, i, p)
        finished = 0
        try:
            while finished < len(producers):
                item = q.get()
                if item is _DONE:
                    finished += 1
                    continue
                if not stop.is_set():
                    consume(item)
        except BaseException:
            stop.set()
            # drain so blocked producers can exit
            while finished < len(producers):
                try:
                    if q.get(timeout=0.5) is _DONE:
                        finished += 1
                except queue.Empty:
                    continue
            raise
    if errors:
        raise errors[0]
    return results
