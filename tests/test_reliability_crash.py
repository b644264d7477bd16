"""Crash safety: SIGKILL the sync at random points, several times, then run it again.

The sync runs as the CLI does it (``python -m pipelines.cli run``, a process of its own with a
persistent Dagster home) against the test's sandbox, slowed down (small pages, a little latency
on every request) so kills land while pages are being fetched AND while a stream commits (the
warehouse's write-ahead log exists only while a transaction writes it). After every kill the
warehouse is consistent; after the final run it is identical to an uninterrupted sync of the same
world, no staging folder is left behind and the killed runs hold no pool slot.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
from conftest import clean_env
from reliability_fixtures import Site, wait_until
from warehouse_compare import assert_same, integrity_problems

SLOW = {"ONLYTRAFFIC_MARKETER_PAGE_SIZE": "20", "ONLYTRAFFIC_STUDIO_PAGE_SIZE": "20", "METAPIC_PAGE_SIZE": "4"}
CLI = [sys.executable, "-m", "pipelines.cli", "run"]


def wal(site: Site) -> Path:
    return site.warehouse_path.with_name(site.warehouse_path.name + ".wal")


def outcome(site: Site, run) -> str:
    """How a killed run died. A clean DETACH checkpoints the warehouse and removes its write-ahead
    log, so a log left behind by a dead process means it died in the middle of a write."""
    if run.returncode == 0:
        return "finished"
    return "commit" if wal(site).exists() else "fetch"


def kill_while_fetching(site: Site, rng: random.Random, name: str) -> str:
    """Start a sync and kill it after a random number of API requests."""
    start = len(site.sandbox.stats.arrivals)
    wanted = start + rng.randint(5, 45)
    run = site.spawn(CLI, name=name, **SLOW)
    wait_until(lambda: len(site.sandbox.stats.arrivals) >= wanted or run.proc.poll() is not None, 120)
    run.kill()
    return outcome(site, run)


def kill_while_committing(site: Site, rng: random.Random, name: str) -> str:
    """Start a sync and kill it in the middle of a transaction writing the warehouse (one of the
    first few): frozen (SIGSTOP) as soon as the write-ahead log appears, killed if it is still
    writing, let go otherwise."""
    skip = rng.randint(0, 3)
    run = site.spawn(CLI, name=name, **SLOW)
    seen, was = 0, False
    deadline = time.monotonic() + 120
    while run.proc.poll() is None and time.monotonic() < deadline:
        now = wal(site).exists()
        if now and not was:
            seen += 1
            if seen > skip:
                os.killpg(run.proc.pid, signal.SIGSTOP)
                if wal(site).exists():
                    break  # frozen mid-write: killed right there
                os.killpg(run.proc.pid, signal.SIGCONT)
        was = now
        time.sleep(0.001)
    run.kill()
    return outcome(site, run)


@pytest.mark.slow
def test_killed_syncs_then_one_more_run_equal_an_uninterrupted_sync(site, reference):
    rng = random.Random(20260115)
    site.register_leads()
    site.api("metapic").rate_limit = 100_000  # many runs in a minute: not what this test is about
    site.sandbox.set_faults(latency=0.01)
    outcomes = []
    for phase, expected in enumerate((reference.first, reference.second)):
        if phase:
            site.advance(days=1)
        for i, kill in enumerate((kill_while_fetching, kill_while_committing)):
            outcomes.append(kill(site, rng, f"phase{phase}-kill{i}"))
            if site.warehouse_path.exists():  # consistent at every point: nothing half-written
                assert not integrity_problems(site.warehouse_path), outcomes

        final = site.run_cli("run", name=f"phase{phase}-final", **SLOW)

        assert final.returncode == 0, final.output[-3000:]
        assert_same(site.dump(), expected)
        assert not integrity_problems(site.warehouse_path)
        assert [p for p in (site.root / ".staging").iterdir()] == []  # killed runs left no debris
        assert "was killed before it finished" in final.stdout
    print(f"kills: {outcomes}")
    assert "fetch" in outcomes and "commit" in outcomes, outcomes

    with dg.DagsterInstance.from_config(str(site.dagster_home)) as instance:
        runs = instance.get_run_records()
        failed = [r for r in runs if r.dagster_run.status == dg.DagsterRunStatus.FAILURE]
        assert len(failed) == sum(o != "finished" for o in outcomes)  # each killed run marked failed
        assert not instance.event_log_storage.get_concurrency_run_ids()  # no slot held by a dead run


@pytest.mark.slow
def test_ctrl_c_stops_both_lanes_promptly_and_the_next_run_completes_the_sync(site, reference):
    """SIGINT to the CLI's process group (what Ctrl-C sends) while both lanes fetch: the running
    feeds stop at their next page and commit nothing, no further feed starts, the process exits
    soon; one more run then equals an uninterrupted sync."""
    site.register_leads()
    site.api("metapic").rate_limit = 100_000  # not what this test is about
    site.sandbox.set_faults(latency=0.01)
    start = len(site.sandbox.stats.arrivals)

    def fetching_in_both_lanes() -> bool:
        paths = [a.target for a in list(site.sandbox.stats.arrivals)[start:]]
        return any("/metapic/" in p for p in paths) and sum("/metapic/" not in p for p in paths) >= 10

    run = site.spawn(CLI, name="interrupted", **SLOW)
    assert wait_until(lambda: fetching_in_both_lanes() or run.proc.poll() is not None, 120)
    assert run.proc.poll() is None, "the sync finished before it could be interrupted"
    os.killpg(run.proc.pid, signal.SIGINT)
    interrupted = time.monotonic()
    run.wait(120)
    stopped_after = time.monotonic() - interrupted

    assert run.returncode != 0
    assert stopped_after < 30, f"{stopped_after:.1f}s after Ctrl-C\n{run.output[-3000:]}"
    if site.warehouse_path.exists():
        assert not integrity_problems(site.warehouse_path)
    final = site.run_cli("run", name="after-ctrl-c", **SLOW)
    assert final.returncode == 0, final.output[-3000:]
    assert_same(site.dump(), reference.first)


def test_a_staging_folder_is_removed_only_once_its_process_is_gone(tmp_path):
    from pipelines.staging_dirs import StagingDir, remove_stale

    holder = (
        "import sys, time; from pathlib import Path; from pipelines.staging_dirs import StagingDir; "
        "d = StagingDir(Path(sys.argv[1]), 'stream-'); print(d.path, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", holder, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=clean_env())
    try:
        held = Path(proc.stdout.readline().strip())
        mine = StagingDir(tmp_path, "other-")  # creating a folder sweeps the stale ones first

        assert held.is_dir() and mine.path.is_dir()  # a live run keeps its folder
        assert remove_stale(tmp_path) == []
    finally:
        proc.kill()
        proc.wait(10)

    assert remove_stale(tmp_path) == [held]  # SIGKILLed: its lock is gone, so is its folder
    assert mine.path.is_dir()
    mine.remove()
    assert list(tmp_path.iterdir()) == []
