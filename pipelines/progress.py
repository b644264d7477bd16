"""A live progress display for syncs run from a terminal (``make run``).

The CLI turns it on; assets report to it through :func:`report` whatever the executor, and it
redraws one status line on stderr (when stderr is a terminal; otherwise it prints a line per
finished stream, so CI logs stay readable). Each step runs in a process of its own, so the switch
is an environment variable (``AFFWH_PROGRESS``) the step processes inherit; each process draws
the streams of its own step.
"""

from __future__ import annotations

import os
import sys
import threading
import time

_lock = threading.Lock()
VARIABLE = "AFFWH_PROGRESS"
_streams: dict[str, int] = {}
_last_draw = 0.0


def enable() -> None:
    os.environ[VARIABLE] = "1"


def _enabled() -> bool:
    return os.environ.get(VARIABLE) == "1"


def _tty() -> bool:
    return sys.stderr.isatty()


def report(stream: str, records: int) -> None:
    """Records fetched for ``stream`` (called per page)."""
    global _last_draw
    if not _enabled():
        return
    with _lock:
        _streams[stream] = _streams.get(stream, 0) + records
        now = time.monotonic()
        if _tty() and now - _last_draw > 0.1:
            _last_draw = now
            parts = "  ".join(f"{k} {v:,}" for k, v in sorted(_streams.items()))
            sys.stderr.write("\r\033[K  fetching: " + parts[-150:])
            sys.stderr.flush()


def done(line: str) -> None:
    """A stream finished: print its one-line summary."""
    if not _enabled():
        return
    with _lock:
        if _tty():
            sys.stderr.write("\r\033[K")
        _streams.clear()
        sys.stderr.write(f"  {line}\n")
        sys.stderr.flush()
