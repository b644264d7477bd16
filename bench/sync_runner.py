"""Run the real sync (``python -m pipelines.cli run``) in a subprocess and measure it.

Measured from the outside, as a user would experience it: wall time from spawn to exit (Python and
Dagster start-up included), the process's peak RSS, and what the warehouse says it did
(``sync_runs``: records, requests and the duration of each stream; rows written).

Peak RSS is summed over the sync's whole process tree (the CLI, the executor's forkserver and
each feed step's process), sampled with psutil every 0.1 s: the steps run in processes of their
own, so the CLI's figure alone missed most of the memory. It is never below the CLI's own
high-water mark (``VmHWM`` in ``/proc/<pid>/status``, kept as ``peak_rss_main_mb``), which is read
instead of ``ru_maxrss`` from ``wait4``: Linux folds the memory the child had *before* ``exec`` (a
copy of this bench process, which holds the floor's DuckDB data by then) into ``ru_maxrss``.
``ru_maxrss`` stays the fallback when ``/proc`` cannot be read.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from bench.memory_cap import MemoryCap

SOURCE_PREFIXES = ("ONLYTRAFFIC_", "CPAMOE_", "METAPIC_")


@dataclass
class SyncMeasurement:
    wall_s: float
    peak_rss_mb: float
    exit_code: int
    run_id: str | None
    streams: dict[str, dict[str, Any]] = field(default_factory=dict)  # from sync_runs
    history_rows_added: int = 0
    peak_rss_outside_streams_mb: float | None = None
    peak_rss_main_mb: float | None = None  # VmHWM of the ``affwh run`` process alone
    peak_pss_mb: float | None = None  # the tree's peak PSS: pages shared with the fork server once
    log_tail: str = ""
    stream_seconds: float = 0.0  # wall time while at least one stream ran (feeds overlap in lanes)
    memory_cap_mb: float | None = None  # the cgroup limit the sync ran under (--memory-cap)
    cgroup_peak_mb: float | None = None  # that cgroup's peak: what the kernel counted
    oom_kills: int | None = None  # processes of the sync the kernel killed for want of memory

    @property
    def records(self) -> int:
        return sum(s["records"] for s in self.streams.values())

    @property
    def rows_written(self) -> int:
        return sum(s["inserted"] + s["updated"] for s in self.streams.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall_s, 3),
            "peak_rss_mb": round(self.peak_rss_mb, 1),
            "peak_rss_outside_streams_mb": self.peak_rss_outside_streams_mb,
            "peak_rss_main_mb": self.peak_rss_main_mb,
            "peak_pss_mb": self.peak_pss_mb,
            "exit_code": self.exit_code,
            **({"memory_cap_mb": self.memory_cap_mb, "cgroup_peak_mb": self.cgroup_peak_mb, "oom_kills": self.oom_kills}
               if self.memory_cap_mb is not None else {}),
            "run_id": self.run_id,
            "records": self.records,
            "rows_written": self.rows_written,
            "history_rows_added": self.history_rows_added,
            "stream_seconds": round(self.stream_seconds, 3),
            "streams": self.streams,
            **({"log_tail": self.log_tail} if self.exit_code else {}),
        }


def covered_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``intervals``: streams of two lanes overlap, so their sum would
    count the same seconds twice."""
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def tree_rss_mb(proc: Any) -> float:
    """RSS of ``proc`` and every descendant, summed (psutil): a sync's feed steps run in
    processes of their own (the multiprocess executor's forkserver and its workers), so the
    parent's RSS alone misses most of the memory the user's machine must hold at once."""
    import psutil

    total = proc.memory_info().rss  # the root gone: raises (the sampler stops)
    if total == 0:
        raise psutil.NoSuchProcess(proc.pid)  # exited, not yet reaped: no memory to count
    for member in proc.children(recursive=True):
        try:
            total += member.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue  # exited between listing and reading
    return total / 2**20


