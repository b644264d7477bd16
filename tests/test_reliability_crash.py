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
    from pipelines.warehouse.staging_dirs import StagingDir, remove_stale

    holder = (
        "import sys, time; from pathlib import Path; from pipelines.warehouse.staging_dirs import StagingDir; "
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


DG_LAUNCH = [str(Path(sys.executable).with_name("dg")), "launch", "--module-name", "pipelines.definitions", "--job", "sync_all"]


def _prepare_site(site: Site) -> None:
    """A site for the Dagster-launched crash tests: leads registered, Metapic's limit lifted, a
    little latency (so a kill lands mid-run), and a Dagster home whose SQLite storage is created
    once, before processes that would race creating it."""
    import shutil

    from reliability_fixtures import PROJECT_ROOT

    site.register_leads()
    site.api("metapic").rate_limit = 100_000
    site.sandbox.set_faults(latency=0.01)
    site.dagster_home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", site.dagster_home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(site.dagster_home)):
        pass


def _first_feed_start(instance: dg.DagsterInstance, run_id: str) -> float | None:
    feeds = {"cpc_orders", "cpl_orders", "swap_orders", "cpamoe_lead_files", "cpamoe_leads", "metapic_offers",
             "metapic_participants"}
    starts = [r.event_log_entry.timestamp for r in instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.STEP_START).records if r.event_log_entry.step_key in feeds]
    return min(starts) if starts else None


@pytest.mark.slow
def test_a_dg_launch_killed_while_it_holds_a_pool_slot_blocks_no_later_run(site, reference):
    """SIGKILL of ``dg launch --job sync_all`` while one of its steps holds the duckdb_writer slot:
    the next ``dg launch`` marks the dead run failed, frees its slot, and its feeds start within
    30 s; the sync then completes as an uninterrupted one would."""
    _prepare_site(site)

    killed = site.spawn(DG_LAUNCH, name="killed", **SLOW)
    with dg.DagsterInstance.from_config(str(site.dagster_home)) as instance:
        assert wait_until(lambda: bool(instance.event_log_storage.get_concurrency_run_ids()) or killed.proc.poll() is not None,
                          120, interval=0.02)
        assert killed.proc.poll() is None, "the run finished before it held a slot"
        killed.kill()
        (dead,) = instance.event_log_storage.get_concurrency_run_ids()

    started = time.time()
    final = site.spawn(DG_LAUNCH, name="after-kill", **SLOW)
    assert final.wait(240) == 0, final.output[-3000:]

    with dg.DagsterInstance.from_config(str(site.dagster_home)) as instance:
        assert instance.get_run_by_id(dead).status == dg.DagsterRunStatus.FAILURE
        assert not instance.event_log_storage.get_concurrency_run_ids()
        (after,) = [r.dagster_run for r in instance.get_run_records() if r.dagster_run.run_id != dead]
        assert after.status == dg.DagsterRunStatus.SUCCESS
        first = _first_feed_start(instance, after.run_id)
        assert first is not None and first - started < 30, first - started
    assert_same(site.dump(), reference.first)
    assert not integrity_problems(site.warehouse_path)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_run_worker_of_the_daemon_is_failed_by_run_monitoring_and_the_next_run_completes(site, reference):
    """The daemon's path: a run queued with ``dagster job launch``, started by the daemon in a run
    worker of its own; that worker (and its step processes) SIGKILLed while feeds run. Run
    monitoring (``dagster.yaml``) marks the run failed without any other run starting; the next
    queued run's feeds start within 30 s and it completes the sync."""
    import psutil

    _prepare_site(site)
    workspace = site.root / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - python_module:\n      module_name: pipelines.definitions\n"
        f"      working_directory: {site.root}\n      location_name: affiliate_warehouse\n"
    )
    quiet = {"SCHEDULES_DEFAULT_STATUS": "stopped", "AUTOMATION_DEFAULT_STATUS": "stopped", **SLOW}
    dagster = str(Path(sys.executable).with_name("dagster"))
    launch = [dagster, "job", "launch", "-w", str(workspace), "-j", "sync_all"]
    daemon = site.spawn([str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(workspace)],
                        name="daemon", **quiet)
    try:
        assert site.spawn(launch, name="launch-1", **quiet).wait(120) == 0
        with dg.DagsterInstance.from_config(str(site.dagster_home)) as instance:
            (record,) = instance.get_run_records()
            run_id = record.dagster_run.run_id
            assert wait_until(lambda: _first_feed_start(instance, run_id) is not None, 180, interval=0.2), \
                daemon.output[-3000:]
            (start,) = [r.event_log_entry for r in instance.get_records_for_run(
                run_id, of_type=dg.DagsterEventType.RUN_START).records]
            worker = psutil.Process(start.dagster_event.pid)
            for proc in [*worker.children(recursive=True), worker]:
                proc.kill()
            killed_at = time.monotonic()
            assert wait_until(lambda: instance.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE, 120, 0.5), \
                daemon.output[-3000:]
            print(f"run monitoring failed the dead run after {time.monotonic() - killed_at:.0f}s")

            launched = time.time()
            assert site.spawn(launch, name="launch-2", **quiet).wait(120) == 0
            (after,) = [r.dagster_run.run_id for r in instance.get_run_records() if r.dagster_run.run_id != run_id]
            assert wait_until(lambda: instance.get_run_by_id(after).is_finished, 300, 0.5)
            assert instance.get_run_by_id(after).status == dg.DagsterRunStatus.SUCCESS
            assert _first_feed_start(instance, after) - launched < 30
            assert not instance.event_log_storage.get_concurrency_run_ids()
    finally:
        daemon.kill()
    assert_same(site.dump(), reference.first)
