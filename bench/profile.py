"""Profile one full sync: ``python -m bench.profile --preset medium`` (needs the ``bench`` extra).

The sync runs exactly as in the benchmark (``affwh run`` in a subprocess, against the bench
sandbox in another process, fresh warehouse) under ``py-spy record --idle --threads``: py-spy
samples every thread from outside, so the fetch threads are seen as well as the main thread that
loads, and idle time (waiting for the API, the queue or a lock) is visible as such. The raw
samples are kept as ``bench/results/profile-<preset>-<date>.stacks.gz`` (collapsed stacks: feed
them to a flame-graph tool) and summarized in ``.summary.txt`` and ``.json`` beside it:

- **inclusive**: share of a thread's time spent inside each of our functions (the main thread
  runs Dagster, the loader and every DuckDB statement; a function counts once per sample);
- **innermost line of ours**: each sample charged to the deepest line of ``pipelines/`` or
  ``models/`` on its stack, i.e. which of our statements (a DuckDB query, a request, a parse) the
  time went to, whatever library ran underneath;
- **main thread, self**: where the main thread actually is (leaf frames), grouped by function and
  by module;
- **other threads**: the same for the fetch threads, grouped by thread name.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path

from bench.sandbox_process import PROJECT_ROOT, BenchSandbox
from bench.sync_runner import SyncRunner

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RATE = 50  # samples per second per thread
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def module_of(path: str) -> str:
    """A readable module name for a frame's file: ``pipelines/warehouse/loader.py``, ``dagster``, ``httpx``..."""
    path = path.replace("\\", "/")
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            rest = path.split(marker, 1)[1]
            return rest.split("/", 1)[0].removesuffix(".py")
    for root in ("pipelines/", "models/", "bench/"):
        if root in path:
            return root + path.split(root, 1)[1]
    if "/lib/python3" in path:
        return "stdlib:" + path.rsplit("/", 1)[-1]
    return path.rsplit("/", 1)[-1]


def parse_frame(frame: str) -> tuple[str, str, str | None]:
    """(``module:function``, module, ``module:function:line`` when it is our code) of one frame."""
    m = FRAME.match(frame)
    if not m:
        return frame, frame, None
    module = module_of(m.group("file"))
    name = f"{module}:{m.group('func')}"
    ours = f"{name}:{m.group('line')}" if module.startswith(("pipelines/", "models/")) else None
    return name, module, ours


def thread_group(name: str, frames: list[tuple[str, str, str | None]]) -> str:
    """Main thread (also before py-spy learnt its name), the fetch pools, or the thread's name."""
    if name == "MainThread" or any(f.endswith(":_run_module_as_main") for f, _, _ in frames):
        return "main"
    name = re.sub(r"_\d+$", "", name)
    return re.sub(r"^ThreadPoolExecutor-\d+$", "ThreadPoolExecutor (fetch pools)", name)


def summarize(raw: Path, top: int = 25) -> dict:
    """Aggregate py-spy's collapsed stacks per thread group."""
    threads: dict[str, dict[str, Counter]] = defaultdict(
        lambda: {"incl": Counter(), "self": Counter(), "mod": Counter(), "ours": Counter()}
    )
    totals: Counter = Counter()
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        head, _, frames_text = stack.partition(";")
        name = head.split(": ", 1)[1] if ": " in head else head
        frames = [parse_frame(f) for f in frames_text.split(";") if f]
        if not frames:
            continue
        group = thread_group(name, frames)
        totals[group] += count
        t = threads[group]
        for func in {f for f, module, _ in frames if module.startswith(("pipelines/", "models/"))}:
            t["incl"][func] += count
        t["self"][frames[-1][0]] += count
        t["mod"][frames[-1][1]] += count
        # the innermost line of our code: what we asked for (a DuckDB statement, a request...)
        ours = next((o for _, _, o in reversed(frames) if o), "(not in our code: start-up, Dagster)")
        t["ours"][ours] += count
    out = {}
    for group, t in sorted(threads.items(), key=lambda kv: -totals[kv[0]]):
        n = totals[group]

        def pct(counter: Counter) -> list[tuple[str, float, float]]:
            return [(k, round(100 * v / n, 1), round(v / RATE, 1)) for k, v in counter.most_common(top)]

        out[group] = {"samples": n, "seconds": round(n / RATE, 1), "inclusive": pct(t["incl"]),
                      "self": pct(t["self"]), "self_by_module": pct(t["mod"]), "innermost_line_of_ours": pct(t["ours"])}
    return out


def render(summary: dict, wall: float) -> str:
    lines = [f"sync wall time {wall:.1f}s; py-spy at {RATE} Hz with --idle (waits included)"]
    for group, data in summary.items():
        if data["seconds"] < 1:
            continue
        lines.append(f"\n## thread {group}: {data['seconds']}s sampled")
        for title in ("inclusive", "innermost_line_of_ours", "self", "self_by_module"):
            lines.append(f"  -- {title} (% of this thread's samples, seconds)")
            for name, pct, sec in data[title][: 25 if group == "main" else 10]:
                lines.append(f"  {pct:5.1f}%  {sec:7.1f}s  {name}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="medium")
    parser.add_argument("--results-dir", default=str(RESULTS_DIR))
    args = parser.parse_args(argv)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("py-spy is not installed: .venv/bin/pip install -e '.[test,bench]'", file=sys.stderr)
        return 2
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    raw = results / f"profile-{args.preset}-{date.today().isoformat()}.txt"
    workroot = Path(tempfile.mkdtemp(prefix="affwh-profile-"))
    try:
        with BenchSandbox(args.preset, workroot / "sandbox") as sandbox:
            runner = SyncRunner(workroot / "sync", {**sandbox.env, "CPAMOE_LEADS_DIR": str(sandbox.leads_dir)})
            runner.workdir.mkdir(parents=True)
            # --subprocesses: every feed step runs in a process of its own (multiprocess executor)
            command = [py_spy, "record", "--idle", "--threads", "--subprocesses", "--rate", str(RATE), "--format", "raw", "--full-filenames",
                       "--output", str(raw), "--", *runner.command()]
            started = time.monotonic()
            with (runner.workdir / "sync.log").open("w") as log:
                code = subprocess.call(command, cwd=runner.workdir, env=runner.environment(sandbox.clock()),
                                       stdout=log, stderr=subprocess.STDOUT)
            wall = time.monotonic() - started
            if code != 0:
                print((runner.workdir / "sync.log").read_text()[-3000:], file=sys.stderr)
                return code
    finally:
        shutil.rmtree(workroot, ignore_errors=True)
    summary = summarize(raw)
    text = render(summary, wall)
    (raw.with_suffix(".summary.txt")).write_text(text + "\n")
    (raw.with_suffix(".json")).write_text(json.dumps({"preset": args.preset, "wall_s": round(wall, 1), "threads": summary}, indent=1) + "\n")
    stacks = raw.with_suffix(".stacks.gz")  # collapsed stacks, for a flame-graph tool (zcat first)
    with raw.open("rb") as src, gzip.open(stacks, "wb") as dst:
        shutil.copyfileobj(src, dst)
    raw.unlink()
    print(text)
    print(f"\nsummary: {os.path.relpath(raw.with_suffix('.summary.txt'), PROJECT_ROOT)}; "
          f"collapsed stacks: {os.path.relpath(stacks, PROJECT_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
