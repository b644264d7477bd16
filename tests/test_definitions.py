"""The code location as Dagster and its ``dg`` tooling see it: every name users rely on, one step
per feed, and a module scaffolded by ``dg`` loaded with the rest."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from conftest import clean_env

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DG = str(Path(sys.executable).with_name("dg"))
FEEDS = {"cpc_orders", "cpl_orders", "swap_orders", "cpamoe_lead_files", "cpamoe_leads", "metapic_offers",
         "metapic_participants"}
VIEWS = {"v_summary", "v_fill_rate", "v_earnings", "v_earnings_daily", "v_status_durations", "v_order_alerts",
         "v_warehouse_clock"}
DAILY = {"swap_orders_by_created_day", "metapic_participant_daily_stats"}
JOBS = {"sync_all", "cpamoe_sync", "swap_orders_by_created_day_job", "metapic_participant_daily_stats_job"}


@pytest.fixture(scope="module")
def defs() -> dg.Definitions:
    from pipelines.definitions import build_defs

    return build_defs()


def test_every_user_facing_name_is_defined(defs):
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert FEEDS | VIEWS | DAILY | {"cpamoe_payouts", "order_daily_snapshots"} <= keys
    assert JOBS <= {j.name for j in defs.resolve_all_job_defs()}
    schedules = {s.name for s in defs.get_repository_def().schedule_defs}
    assert schedules == {"sync_open_records", "daily_reconciliation", "swap_orders_latest_day",
                         "metapic_daily_stats_latest_day"}


def test_each_feed_is_its_own_asset_and_step_with_a_retry_policy_and_its_checks(defs):
    from pipelines.definitions import INGESTION_KEYS

    assert set(INGESTION_KEYS) == FEEDS
    sync_all = defs.resolve_job_def("sync_all")
    steps = {node.name for node in sync_all.graph.nodes}
    for feed in FEEDS:
        asset = defs.resolve_assets_def(feed)
        assert [k.to_user_string() for k in asset.keys] == [feed]  # one table per op
        assert asset.op.name == feed and feed in steps
        assert asset.op.retry_policy is not None
        assert {k.asset_key.to_user_string() for k in asset.check_keys} <= {feed}
    # the checks of the tables every feed writes travel with the feed that writes them
    assert {k.name for k in defs.resolve_assets_def("cpc_orders").check_keys} >= {
        "cpc_orders_unique_keys", "cpc_orders_known_statuses", "status_history_cpc_intervals",
        "cpc_orders_total_earned_consistent"}
    # CPU-bound feeds are tagged for the executor's limit; Metapic waits and starts first
    tags = {feed: defs.resolve_assets_def(feed).op.tags for feed in FEEDS}
    assert {f for f, t in tags.items() if t["affwh/load"] == "wait"} == {"metapic_offers", "metapic_participants"}
    assert all(int(tags[f]["dagster/priority"]) > 0 for f in ("metapic_offers", "metapic_participants"))


def test_the_executor_is_bounded_for_two_cores_and_recovers_dead_runs(defs, monkeypatch):
    from pipelines.definitions import build_defs
    from pipelines.executor import RecoveringMultiprocessExecutor

    executor = defs.resolve_job_def("sync_all").executor_def
    config = executor.apply_config_mapping({}).value["config"]  # what a run without executor config gets
    with dg.instance_for_test() as instance:
        init = dg.InitExecutorContext(job=dg.reconstructable(_sync_all), executor_def=executor,
                                      executor_config=config, instance=instance)
        built = executor.executor_creation_fn(init)
    assert isinstance(built, RecoveringMultiprocessExecutor)
    assert built._max_concurrent == 2
    assert built._tag_concurrency_limits == [{"key": "affwh/load", "value": "cpu", "limit": 1}]
    assert built._start_method == "forkserver"

    monkeypatch.setenv("SYNC_MAX_CONCURRENT_STEPS", "0")
    with pytest.raises(ValueError, match="SYNC_MAX_CONCURRENT_STEPS"):
        build_defs()


def _sync_all() -> dg.JobDefinition:
    from pipelines.definitions import sync_all_job

    return sync_all_job()


def test_full_refresh_run_config_names_each_selected_feed_op():
    from pipelines.definitions import full_refresh_run_config

    assert set(full_refresh_run_config()["ops"]) == FEEDS
    assert full_refresh_run_config(["cpamoe_lead_files", "cpamoe_leads", "v_summary"]) == {
        "ops": {"cpamoe_lead_files": {"config": {"full_refresh": True}},
                "cpamoe_leads": {"config": {"full_refresh": True}}}}


@pytest.mark.slow
def test_dg_scaffold_defs_adds_an_asset_that_is_loaded_and_dg_check_defs_passes(tmp_path):
    """In a copy of the project (the checkout stays untouched), as a contributor would."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "pipelines", "models", "sql"):
        source = PROJECT_ROOT / name
        copy = shutil.copytree if source.is_dir() else shutil.copyfile
        copy(source, project / name, **({"ignore": shutil.ignore_patterns("__pycache__")} if source.is_dir() else {}))
    env = clean_env(VIRTUAL_ENV=sys.prefix, WAREHOUSE_PATH=str(tmp_path / "wh.duckdb"))

    def dg_run(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run([DG, *args], cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        return done

    dg_run("scaffold", "defs", "dagster.asset", "my_asset.py")
    assert (project / "pipelines" / "defs" / "my_asset.py").is_file()
    dg_run("check", "defs")
    listed = json.loads(dg_run("list", "defs", "--json").stdout)
    keys = {a["asset_key"] for a in listed["assets"]}
    assert "my_asset" in keys and FEEDS | VIEWS <= keys
    assert JOBS <= {j["name"] for j in listed["jobs"]}
