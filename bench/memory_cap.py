"""Run the sync inside a memory cgroup: what a machine with that much RAM (and no swap) would do.

Issue 14 asks that a 2 GB-RAM machine still completes the large preset. Summing RSS over the
process tree (:mod:`bench.sync_runner`) counts pages the forked steps share with the fork server
once per process, so it overstates what the machine needs; a cgroup's limit is what the kernel
enforces. ``python -m bench.run --memory-cap 2GB`` puts every sync (the CLI, the fork server and
each step: children stay in their parent's cgroup) into a cgroup of its own with that limit and no
swap, and records the cgroup's peak (``memory.max_usage_in_bytes``; page cache included, which
the kernel reclaims before it kills) and the out-of-memory kills. A sync the kernel killed exits
non-zero, which the bench already counts as a failed sync.

cgroup v1 (``/sys/fs/cgroup/memory``) and v2 (``memory.max``) are both handled; without a
writable memory controller (no root, a container without it) the bench stops with that reason
instead of measuring something else.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

V1_ROOT = Path("/sys/fs/cgroup/memory")
V2_ROOT = Path("/sys/fs/cgroup")
_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


class MemoryCapUnavailable(RuntimeError):
    """No memory cgroup can be created here."""


def parse_size(text: str) -> int:
    """'2GB' / '1536MiB' / '2000000000' -> bytes."""
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    if not match or match.group(2).upper() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (e.g. 2GB, 1536MiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


class MemoryCap:
    """A memory cgroup with a hard limit; ``join`` (a ``preexec_fn``) moves a new process into it."""

    def __init__(self, limit_bytes: int, name: str | None = None) -> None:
        self.limit_bytes = limit_bytes
        self.name = name or f"affwh-bench-{os.getpid()}"
        self.path: Path | None = None
        self.version = 0

    def __enter__(self) -> MemoryCap:
        if (V1_ROOT / "memory.limit_in_bytes").exists():
            self.version, path = 1, V1_ROOT / self.name
        elif "memory" in _read(V2_ROOT / "cgroup.controllers").split():
            self.version, path = 2, V2_ROOT / self.name
        else:
            raise MemoryCapUnavailable("no memory cgroup controller under /sys/fs/cgroup")
        try:
            path.mkdir(exist_ok=True)
            self.path = path
            if self.version == 1:
                _write(path / "memory.limit_in_bytes", self.limit_bytes)
                if (path / "memory.memsw.limit_in_bytes").exists():  # no swapping past the limit
                    _write(path / "memory.memsw.limit_in_bytes", self.limit_bytes)
            else:
                _write(path / "memory.max", self.limit_bytes)
                _write(path / "memory.swap.max", 0)
        except OSError as exc:
            self._remove()
            raise MemoryCapUnavailable(f"cannot create a memory cgroup at {path}: {exc}") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self._remove()

    def join(self) -> None:
        """Move the calling process into the cgroup (run in the child, before ``exec``)."""
        assert self.path is not None
        _write(self.path / "cgroup.procs", os.getpid())

    def reset_peak(self) -> None:
        """Start a new peak (v1; v2 kernels without a writable ``memory.peak`` keep the old one)."""
        assert self.path is not None
        target = self.path / ("memory.max_usage_in_bytes" if self.version == 1 else "memory.peak")
        try:
            _write(target, 0)
        except OSError:
            pass

    def peak_mb(self) -> float | None:
        assert self.path is not None
        text = _read(self.path / ("memory.max_usage_in_bytes" if self.version == 1 else "memory.peak"))
        return round(int(text) / 2**20, 1) if text.strip().isdigit() else None

    def oom_kills(self) -> int:
        """Processes the kernel killed for want of memory in this cgroup so far."""
        assert self.path is not None
        text = _read(self.path / ("memory.oom_control" if self.version == 1 else "memory.events"))
        match = re.search(r"^oom_kill (\d+)$", text, re.MULTILINE)
        return int(match.group(1)) if match else 0

    def _remove(self) -> None:
        if self.path is not None:
            try:
                self.path.rmdir()  # empty once its processes have exited
            except OSError:
                pass
            self.path = None


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _write(path: Path, value: object) -> None:
    with open(path, "w") as f:
        f.write(str(value))
