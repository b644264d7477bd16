"""``bench.run --memory-cap``: a sync's process tree runs in a memory cgroup, as on a machine with
that much RAM and no swap. Real processes in a real cgroup: a child that fits completes and the
cgroup's peak counts its memory; one that does not is killed by the kernel, and the kill is counted.
Skipped where no memory cgroup can be created (no root, or a container without the controller)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.memory_cap import MemoryCap, MemoryCapUnavailable, parse_size


def _holding(mb: int) -> list[str]:
    """A process that touches ``mb`` MB (bytearray pages are written, so they are resident)."""
    return [sys.executable, "-c", f"block = bytearray({mb} * 2**20); print(len(block))"]


@pytest.fixture
def cap():
    try:
        with MemoryCap(parse_size("200MiB"), name="affwh-test-memory-cap") as made:
            yield made
    except MemoryCapUnavailable as exc:
        pytest.skip(str(exc))


def test_a_process_tree_that_fits_completes_and_its_peak_is_counted(cap: MemoryCap) -> None:
    cap.reset_peak()
    done = subprocess.run(_holding(120), preexec_fn=cap.join, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert cap.peak_mb() is not None and cap.peak_mb() >= 120
    assert cap.oom_kills() == 0


def test_a_process_tree_past_the_cap_is_killed_and_the_kill_counted(cap: MemoryCap) -> None:
    done = subprocess.run(_holding(400), preexec_fn=cap.join, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0  # SIGKILL from the kernel's OOM killer (or a MemoryError)
    assert cap.oom_kills() >= 1 or "MemoryError" in done.stderr


def test_sizes_read_as_a_user_writes_them() -> None:
    assert parse_size("2GB") == 2 * 1000**3
    assert parse_size("1536MiB") == 1536 * 2**20
    with pytest.raises(ValueError):
        parse_size("two gigs")
