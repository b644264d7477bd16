"""Staging folders: many runs starting at once never lose their folder to another run's sweep.

Every ``StagingDir`` sweeps the folders of dead runs before it makes its own, so two feeds (the
two lanes are threads of one process) or two processes starting together sweep while the other
creates. Once, a sweep found a folder whose ``.lock`` existed but was not locked yet and removed
it: the large sync then failed creating ``spill`` inside it. Here folders are created and removed
in a loop by several threads AND several processes while others sweep without pause; every folder
gets a file (and a ``spill`` folder, as DuckDB makes) right after creation and must still have it
just before its owner removes it. Processes killed with SIGKILL while holding a folder lose it to
the next sweep, and nothing is left behind at the end.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import clean_env

import pipelines
from pipelines.warehouse.staging_dirs import StagingDir, remove_stale

THREADS = 4  # creating threads in this process (plus one sweeping thread)
PROCESSES = 3  # creating processes (each with a sweeping thread of its own)
SWEEPER_PROCESSES = 1
ROUNDS = 150  # folders created (one after another) per creating thread or process
KILLED = 4  # processes SIGKILLed while they hold a folder

# Runs in this process's threads and, as source, in the child processes: the same code both ways.
WORKER = r'''
import os, sys, threading, time, traceback
from pathlib import Path
from pipelines.warehouse.staging_dirs import StagingDir, remove_stale


def churn(root, prefix, rounds, failures):
    """Create, use, check and remove a folder ``rounds`` times; record every loss."""
    for n in range(rounds):
        try:
            folder = StagingDir(root, prefix)
        except Exception as exc:
            failures.append(f"{prefix} round {n}: creating: {exc!r}")
            continue
        try:
            marker = folder.path / "data"
            marker.write_text(f"{prefix}{n}")
            (folder.path / "spill").mkdir()  # what DuckDB does on its first spill
            time.sleep(0.0005 * (n % 3))
            if not (marker.is_file() and marker.read_text() == f"{prefix}{n}" and (folder.path / "spill").is_dir()):
                failures.append(f"{prefix} round {n}: {folder.path.name} lost its contents")
        except Exception as exc:
            failures.append(f"{prefix} round {n}: using {folder.path.name}: {exc!r}")
        finally:
            folder.remove()


def sweep(root, stop, failures, counter):
    """Sweep without pause until ``stop`` is set."""
    while not stop.is_set():
        try:
            remove_stale(root)
            counter.append(1)
        except Exception:
            failures.append("sweep: " + traceback.format_exc(limit=3))


def child(root, role, prefix, rounds):
    failures, sweeps = [], []
    stop = threading.Event()
    sweeper = threading.Thread(target=sweep, args=(root, stop, failures, sweeps))
    sweeper.start()
    if role == "sweep":
        sys.stdin.read()  # until the parent closes our stdin
    else:
        churn(root, prefix, rounds, failures)
    stop.set()
    sweeper.join()
    import json
    print(json.dumps({"failures": failures, "sweeps": len(sweeps)}), flush=True)
'''

HOLDER = (
    "import sys, time; from pathlib import Path; from pipelines.warehouse.staging_dirs import StagingDir; "
    "d = StagingDir(Path(sys.argv[1]), sys.argv[2]); (d.path / 'data').write_text('x'); "
    "print(d.path, flush=True); time.sleep(300)"
)

worker: dict = {}
exec(compile(WORKER, "staging_worker", "exec"), worker)


def child_env() -> dict[str, str]:
    """The tests' allow-listed environment; children import the very ``pipelines`` this test did."""
    return clean_env(PYTHONPATH=str(Path(pipelines.__file__).resolve().parent.parent))


def spawn_worker(root: Path, role: str, prefix: str) -> subprocess.Popen:
    script = WORKER + f"\nchild(Path({str(root)!r}), {role!r}, {prefix!r}, {ROUNDS})\n"
    return subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=child_env(),
    )


def spawn_holder(root: Path, prefix: str) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(root), prefix], stdout=subprocess.PIPE, text=True, env=child_env(),
    )
    return proc, Path(proc.stdout.readline().strip())


def test_folders_started_together_from_threads_and_processes_survive_continuous_sweeps(tmp_path):
    root = tmp_path / ".staging"
    root.mkdir()
    # Runs killed before this test started: their folders go at the first sweep, however busy.
    killed_before = [spawn_holder(root, f"killed{i}-") for i in range(KILLED // 2)]
    for proc, _ in killed_before:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    # Live runs of another process keep theirs throughout.
    alive = [spawn_holder(root, f"alive{i}-") for i in range(2)]

    children = [spawn_worker(root, "churn", f"p{i}-") for i in range(PROCESSES)]
    children += [spawn_worker(root, "sweep", f"s{i}-") for i in range(SWEEPER_PROCESSES)]
    failures: list[str] = []
    sweeps: list[int] = []
    stop = threading.Event()
    sweeper = threading.Thread(target=worker["sweep"], args=(root, stop, failures, sweeps))
    sweeper.start()
    threads = [
        threading.Thread(target=worker["churn"], args=(root, f"t{i}-", ROUNDS, failures)) for i in range(THREADS)
    ]
    for thread in threads:
        thread.start()
    # Runs killed while all of that goes on: the sweeps running anyway remove their folders.
    killed_during = [spawn_holder(root, f"killed{i}-") for i in range(KILLED // 2, KILLED)]
    for proc, _ in killed_during:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    for thread in threads:
        thread.join(300)
    reports = []
    try:
        for proc in children:
            out, err = proc.communicate("", timeout=300)
            assert proc.returncode == 0, err[-3000:]
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        stop.set()
        sweeper.join(60)
        for proc in children:
            if proc.poll() is None:
                proc.kill()

    failures += [f for report in reports for f in report["failures"]]
    assert not failures, f"{len(failures)} folder(s) lost or sweeps failed, e.g.:\n" + "\n".join(failures[:10])
    # the sweeps did run, in this process and in the others, while folders were being created
    assert len(sweeps) > 10 and all(report["sweeps"] > 10 for report in reports)

    try:
        for proc, path in alive:
            assert proc.poll() is None
            assert (path / "data").read_text() == "x", "a live run's folder was removed"
        for _, path in killed_before + killed_during:
            assert not path.exists(), f"{path.name}: a killed run's folder was left behind"
    finally:
        for proc, _ in alive:
            proc.kill()
            proc.wait(10)
    # once their processes are gone, the live runs' folders go too, and nothing else is left
    assert sorted(remove_stale(root)) == sorted(path for _, path in alive)
    assert list(root.iterdir()) == []

