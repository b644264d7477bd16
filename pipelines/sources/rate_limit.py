"""A client-side rate limit that every process of this machine shares, per API account.

Why across processes: each feed is a Dagster step in a process of its own, and ``make run`` runs
two syncs back to back. An in-memory window per process lets Metapic's offers, participants and
stats steps each believe they own the whole documented budget (300 requests a minute), and lets
a new process start with an empty window right after the last one spent it: the server answers
429 and the sync waits out a whole window. So the window lives in a small file that every
process using the same account (base URL, user, limit and window) reads and writes under an
exclusive ``flock``.

The file is a ring of the last ``max_calls`` start times (wall-clock seconds, 8 bytes each) after
a header (the next slot, and a pause set when the server reports the window spent). A request may
start once the oldest of the last ``max_calls`` starts, the one in the next slot, is at least
``period`` seconds old: an exact sliding window, O(1) per request whatever the limit. No secret
reaches the file or its name: the name is a hash of the account.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import struct
import tempfile
import threading
import time
from pathlib import Path

_HEADER = struct.Struct("<qd")  # next slot, paused until (epoch seconds)
_SLOT = struct.Struct("<d")
# A window file nobody has written for this long holds no start that could still count (every
# acquire writes it), so it is removed: test runs and sandboxes leave one per account they saw.
STALE_AFTER_SECONDS = 7 * 24 * 3600


def state_folder() -> Path:
    """Where the windows live: the machine's temp folder, one folder per user."""
    return Path(tempfile.gettempdir()) / f"affwh-rate-limits-{os.getuid()}"


def remove_stale_windows(older_than: float) -> int:
    """Remove the window files not written for ``older_than`` seconds; how many went."""
    cutoff, removed = time.time() - older_than, 0
    try:
        paths = list(state_folder().glob("*.window"))
    except OSError:
        return 0
    for path in paths:
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError:
            pass  # another process removed it first
    return removed


class RateLimiter:
    """At most ``max_calls`` requests started in any ``period`` seconds (sliding window), counted
    over every process that opens the same ``state_path`` (in memory only when it is ``None``).

    :meth:`shared` gives the limiter of one API account, so every client of a run (each asset has
    its own, each step its own process) draws from the same budget.
    """

    _shared: dict[tuple, RateLimiter] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, account: tuple, max_calls: int, period: float) -> RateLimiter:
        key = (*account, max_calls, period)
        with cls._shared_lock:
            if key not in cls._shared:
                if not cls._shared:
                    remove_stale_windows(max(period, STALE_AFTER_SECONDS))
                digest = hashlib.sha256(repr(key).encode()).hexdigest()[:32]
                cls._shared[key] = cls(max_calls, period, state_folder() / f"{digest}.window")
            return cls._shared[key]

    def __init__(self, max_calls: int, period: float, state_path: Path | None = None) -> None:
        if max_calls < 1 or period <= 0:
            raise ValueError("a rate limit needs max_calls >= 1 and period > 0")
        self.max_calls = max_calls
        self.period = period
        self.state_path = state_path
        self._lock = threading.Lock()  # threads of one process; flock orders the processes
        self._memory = bytearray(_HEADER.size + _SLOT.size * max_calls)

    def acquire(self) -> float:
        """Block until a request may start; returns the seconds waited."""
        waited = 0.0
        while True:
            with self._lock, self._state() as state:
                now = time.time()
                slot, paused_until = _HEADER.unpack(state.read(0, _HEADER.size))
                wait = max(paused_until - now, 0.0)
                if not wait:
                    offset = _HEADER.size + _SLOT.size * slot
                    (oldest,) = _SLOT.unpack(state.read(offset, _SLOT.size))
                    if oldest > now + self.period:  # from a clock that went back: not a start
                        oldest = 0.0
                    wait = max(oldest + self.period - now, 0.0)
                    if not wait:
                        state.write(offset, _SLOT.pack(now))
                        state.write(0, _HEADER.pack((slot + 1) % self.max_calls, paused_until))
                        return waited
            time.sleep(wait)
            waited += wait

    def pause_for(self, seconds: float) -> None:
        """The server said the window is spent: nobody starts a request for ``seconds``."""
        with self._lock, self._state() as state:
            slot, paused_until = _HEADER.unpack(state.read(0, _HEADER.size))
            until = max(paused_until, time.time() + seconds)
            if paused_until > time.time() + self.period + seconds:  # a clock that went back
                until = time.time() + seconds
            state.write(0, _HEADER.pack(slot, until))

    def _state(self) -> _State:
        return _State(self.state_path, self._memory, _HEADER.size + _SLOT.size * self.max_calls)


class _State:
    """The window's bytes: a file held under ``flock`` for one read-decide-write, or memory."""

    def __init__(self, path: Path | None, memory: bytearray, size: int) -> None:
        self.path, self.memory, self.size = path, memory, size
        self.fd: int | None = None

    def __enter__(self) -> _State:
        if self.path is not None:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            if os.fstat(self.fd).st_size < self.size:
                os.ftruncate(self.fd, self.size)  # zeros: slot 0, no pause, every start long ago
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the lock
            self.fd = None

    def read(self, offset: int, size: int) -> bytes:
        if self.fd is None:
            return bytes(self.memory[offset:offset + size])
        return os.pread(self.fd, size, offset)

    def write(self, offset: int, data: bytes) -> None:
        if self.fd is None:
            self.memory[offset:offset + len(data)] = data
        else:
            os.pwrite(self.fd, data, offset)
