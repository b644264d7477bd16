"""`make test` shares files between two workers by `xdist_group` (tests/conftest.py); this holds the
installed pytest and pytest-xdist to actually honouring those groups.

pytest 9.2 reads node ids from a structured id that pytest-xdist 3.8's loadgroup no longer writes
its ``@group`` suffix into (pytest-dev/pytest-xdist#1386), so the groups were silently ignored:
every file's tests were dealt out one by one, each worker built the same module fixtures and the
two UI files started two UI stacks (~75 s each). constraints.txt keeps pytest below 9.2 until
xdist handles it; this test fails on a combination that ignores the groups.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

CONFTEST = """
import pytest

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(pytest.mark.xdist_group("together"))
"""

TEST_FILE = """
import os
import pytest

@pytest.mark.parametrize("i", range(4))
def test_records_its_worker(i):
    with open(os.environ["WORKERS_SEEN"], "a") as f:
        f.write(os.environ["PYTEST_XDIST_WORKER"] + "\\n")
"""


def test_tests_of_one_group_run_on_one_worker(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(textwrap.dedent(CONFTEST))
    for name in ("test_a.py", "test_b.py"):
        (tmp_path / name).write_text(textwrap.dedent(TEST_FILE))
    seen = tmp_path / "workers.txt"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "2", "--dist", "loadgroup",
         "--rootdir", str(tmp_path), "-c", "/dev/null", str(tmp_path)],
        cwd=tmp_path, env={**_env(), "WORKERS_SEEN": str(seen)}, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    workers = seen.read_text().split()
    assert len(workers) == 8
    assert len(set(workers)) == 1, f"one group ran on several workers: {sorted(set(workers))}"


def _env() -> dict[str, str]:
    """This environment without pytest's own variables (xdist's worker id would leak into the run)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
