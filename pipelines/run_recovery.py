"""Recover from runs whose process was killed mid-run, on every launch path.

A run's steps that write the warehouse for their whole duration hold a slot of the
``duckdb_writer`` pool (limit 1, ``dagster.yaml``). A run worker killed with SIGKILL (or by the
OOM killer, or a reboot) never releases its slots and leaves its run STARTED: every later run
would wait for the slots for ever, and the ``sync_open_records`` schedule would skip its ticks
("still running") for ever.

So every run executed by this code location's executor (``affwh run``, ``dg launch``, a run
worker the daemon started) holds an exclusive ``flock`` on ``DAGSTER_HOME/run_locks/<run_id>.lock``
while its steps execute: the operating system drops it when the process dies, however it dies.
Before a run starts its steps, every run whose lock nobody holds any more is marked failed and its
pool slots are freed. Daemon-launched runs are also watched by the daemon's run monitoring
(``dagster.yaml``), which needs no next run. The warehouse needs no repair: a killed run committed
nothing it had not finished.
"""

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from dagster._core.launcher import DefaultRunLauncher
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus

LOCK_DIR = "run_locks"


def lock_folder(instance: dg.DagsterInstance) -> Path | None:
    """Where run locks live: the instance's home (None for an ephemeral instance: nothing else
    can see its runs)."""
    if instance.is_ephemeral or not instance.root_directory:
        return None
    return Path(instance.root_directory) / LOCK_DIR


@contextmanager
def run_lock(folder: Path, run_id: str) -> Iterator[None]:
    """Mark ``run_id`` alive for the duration of the block (a flock the kernel drops on death)."""
    folder.mkdir(parents=True, exist_ok=True)
    pending = folder / f"{run_id}.new"
    final = folder / f"{run_id}.lock"
    with pending.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.replace(pending, final)  # only ever seen locked under its final name
        try:
            yield
        finally:
            final.unlink(missing_ok=True)


def recover_killed_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark the runs of killed processes failed and free their pool slots; their run ids."""
    folder = lock_folder(instance)
    recovered = []
    for path in sorted(folder.glob("*.lock")) if folder is not None and folder.is_dir() else []:
        try:
            lock = path.open("r+")
        except FileNotFoundError:
            continue  # finished meanwhile
        with lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # its process is alive
            run_id = path.stem
            run = instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                instance.report_run_failed(
                    run, message="The process running it was killed; marked failed by the next run."
                )
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            path.unlink(missing_ok=True)
            recovered.append(run_id)
    return recovered


def lock_state(folder: Path | None, run_id: str) -> str:
    """``alive`` (its process holds the lock), ``dead`` (the lock is there, nobody holds it) or
    ``unknown`` (no lock: its steps have not started, or it ended and removed it)."""
    if folder is None:
        return "unknown"
    try:
        lock = (folder / f"{run_id}.lock").open("r")
    except FileNotFoundError:
        return "unknown"
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "alive"
        return "dead"


class MonitoredRunLauncher(DefaultRunLauncher):
    """Dagster's default launcher (runs start in a process of the code server) whose run workers
    the daemon's run monitoring can check: a run whose lock nobody holds has died.

    Dagster's own ``DefaultRunLauncher`` cannot say whether a run worker is alive, so run
    monitoring never fails a STARTED run whose worker was SIGKILLed; this one can
    (``dagster.yaml``: ``run_launcher`` and ``run_monitoring``).
    """

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        state = lock_state(lock_folder(self._instance), run.run_id)
        if state == "dead":
            return CheckRunHealthResult(WorkerStatus.FAILED, "the run worker's process is gone (its run lock is free)")
        return CheckRunHealthResult(WorkerStatus.RUNNING, f"run lock {state}")
