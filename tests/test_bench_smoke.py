"""The benchmark harness end to end on the tiny preset: one repeat, real sandbox and real syncs.

It checks the harness measures what it claims (positive figures, the floor replays exactly the
full sync's requests, the table has every phase and stream), not any speed: timings live in
bench/results, never in assertions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bench import report
from bench import run as bench_run

PHASES = (
    "1. full initial sync",
    "2. no-change incremental",
    "3. incremental after +1 day",
    "4. floor: fetch (bare httpx)",
    "floor: load (DuckDB JSON)",
    "floor: fetch + load",
)
API_STREAMS = ("cpc_orders", "cpl_orders", "swap_orders", "cpamoe_leads", "metapic_offers", "metapic_participants")


@pytest.mark.timeout(300)
def test_bench_tiny_preset_measures_every_phase(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    results = tmp_path / "results"
    code = bench_run.main(["--preset", "tiny", "--repeat", "1", "--results-dir", str(results), "--workdir", str(tmp_path / "work")])
    out = capsys.readouterr().out
    files = list(results.glob("*.json"))
    assert len(files) == 1
    preset = json.loads(files[0].read_text())["presets"]["tiny"]
    phases = [p for r in preset["repeats"] for p in (r["full"], r["no_change"])] + preset["after_day"]
    tails = [p.get("log_tail", "") for p in phases]
    assert code == 0, "a sync failed:\n" + "\n---\n".join(t for t in tails if t)

    for phase in PHASES:
        assert phase in out
    assert "HEADLINE full sync / floor(fetch+load) = " in out
    for stream in API_STREAMS:
        assert f"\n{stream} " in out

    rep = preset["repeats"][0]
    full, no_change, floor = rep["full"], rep["no_change"], rep["floor"]
    after = preset["after_day"][0]

    for phase in (full, no_change, after):
        assert phase["exit_code"] == 0
        assert phase["wall_s"] > 0 and phase["peak_rss_mb"] > 0 and phase["requests"] > 0
    assert full["records"] > 0 and full["rows_written"] > 0
    assert set(API_STREAMS) <= set(full["requests_by_stream"])
    # the floor replays exactly the pages the full sync read
    assert floor["requests"] == full["requests"] - full["non_200_responses"]
    assert floor["fetch_s"] > 0 and floor["load_s"] > 0
    for stream in API_STREAMS:
        assert floor["streams"][stream]["records"] == full["streams"][stream]["records"], stream
    # a no-change run asks for less than a full walk and writes nothing
    assert no_change["requests"] < full["requests"]
    assert no_change["rows_written"] == 0 and no_change["history_rows_added"] == 0
    assert after["rows_written"] > 0  # a simulated day changes open orders

    # the engine phases ran with Metapic's limit lifted on both sides, the real-world phase at 300/min
    assert preset["metapic_limit"] == {"engine": bench_run.LIFTED_METAPIC_LIMIT, "real_world": 300}
    assert full["metapic_refused"] == 0
    (real,) = preset["real_world"]
    assert real["full"]["exit_code"] == 0 and real["full"]["records"] == full["records"]
    assert real["full"]["metapic_max_per_60s"] <= 300 and real["full"]["metapic_refused"] == 0
    assert real["metapic_floor_s"] > 0 and real["others_floor_s"] > 0
    assert real["lanes_floor_s"] == max(real["metapic_floor_s"], real["others_floor_s"])
    assert set(real["metapic_floor"]["streams"]) == {"metapic_offers", "metapic_participants"}
    assert "5. real world: full sync (Metapic 300/min)" in out and "REAL WORLD" in out
    # peak RSS covers the process tree: never below the CLI process's own high-water mark
    assert full["peak_rss_mb"] >= full["peak_rss_main_mb"] > 0

    summary = preset["summary"]
    assert summary["real_world"]["ratio"] > 0
    assert summary["ratio_to_floor"] > 0
    assert {t["target"] for t in preset["targets"]} >= {"full sync / floor (fetch+load)", "peak RSS of the full sync, MB"}


def test_the_growth_check_takes_the_medium_run_that_ran_last_whatever_the_file_times(tmp_path: Path) -> None:
    """A fresh clone gives every results file the same modification time (here: the older run's
    file is the newer file), so the newest medium run is the one whose own ``started_at`` is."""

    def result(name: str, started: str, rss: float, mtime: int) -> None:
        path = tmp_path / name
        path.write_text(json.dumps({"started_at": started, "finished_at": started,
                                    "presets": {"medium": {"summary": {"full": {"peak_rss_mb": rss}}}}}))
        os.utime(path, (mtime, mtime))

    result("2026-12-02.json", "2026-12-02T08:00:00+00:00", 783.0, mtime=1_000)
    result("2026-11-21.json", "2026-11-21T07:00:00+00:00", 731.9, mtime=2_000)
    (tmp_path / "large-only.json").write_text(json.dumps({"started_at": "2026-12-03T00:00:00+00:00", "presets": {}}))

    assert report.latest_medium_rss(tmp_path) == (783.0, "2026-12-02.json")
