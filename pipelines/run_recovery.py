"""Recover from ``affwh run`` processes that were killed mid-run.

A run of ``sync_all`` executes in the CLI's own process against the persistent Dagster instance,
and each step that writes the warehouse holds a slot of the ``duckdb_writer`` pool (limit 1,
``dagster.yaml``). A process killed with SIGKILL (or by the OOM killer, or a reboot) never
releases that slot and leaves its run STARTED, so every later run waits for the slot for ever.

So each CLI run holds an exclusive ``flock`` on ``DAGSTER_HOME/cli_runs/<run_id>.lock`` while it
executes (the operating system drops it when the process dies, however it dies), and before a
new run the CLI marks every run whose lock nobody holds as failed and frees its pool slots. The
warehouse needs no repair: a killed run committed nothing it had not finished.
"""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

LOCK_DIR = "cli_runs"


@contextmanager
def run_lock(home: Path) -> Iterator[str]:
    """A new run id, locked as alive for the duration of the block."""
    run_id = str(uuid.uuid4())
    folder = home / LOCK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    pending = folder / f"{run_id}.new"
    final = folder / f"{run_id}.lock"
    with pending.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.replace(pending, final)  # only ever seen locked under its final name
        try:
            yield run_id
        finally:
            final.unlink(missing_ok=True)


def recover_killed_runs(instance: dg.DagsterInstance, home: Path) -> list[str]:
    """Mark the runs of killed CLI processes failed and free their pool slots; their run ids."""
    folder = home / LOCK_DIR
    recovered = []
    for path in sorted(folder.glob("*.lock")) if folder.is_dir() else []:
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
                    run, message="The process running it was killed; marked failed by the next `affwh run`."
                )
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
            path.unlink(missing_ok=True)
            recovered.append(run_id)
    return recovered
