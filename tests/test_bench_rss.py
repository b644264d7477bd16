"""The bench's peak RSS is the whole process tree's, summed: a sync's feed steps run in processes
of their own, so the CLI process's figure alone misses most of what the machine holds.

Real processes: a parent that holds little starts a child that holds ~150 MB; the sampler must
see the child's memory, and the parent's own high-water mark must not. And a parent holding
~150 MB that forks a child (as the fork server forks each step): summed RSS counts the shared
pages twice, summed PSS once.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

from bench.sync_runner import RssSampler, tree_pss_mb, tree_rss_mb

CHILD = "import time; block = bytearray(150 * 2**20); print('ready', flush=True); time.sleep(60)"
PARENT = (
    "import subprocess, sys, time; "
    f"child = subprocess.Popen([sys.executable, '-c', {CHILD!r}], stdout=subprocess.PIPE, text=True); "
    "child.stdout.readline(); print('ready', flush=True); time.sleep(2); child.kill(); child.wait()"
)


@contextmanager
def sampled(script: str) -> Iterator[tuple[subprocess.Popen, RssSampler]]:
    """Run ``script`` with the sampler on it from the start; yields once it printed 'ready', then
    waits for it to end (killed if it is still running when the block fails)."""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        with RssSampler(proc.pid, every=0.05) as rss:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            yield proc, rss
            proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_peak_rss_sums_the_process_tree() -> None:
    with sampled(PARENT) as (proc, rss):
        whole = tree_rss_mb(psutil.Process(proc.pid))
        parent_alone = psutil.Process(proc.pid).memory_info().rss / 2**20
        time.sleep(0.3)
    assert parent_alone < 100  # the parent itself holds little...
    assert whole >= parent_alone + 140  # ...the tree holds the child's 150 MB too
    assert rss.tree_peak_mb is not None and rss.tree_peak_mb >= parent_alone + 140
    # the main process's own high-water mark (VmHWM) never saw the child's memory
    assert rss.high_water_mb is not None and rss.high_water_mb < 100
    # samples end once the process is gone: no sample after it exited counts
    assert rss.samples and all(mb > 0 for _, mb in rss.samples)


FORKING_PARENT = (
    "import os, time; block = bytearray(150 * 2**20); pid = os.fork(); "
    "print('ready', flush=True) if pid else None; time.sleep(60 if pid == 0 else 2); "
    "os.kill(pid, 9) if pid else None; os.waitpid(pid, 0) if pid else None"
)


def test_pss_counts_the_pages_a_forked_child_shares_once() -> None:
    with sampled(FORKING_PARENT) as (proc, rss):
        time.sleep(0.2)
        root = psutil.Process(proc.pid)
        rss_sum, pss_sum = tree_rss_mb(root), tree_pss_mb(root)
    assert rss_sum >= 290  # the 150 MB block, in the parent's RSS and again in the child's
    assert 140 <= pss_sum <= rss_sum - 120  # in PSS, once
    assert rss.tree_peak_pss_mb is not None and 140 <= rss.tree_peak_pss_mb <= rss.tree_peak_mb - 120