def tree_pss_mb(proc: Any) -> float:
    """PSS of ``proc`` and every descendant, summed: each page counted once over the tree (a page
    shared by n processes adds 1/n to each). The steps are forked from a server holding the
    preloaded definitions, so summed RSS counts those shared pages once per process; summed PSS
    is what the processes hold together."""
    import psutil

    total = 0
    for member in (proc, *proc.children(recursive=True)):
        try:
            total += member.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess, AttributeError):
            continue  # exited between listing and reading (AttributeError: no PSS on this OS)
    return total / 2**20


class RssSampler:
    """Samples the RSS of the sync's whole process tree a few times a second (psutil: the process
    and its descendants, summed), so the peak is what the machine held at once and can be
    attributed to the stream that was running; and the main process's ``VmHWM`` (the kernel's
    high-water mark, so a spike of that process between samples still counts)."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.samples: list[tuple[float, float]] = []  # (unix time, MB summed over the tree)
        self.pss_samples: list[tuple[float, float]] = []  # (unix time, PSS MB summed over the tree)
        self.high_water_mb: float | None = None  # VmHWM: the main process's own peak since exec
        self._status = Path(f"/proc/{pid}/status")
        self._stop = threading.Event()
        try:
            import psutil

            self._proc = psutil.Process(pid)
        except Exception:  # noqa: BLE001 - psutil missing or the process already gone
            self._proc = None
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    @property
    def tree_peak_mb(self) -> float | None:
        """The largest sampled sum over the process tree."""
        return round(max(mb for _, mb in self.samples), 1) if self.samples else None

    @property
    def tree_peak_pss_mb(self) -> float | None:
        """The largest sampled PSS sum over the process tree (shared pages counted once)."""
        return round(max(mb for _, mb in self.pss_samples), 1) if self.pss_samples else None

    def _run(self, every: float) -> None:
        while True:
            self._read_high_water()
            if self._proc is not None:
                try:
                    if not self._proc.is_running() or self._proc.status() == "zombie":
                        raise ProcessLookupError
                    now = time.time()
                    self.samples.append((now, tree_rss_mb(self._proc)))
                    self.pss_samples.append((now, tree_pss_mb(self._proc)))
                except Exception:  # noqa: BLE001 - the process exited
                    self._proc = None
            if self._stop.wait(every):
                return

    def _read_high_water(self) -> None:
        try:
            for line in self._status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    mb = int(line.split()[1]) / 1024  # kB
                    self.high_water_mb = max(self.high_water_mb or 0.0, mb)
        except (OSError, ValueError):
            pass  # the process exited (or is a zombie without VmHWM)

    def peak_outside(self, intervals: list[tuple[float, float]]) -> float | None:
        """The peak while no stream ran: start-up, Dagster, asset checks, views, marts, summary."""
        values = [mb for t, mb in self.samples if not any(a <= t <= b for a, b in intervals)]
        return round(max(values), 1) if values else None

    def peak_between(self, start: float, end: float) -> float | None:
        values = [mb for t, mb in self.samples if start <= t <= end]
        return round(max(values), 1) if values else None


class SyncRunner:
    """One warehouse (and Dagster home) in ``workdir``, synced against the given sandbox env."""

    def __init__(self, workdir: Path, sandbox_env: dict[str, str], extra_env: dict[str, str] | None = None,
                 memory_cap: MemoryCap | None = None) -> None:
        self.workdir = workdir
        self.sandbox_env = sandbox_env
        self.extra_env = extra_env or {}
        self.memory_cap = memory_cap  # every sync runs inside this cgroup (bench/memory_cap.py)
        self.warehouse = workdir / "warehouse.duckdb"
        self.runs = 0

    def environment(self, now: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(SOURCE_PREFIXES)}
        env.update(self.sandbox_env)
        env.update(
            {
                "WAREHOUSE_PATH": str(self.warehouse),
                "DAGSTER_HOME": str(self.workdir / "dagster_home"),
                # the warehouse clock follows the sandbox's, as in the tests (advance moves both)
                "WAREHOUSE_NOW": now,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        return [sys.executable, "-m", "pipelines.cli", "run"]

    def run(self, now: str) -> SyncMeasurement:
        """One ``affwh run``; the warehouse keeps its state between calls (incremental runs)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.runs += 1
        log_path = self.workdir / f"sync-{self.runs}.log"
        history_before = self._history_rows()
        cap = self.memory_cap
        kills_before = cap.oom_kills() if cap else 0
        if cap:
            cap.reset_peak()
        with log_path.open("w") as log:
            started = time.monotonic()
            # cwd: the work dir, so no stray .env of the project root is read
            proc = subprocess.Popen(
                self.command(), cwd=self.workdir, env=self.environment(now), stdout=log, stderr=subprocess.STDOUT,
                preexec_fn=cap.join if cap else None,
            )
            with RssSampler(proc.pid, every=0.1) as rss:
                _, status, usage = os.wait4(proc.pid, 0)
            wall = time.monotonic() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
        main_peak = rss.high_water_mb or usage.ru_maxrss / 1024  # ru_maxrss: Linux kilobytes
        measurement = SyncMeasurement(
            # the whole tree's sampled peak; never below the main process's own high-water mark
            wall_s=wall,
            peak_rss_mb=max(rss.tree_peak_mb or 0.0, main_peak),
            exit_code=proc.returncode,
            run_id=None,
            peak_rss_main_mb=round(main_peak, 1),
            peak_pss_mb=rss.tree_peak_pss_mb,
        )
        if cap:
            measurement.memory_cap_mb = round(cap.limit_bytes / 2**20, 1)
            measurement.cgroup_peak_mb = cap.peak_mb()
            measurement.oom_kills = cap.oom_kills() - kills_before
        if proc.returncode != 0:
            measurement.log_tail = log_path.read_text(errors="replace")[-3000:]
        measurement.run_id, measurement.streams = self._last_run()
        intervals = [(s.pop("started_epoch"), s.pop("finished_epoch")) for s in measurement.streams.values()]
        for stream, (start, end) in zip(measurement.streams.values(), intervals, strict=True):
            stream["peak_rss_mb"] = rss.peak_between(start, end)
        measurement.peak_rss_outside_streams_mb = rss.peak_outside(intervals)
        measurement.stream_seconds = covered_seconds(intervals)
        measurement.history_rows_added = self._history_rows() - history_before
        return measurement

    def _connect(self) -> duckdb.DuckDBPyConnection | None:
        if not self.warehouse.exists():
            return None
        return duckdb.connect(str(self.warehouse), read_only=True)

    def _history_rows(self) -> int:
        con = self._connect()
        if con is None:
            return 0
        with con:
            return con.execute("SELECT count(*) FROM status_history").fetchone()[0]

    def _last_run(self) -> tuple[str | None, dict[str, dict[str, Any]]]:
        con = self._connect()
        if con is None:
            return None, {}
        with con:
            row = con.execute("SELECT run_id FROM sync_runs ORDER BY finished_at DESC LIMIT 1").fetchone()
            if row is None:
                return None, {}
            rows = con.execute(
                """
                SELECT stream, mode, records_received, inserted, updated, unchanged, quarantined, requests,
                       retries, epoch(finished_at) - epoch(started_at) AS seconds,
                       epoch(started_at), epoch(finished_at)
                FROM sync_runs WHERE run_id = ? ORDER BY started_at
                """,
                [row[0]],
            ).fetchall()
        streams = {
            r[0]: {
                "mode": r[1],
                "records": int(r[2] or 0),
                "inserted": int(r[3] or 0),
                "updated": int(r[4] or 0),
                "unchanged": int(r[5] or 0),
                "quarantined": int(r[6] or 0),
                "requests": int(r[7] or 0),
                "retries": int(r[8] or 0),
                "seconds": round(float(r[9] or 0.0), 3),
                "started_epoch": float(r[10] or 0.0),
                "finished_epoch": float(r[11] or 0.0),
            }
            for r in rows
        }
        return row[0], streams
