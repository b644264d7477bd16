"""The benchmark: ``python -m bench.run --preset large`` (``make bench``; ``make bench-quick``: medium).

Per preset, against one bench sandbox (its own process, fixed anchor and seed: the same world in
every run). The **engine** phases run with Metapic's rate limit lifted on both sides (the sandbox
serves ``LIFTED_METAPIC_LIMIT`` per minute and the sync's ``METAPIC_RATE_LIMIT`` says the same), so
they measure our engine rather than Metapic's wait; for each repeat, in a fresh warehouse:

1. full initial sync (``affwh run`` in a subprocess): wall time, records/s, requests, peak RSS of
   its whole process tree;
2. a no-change incremental sync right after: wall time, requests, rows written (should be 0);
3. the floor: the requests of step 1 replayed by a bare client, bodies loaded by DuckDB;

then the **real-world** phase (``--real-world N`` times, default once): Metapic back to its
documented 300 per minute on both sides, a full sync in a fresh warehouse, against the longer of
Metapic's floor at 300/minute (its requests replayed at that rate) and the other streams' floor
(from step 3: same world, same requests); then the sandbox advances one day (limit lifted again)
and every engine repeat's warehouse gets

4. an incremental sync after the day: wall time and requests.

Figures are medians over the repeats; the table and ``bench/results/<date>.json`` are written at
the end. ``--presets medium,large`` measures both and checks the RSS growth between them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from bench import floor, report
from bench.memory_cap import MemoryCap, parse_size
from bench.sandbox_process import PROJECT_ROOT, BenchSandbox
from bench.sandbox_server import DEFAULT_ANCHOR, REGISTER_FILE
from bench.streams import by_stream
from bench.sync_runner import SyncRunner
from pipelines.sandbox.world import SCALES

DEFAULT_REPEATS = {"large": 1, "medium": 3}  # others: 3
CONCURRENCY_VARS = ("ONLYTRAFFIC_MARKETER_CONCURRENCY", "ONLYTRAFFIC_STUDIO_CONCURRENCY", "CPAMOE_CONCURRENCY", "METAPIC_CONCURRENCY")
RESULTS_DIR = Path(__file__).resolve().parent / "results"
# Metapic requests per minute in the engine phases, on the sandbox and in METAPIC_RATE_LIMIT:
# far above what the sync can send, so neither side ever waits on it.
LIFTED_METAPIC_LIMIT = 1_000_000


def say(message: str) -> None:
    print(f"[bench {datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def max_in_window(times: list[float], window: float = 60.0) -> int:
    """The most request starts within any ``window`` seconds."""
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def capped(phase: dict[str, Any]) -> str:
    """What the kernel saw of a sync run under ``--memory-cap`` (empty without one)."""
    if phase.get("memory_cap_mb") is None:
        return ""
    return f"; cgroup peak {phase['cgroup_peak_mb']} MB of {phase['memory_cap_mb']:.0f}, OOM kills {phase['oom_kills']}"


def measured_phase(sandbox: BenchSandbox, runner: SyncRunner) -> tuple[dict[str, Any], list[dict]]:
    """One sync, with the requests the sandbox saw during it."""
    sandbox.reset_rate_limit()  # every phase starts with a fresh Metapic window, as hours apart would
    mark = sandbox.mark()
    measurement = runner.run(sandbox.clock())
    requests = sandbox.requests(mark)
    data = measurement.to_json()
    data["requests"] = len(requests)
    data["requests_by_stream"] = {stream: len(group) for stream, group in by_stream(requests).items()}
    data["non_200_responses"] = sum(1 for r in requests if r["status"] != 200)
    data["metapic_max_per_60s"] = max_in_window([r["at"] for r in requests if "/metapic/" in r["path"]])
    # read before the next phase resets the window (the sandbox's counters restart with it)
    data["metapic_refused"] = sandbox.rate_limit().get("refused")
    return data, requests


def measured_floor(sandbox: BenchSandbox, requests: list[dict], workdir: Path, concurrency: int, *,
                   metapic_limit: tuple[int, float] | None = None, apis: set[str] | None = None) -> dict[str, Any]:
    """The floor of ``requests``: Metapic held to ``metapic_limit`` (None: lifted, as in the
    engine phases); ``apis`` limits it to those APIs' streams (the lead register is read only
    when every API is)."""
    sandbox.reset_rate_limit()
    streams = floor.fetch(sandbox.info["base_url"], requests, workdir, concurrency,
                          metapic_limit=metapic_limit, apis=apis)
    floor.load(streams, workdir, register_csv=sandbox.leads_dir / REGISTER_FILE if apis is None else None)
    return {
        "fetch_s": round(sum(s.fetch_s for s in streams.values()), 3),
        "load_s": round(sum(s.load_s for s in streams.values()), 3),
        "requests": sum(s.requests for s in streams.values()),
        "streams": {name: s.to_json() for name, s in streams.items()},
    }


def real_world_phase(sandbox: BenchSandbox, runner: SyncRunner, engine_floor: dict[str, Any], workdir: Path,
                     concurrency: int, tag: str) -> dict[str, Any]:
    """A full sync with Metapic at its documented 300 per minute on both sides, and its floor: the
    longer of Metapic's floor at that rate (its requests replayed) and every other stream's floor
    (the engine floor's, same world and requests). The sandbox is lifted again on return."""
    sandbox.set_rate_limit(*floor.METAPIC_LIMIT)
    try:
        full, requests = measured_phase(sandbox, runner)
        say(f"{tag}: real-world full sync {full['wall_s']:.1f}s, {full['requests']:,} requests, "
            f"Metapic max {full['metapic_max_per_60s']}/60s, exit {full['exit_code']}")
        metapic = measured_floor(sandbox, requests, workdir, concurrency, metapic_limit=floor.METAPIC_LIMIT,
                                 apis={"metapic"})
    finally:
        sandbox.set_rate_limit(LIFTED_METAPIC_LIMIT)
    others = {k: v for k, v in engine_floor.get("streams", {}).items() if not k.startswith("metapic")}
    metapic_s = sum(st["fetch_s"] + st["load_s"] for st in metapic["streams"].values())
    others_s = sum(st["fetch_s"] + st["load_s"] for st in others.values())
    lanes = max(metapic_s, others_s)
    say(f"{tag}: real-world floor: Metapic at 300/min {metapic_s:.1f}s, other streams {others_s:.1f}s")
    return {
        "full": full,
        "metapic_floor": metapic,
        "metapic_floor_s": round(metapic_s, 3),
        "others_floor_s": round(others_s, 3),
        "lanes_floor_s": round(lanes, 3),
        "ratio": round(full["wall_s"] / lanes, 3) if lanes > 0 else None,
    }


def measure_preset(name: str, repeats: int, concurrency: int | None, workroot: Path, keep: bool,
                   real_world: int = 1, memory_cap: MemoryCap | None = None) -> dict[str, Any]:
    say(f"{name}: generating the world and starting the sandbox")
    root = workroot / name
    extra_env = {var: str(concurrency) for var in CONCURRENCY_VARS} if concurrency else {}
    real_env = dict(extra_env)  # the real-world phase: the sync's own (documented) Metapic limit
    extra_env["METAPIC_RATE_LIMIT"] = str(LIFTED_METAPIC_LIMIT)
    floor_concurrency = concurrency or 4  # the sync's default per API
    with BenchSandbox(name, root / "sandbox") as sandbox:
        sandbox.set_rate_limit(LIFTED_METAPIC_LIMIT)  # the engine phases: lifted on both sides
        say(f"{name}: sandbox ready in {sandbox.start_seconds:.0f}s ({sandbox.info['registered_leads']:,} leads registered)")
        preset: dict[str, Any] = {
            "preset": name,
            "scale": sandbox.info["scale"],
            "sandbox": {
                "generate_s": sandbox.info["generate_seconds"],
                "start_s": round(sandbox.start_seconds, 2),
                "registered_leads": sandbox.info["registered_leads"],
                "anchor": sandbox.info["anchor"],
            },
            "metapic_limit": {"engine": LIFTED_METAPIC_LIMIT, "real_world": floor.METAPIC_LIMIT[0]},
            "repeats": [],
            "after_day": [],
            "real_world": [],
        }
        env = {**sandbox.env, "CPAMOE_LEADS_DIR": str(sandbox.leads_dir)}
        runners = []
        for i in range(repeats):
            runner = SyncRunner(root / f"repeat{i + 1}", env, extra_env, memory_cap)
            runners.append(runner)
            tag = f"{name} {i + 1}/{repeats}"
            full, requests = measured_phase(sandbox, runner)
            say(f"{tag}: full sync {full['wall_s']:.1f}s, {full['requests']:,} requests, {full['records']:,} records, "
                f"peak RSS {full['peak_rss_mb']:.0f} MB, exit {full['exit_code']}{capped(full)}")
            no_change, _ = measured_phase(sandbox, runner)
            say(f"{tag}: no-change sync {no_change['wall_s']:.1f}s, {no_change['requests']:,} requests, "
                f"{no_change['rows_written']:,} rows written{capped(no_change)}")
            try:
                fl = measured_floor(sandbox, requests, root / f"floor{i + 1}", floor_concurrency)
            except Exception as exc:  # noqa: BLE001 - keep the sync figures; the ratio is then absent
                say(f"{tag}: the floor failed: {type(exc).__name__}: {exc}")
                fl = {"fetch_s": 0.0, "load_s": 0.0, "requests": 0, "streams": {}, "error": f"{type(exc).__name__}: {exc}"}
            say(f"{tag}: floor fetch {fl['fetch_s']:.1f}s + load {fl['load_s']:.1f}s ({fl['requests']:,} requests)")
            preset["repeats"].append({"full": full, "no_change": no_change, "floor": fl})
        for i in range(real_world):
            rw_runner = SyncRunner(root / f"realworld{i + 1}", env, real_env, memory_cap)
            preset["real_world"].append(real_world_phase(
                sandbox, rw_runner, preset["repeats"][i % repeats]["floor"], root / f"rwfloor{i + 1}",
                floor_concurrency, f"{name} real world {i + 1}/{real_world}"))
            if not keep:
                shutil.rmtree(rw_runner.workdir, ignore_errors=True)
        say(f"{name}: advancing the sandbox one day")
        started = time.monotonic()
        sandbox.advance(days=1)
        preset["sandbox"]["advance_day_s"] = round(time.monotonic() - started, 2)
        for i, runner in enumerate(runners):
            after, _ = measured_phase(sandbox, runner)
            say(f"{name} {i + 1}/{repeats}: after +1 day {after['wall_s']:.1f}s, {after['requests']:,} requests, "
                f"{after['rows_written']:,} rows written{capped(after)}")
            preset["after_day"].append(after)
            preset.setdefault("warehouse_mb", []).append(round(runner.warehouse.stat().st_size / 2**20, 1)
                                                          if runner.warehouse.exists() else None)
            if not keep:
                shutil.rmtree(runner.workdir, ignore_errors=True)
        preset["rate_limit"] = sandbox.rate_limit()
    preset["summary"] = report.summarize(preset)
    return preset


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", help="one preset (sandbox scale): " + ", ".join(SCALES))
    parser.add_argument("--presets", help="several presets, comma-separated, e.g. medium,large")
    parser.add_argument("--repeat", type=int, help="repeats per preset (default: large 1, medium 3, others 3)")
    parser.add_argument("--concurrency", type=int,
                        help="requests in flight per API for the sync (all <SOURCE>_CONCURRENCY) and the floor "
                        "(default: the sync's own default, 4)")
    parser.add_argument("--real-world", type=int, default=1,
                        help="real-world phases per preset (Metapic at its documented 300/min; default 1, 0: none)")
    parser.add_argument("--memory-cap", type=parse_size,
                        help="run every sync in a memory cgroup of this size with no swap (e.g. 2GB: a 2 GB-RAM "
                        "machine; bench/memory_cap.py; needs a writable cgroup memory controller)")
    parser.add_argument("--workdir", help="where warehouses and sandbox files go (default: a temp dir, removed)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (warehouses, logs)")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    parser.add_argument("--no-save", action="store_true", help="print the table only, write no results file")
    args = parser.parse_args(argv)
    names = args.presets or args.preset or "medium"
    args.names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in args.names if n not in SCALES]
    if unknown:
        parser.error(f"unknown preset(s) {unknown}; choose from {', '.join(SCALES)}")
    # medium first: the large preset's RSS is compared with it
    args.names.sort(key=lambda n: list(SCALES).index(n))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workroot = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="affwh-bench-"))
    workroot.mkdir(parents=True, exist_ok=True)
    results_dir = Path(args.results_dir)
    run: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "git_commit": git_commit(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "duckdb": duckdb.__version__,
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {"anchor": DEFAULT_ANCHOR, "seed": 1, "concurrency": args.concurrency or 4,
                     "metapic_limit_engine": LIFTED_METAPIC_LIMIT, "real_world_phases": args.real_world},
        "presets": {},
    }
    tables = []
    error: BaseException | None = None
    cleanup = ExitStack()
    cap = cleanup.enter_context(MemoryCap(args.memory_cap)) if args.memory_cap else None
    if cap:
        run["settings"]["memory_cap_mb"] = round(args.memory_cap / 2**20, 1)
    try:
        for name in args.names:
            repeats = args.repeat or DEFAULT_REPEATS.get(name, 3)
            preset = measure_preset(name, repeats, args.concurrency, workroot, args.keep, args.real_world, cap)
            medium_rss = None
            if "medium" in run["presets"]:
                medium_rss = run["presets"]["medium"]["summary"]["full"]["peak_rss_mb"]
            elif name == "large":
                found = report.latest_medium_rss(results_dir)
                if found:
                    medium_rss = found[0]
                    preset["medium_rss_from"] = found[1]
            preset["targets"] = report.targets(name, preset["summary"], medium_rss)
            run["presets"][name] = preset
            tables.append(report.render(preset))
            print("\n" + tables[-1] + "\n", flush=True)
    except BaseException as exc:  # noqa: BLE001 - the presets measured so far are still saved
        error = exc
        run["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        cleanup.close()
        if not args.keep and not args.workdir:
            shutil.rmtree(workroot, ignore_errors=True)
    run["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    run["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if not args.no_save:
        path = report.results_path(results_dir)
        path.write_text(json.dumps(run, indent=2, default=str) + "\n")
        say(f"results written to {path.relative_to(PROJECT_ROOT) if path.is_relative_to(PROJECT_ROOT) else path}")
    if error is not None:
        raise error
    failed = any(p["summary"]["failures"] for p in run["presets"].values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
