"""The client-side rate limit is one window per API account across processes.

Each feed step is a process of its own, and ``make run`` starts one sync right after another: a
window kept in one process's memory would let each process spend the whole documented budget.
These tests run real processes drawing from the same account's limiter.
"""

import subprocess
import sys
import time
import uuid

from pipelines.sources.rate_limit import RateLimiter

STARTS = """
import sys, time
from pipelines.sources.rate_limit import RateLimiter
limiter = RateLimiter.shared(("http://127.0.0.1:1/metapic", sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
for _ in range(int(sys.argv[4])):
    limiter.acquire()
    print(time.time(), flush=True)
"""


def starts_in(account: str, limit: int, period: float, count: int, processes: int) -> list[float]:
    procs = [
        subprocess.Popen([sys.executable, "-c", STARTS, account, str(limit), str(period), str(count)],
                         stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    out = []
    for p in procs:
        stdout, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        out += [float(line) for line in stdout.split()]
    return sorted(out)


# The script stamps a start after ``acquire`` returns, so a stamp can lag the time the limiter
# granted by however long the OS kept that process waiting (tens of ms on a loaded machine): one
# late stamp shifts into the next window. Counting over a window this much shorter than the limit's
# still catches two processes sharing nothing (20 starts at once) and ignores the stamping lag.
STAMP_LAG = 0.15


def most_in_any_window(starts: list[float], period: float) -> int:
    return max(sum(1 for t in starts if s <= t < s + period) for s in starts)


def test_processes_of_one_account_share_one_window():
    """Two processes, 12 requests each, 10 per second between them: never more than 10 in any
    second (an in-process window would let both start 10 at once: 20)."""
    starts = starts_in(f"user-{uuid.uuid4()}", 10, 1.0, 12, processes=2)
    assert len(starts) == 24
    assert most_in_any_window(starts, 1.0 - STAMP_LAG) <= 10
    assert starts[-1] - starts[0] >= 2.0 - 0.05  # 24 starts at 10 per second span two windows


def test_a_new_process_waits_for_the_window_the_last_one_spent():
    """What ``make run``'s second sync meets: the first process spent the window and exited; the
    next one's first request waits until the window has room, instead of drawing a 429."""
    account = f"user-{uuid.uuid4()}"
    first = starts_in(account, 5, 1.5, 5, processes=1)
    second = starts_in(account, 5, 1.5, 1, processes=1)
    assert second[0] - first[0] >= 1.5 - 0.01


def test_other_accounts_do_not_share_the_window():
    starts = starts_in(f"user-{uuid.uuid4()}", 5, 30.0, 5, processes=1)
    other = time.time()
    RateLimiter.shared(("http://127.0.0.1:1/metapic", f"user-{uuid.uuid4()}"), 5, 30.0).acquire()
    assert time.time() - other < 1.0
    assert starts[-1] - starts[0] < 1.0


def test_a_pause_reported_by_the_server_holds_every_process(tmp_path):
    path = tmp_path / "window"
    RateLimiter(100, 60.0, path).pause_for(1.0)
    began = time.time()
    waited = RateLimiter(100, 60.0, path).acquire()  # another limiter object on the same file
    assert waited >= 0.9 and time.time() - began >= 0.9


def test_the_window_file_names_no_secret():
    secret = f"token-{uuid.uuid4()}"
    limiter = RateLimiter.shared(("http://127.0.0.1:1/metapic", secret), 3, 1.0)
    limiter.acquire()
    assert secret not in str(limiter.state_path)
    assert secret.encode() not in limiter.state_path.read_bytes()


def test_window_files_nobody_wrote_for_a_week_are_removed(tmp_path, monkeypatch) -> None:
    """Every account a process limits leaves a small file; a week-old one holds no start that
    still counts, so the first limiter a process makes removes such files and keeps the others."""
    import os
    import tempfile

    from pipelines.sources import rate_limit

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(RateLimiter, "_shared", {})
    folder = rate_limit.state_folder()
    folder.mkdir()
    old, recent = folder / "old.window", folder / "recent.window"
    old.write_bytes(b"x")
    recent.write_bytes(b"x")
    week_and_a_day_ago = time.time() - rate_limit.STALE_AFTER_SECONDS - 86400
    os.utime(old, (week_and_a_day_ago, week_and_a_day_ago))
    limiter = RateLimiter.shared(("http://127.0.0.1:1/metapic", uuid.uuid4().hex), 5, 1.0)
    limiter.acquire()
    assert not old.exists()
    assert recent.exists()
    assert limiter.state_path is not None and limiter.state_path.exists()
