"""Running unattended: schedules, freshness policies, the views' automation, and the metadata every
ingestion materialization records.

Schedules are evaluated as the daemon would at a given tick (``evaluate_tick``); the automation
condition is evaluated by Dagster's own evaluator after real runs against the sandbox.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import dagster as dg
import pytest

from pipelines.schedules import latest_complete_day

SCHEDULES = {"sync_open_records", "daily_reconciliation", "swap_orders_latest_day", "metapic_daily_stats_latest_day"}
DAILY_ASSETS = {"swap_orders_by_created_day", "metapic_participant_daily_stats"}
ORDER_FEEDS = {"cpc_orders", "cpl_orders", "swap_orders", "swap_orders_by_created_day"}


def defs_for(monkeypatch, **env: str) -> dg.Definitions:
    from pipelines.definitions import build_defs

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return build_defs()


def tick(defs: dg.Definitions, name: str, when: datetime, instance: dg.DagsterInstance):
    schedule = defs.resolve_schedule_def(name)
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=when, repository_def=defs.get_repository_def()
    )
    return schedule.evaluate_tick(context)


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


@pytest.fixture
def defs(monkeypatch):
    for name in ("SYNC_OPEN_RECORDS_CRON", "RECONCILE_CRON", "DAILY_PARTITIONS_CRON", "SCHEDULES_TIMEZONE",
                 "SCHEDULES_DEFAULT_STATUS", "AUTOMATION_DEFAULT_STATUS", "FRESHNESS_WARN_MINUTES",
                 "FRESHNESS_FAIL_MINUTES", "FRESHNESS_DAILY_WARN_HOURS", "FRESHNESS_DAILY_FAIL_HOURS"):
        monkeypatch.delenv(name, raising=False)
    return defs_for(monkeypatch)


def test_definitions_load_with_every_schedule_and_the_automation_sensor(defs):
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert {s.name for s in repo.schedule_defs} == SCHEDULES
    expected = {
        "sync_open_records": ("*/30 * * * *", "sync_all"),
        "daily_reconciliation": ("0 3 * * *", "sync_all"),
        "swap_orders_latest_day": ("0 2 * * *", "swap_orders_by_created_day_job"),
        "metapic_daily_stats_latest_day": ("0 2 * * *", "metapic_participant_daily_stats_job"),
    }
    for name, (cron, job) in expected.items():
        schedule = repo.get_schedule_def(name)
        assert (schedule.cron_schedule, schedule.job_name, schedule.execution_timezone) == (cron, job, "UTC")
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    (sensor,) = repo.sensor_defs
    assert sensor.name == "automation_sensor" and sensor.default_status == dg.DefaultSensorStatus.RUNNING


def test_sync_open_records_runs_sync_all_incrementally(defs, instance):
    data = tick(defs, "sync_open_records", datetime(2026, 1, 15, 10, 30, tzinfo=UTC), instance)

    (request,) = data.run_requests
    assert request.run_config == {} and request.tags["sync_mode"] == "incremental"
    assert request.partition_key is None


def test_sync_open_records_skips_the_reconciliation_tick_and_a_sync_in_flight(defs, instance):
    at_three = tick(defs, "sync_open_records", datetime(2026, 1, 15, 3, 0, tzinfo=UTC), instance)
    assert not at_three.run_requests and "reconciliation" in at_three.skip_message

    run = dg.DagsterRun(job_name="sync_all", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.STARTED)
    instance.add_run(run)
    busy = tick(defs, "sync_open_records", datetime(2026, 1, 15, 10, 30, tzinfo=UTC), instance)
    assert not busy.run_requests and run.run_id in busy.skip_message

    # once no sync_all run is in flight (only finished ones), the next tick runs again
    instance.delete_run(run.run_id)
    instance.add_run(dg.DagsterRun(job_name="sync_all", run_id=str(uuid.uuid4()), status=dg.DagsterRunStatus.SUCCESS))
    assert tick(defs, "sync_open_records", datetime(2026, 1, 15, 11, 0, tzinfo=UTC), instance).run_requests


def test_daily_reconciliation_runs_sync_all_with_full_refresh(defs, instance):
    from pipelines.definitions import INGESTION_KEYS, full_refresh_run_config

    data = tick(defs, "daily_reconciliation", datetime(2026, 1, 15, 3, 0, tzinfo=UTC), instance)

    (request,) = data.run_requests
    assert request.run_config == full_refresh_run_config()
    # one op per feed, named after its asset
    assert {op for op, cfg in request.run_config["ops"].items() if cfg["config"]["full_refresh"]} == set(INGESTION_KEYS)
    sync_all = defs.resolve_job_def("sync_all")
    assert {op for op in request.run_config["ops"]} <= {n.name for n in sync_all.graph.node_defs}


@pytest.mark.parametrize("name", ["swap_orders_latest_day", "metapic_daily_stats_latest_day"])
def test_daily_partition_schedules_request_the_latest_complete_day(defs, instance, name):
    data = tick(defs, name, datetime(2026, 1, 16, 2, 0, tzinfo=UTC), instance)

    (request,) = data.run_requests
    assert request.partition_key == "2026-01-15"


def test_latest_complete_day_never_names_an_unfinished_or_missing_day():
    days = dg.DailyPartitionsDefinition(start_date="2026-01-10", end_offset=1)  # like swap's: today included

    assert latest_complete_day(days, datetime(2026, 1, 16, 0, 0, tzinfo=UTC)) == "2026-01-15"
    assert latest_complete_day(days, datetime(2026, 1, 16, 23, 59, tzinfo=UTC)) == "2026-01-15"
    # a tick in another time zone still names a UTC day that has ended
    berlin = datetime(2026, 1, 16, 0, 30, tzinfo=UTC) + timedelta(hours=1)
    assert latest_complete_day(days, berlin) == "2026-01-15"
    assert latest_complete_day(days, datetime(2026, 1, 11, 0, 0, tzinfo=UTC)) == "2026-01-10"
    assert latest_complete_day(days, datetime(2026, 1, 10, 23, 0, tzinfo=UTC)) is None


def test_environment_changes_crons_time_zone_and_status(monkeypatch, instance):
    defs = defs_for(
        monkeypatch,
        SYNC_OPEN_RECORDS_CRON="*/10 * * * *",
        RECONCILE_CRON="30 4 * * *",
        DAILY_PARTITIONS_CRON="15 1 * * *",
        SCHEDULES_TIMEZONE="Europe/Berlin",
        SCHEDULES_DEFAULT_STATUS="stopped",
        AUTOMATION_DEFAULT_STATUS="stopped",
    )
    repo = defs.get_repository_def()
    crons = {s.name: (s.cron_schedule, s.execution_timezone, s.default_status) for s in repo.schedule_defs}
    stopped = dg.DefaultScheduleStatus.STOPPED
    assert crons == {
        "sync_open_records": ("*/10 * * * *", "Europe/Berlin", stopped),
        "daily_reconciliation": ("30 4 * * *", "Europe/Berlin", stopped),
        "swap_orders_latest_day": ("15 1 * * *", "Europe/Berlin", stopped),
        "metapic_daily_stats_latest_day": ("15 1 * * *", "Europe/Berlin", stopped),
    }
    assert repo.sensor_defs[0].default_status == dg.DefaultSensorStatus.STOPPED
    # the reconciliation tick moved with it (04:30 Berlin), and so did the skip
    at = datetime(2026, 1, 15, 3, 30, tzinfo=UTC)  # 04:30 in Berlin
    assert "reconciliation" in tick(defs, "sync_open_records", at, instance).skip_message
    assert tick(defs, "sync_open_records", datetime(2026, 1, 15, 2, 0, tzinfo=UTC), instance).run_requests


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SYNC_OPEN_RECORDS_CRON", "every half hour", "SYNC_OPEN_RECORDS_CRON"),
        ("SCHEDULES_DEFAULT_STATUS", "on", "SCHEDULES_DEFAULT_STATUS"),
        ("SCHEDULES_TIMEZONE", "Mars/Olympus", "SCHEDULES_TIMEZONE"),
        ("FRESHNESS_WARN_MINUTES", "500", "FRESHNESS_WARN_MINUTES must be shorter"),
        ("FRESHNESS_DAILY_FAIL_HOURS", "-1", "FRESHNESS_DAILY_FAIL_HOURS"),
    ],
)
def test_a_bad_setting_fails_at_load_naming_the_variable(monkeypatch, name, value, message):
    with pytest.raises(ValueError, match=message):
        defs_for(monkeypatch, **{name: value})


def _freshness(defs: dg.Definitions) -> dict[str, tuple[timedelta, timedelta]]:
    return {
        spec.key.to_user_string(): (spec.freshness_policy.warn_window.to_timedelta(), spec.freshness_policy.fail_window.to_timedelta())
        for spec in defs.resolve_all_asset_specs()
        if spec.freshness_policy is not None
    }


def test_every_ingestion_asset_has_a_freshness_policy(defs, monkeypatch):
    from pipelines.definitions import INGESTION_KEYS

    current = set(INGESTION_KEYS)
    assert _freshness(defs) == {
        **dict.fromkeys(current, (timedelta(minutes=60), timedelta(minutes=180))),
        **dict.fromkeys(DAILY_ASSETS, (timedelta(hours=26), timedelta(hours=50))),
    }

    changed = _freshness(defs_for(monkeypatch, FRESHNESS_WARN_MINUTES="20", FRESHNESS_FAIL_MINUTES="45"))
    assert changed["cpc_orders"] == (timedelta(minutes=20), timedelta(minutes=45))


def test_views_carry_the_automation_condition_and_are_in_sync_all(defs):
    specs = {s.key.to_user_string(): s for s in defs.resolve_all_asset_specs()}
    views = {k for k, s in specs.items() if s.group_name == "views"}
    assert views and all(specs[v].automation_condition is not None for v in views)
    sync_all = {k.to_user_string() for k in defs.resolve_job_def("sync_all").asset_layer.executable_asset_keys}
    assert views <= sync_all


# -- against the sandbox -----------------------------------------------------------------------------


def _run(job_name: str, instance: dg.DagsterInstance, **kwargs) -> dg.ExecuteInProcessResult:
    from pipelines.definitions import build_defs

    result = build_defs().resolve_job_def(job_name).execute_in_process(instance=instance, **kwargs)
    assert result.success
    return result


def _requested(defs, instance, cursor) -> tuple[set[str], object]:
    """The assets one automation tick would request, as the automation sensor evaluates it."""
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    keys = {spec.key for spec in defs.resolve_all_asset_specs()}
    return {k.to_user_string() for k in keys if result.get_requested_partitions(k)}, result.cursor


@pytest.fixture(scope="module")
def synced(tmp_path_factory):
    """One world the two tests below only read: automation evaluated before any run, after
    ``sync_all`` and after one swap partition; then a Metapic daily-stats partition."""
    from conftest import open_world

    from pipelines.definitions import build_defs

    with pytest.MonkeyPatch.context() as monkeypatch, dg.instance_for_test() as instance:
        with open_world(tmp_path_factory.mktemp("schedules"), monkeypatch) as world:
            defs = build_defs()
            requested = {}
            requested["baseline"], cursor = _requested(defs, instance, None)
            results = [_run("sync_all", instance)]
            requested["after sync_all"], cursor = _requested(defs, instance, cursor)
            results.append(_run("swap_orders_by_created_day_job", instance, partition_key="2026-01-10"))
            requested["after a swap partition"], cursor = _requested(defs, instance, cursor)
            results.append(_run("metapic_participant_daily_stats_job", instance, partition_key="2026-01-10"))
            yield SimpleNamespace(world=world, defs=defs, requested=requested, results=results)


def test_views_are_requested_after_a_partition_backfill_but_not_after_sync_all(synced):
    defs, requested = synced.defs, synced.requested
    assert requested["baseline"] == set()  # the first evaluation only sets a baseline
    assert requested["after sync_all"] == set()  # sync_all rebuilt its views in the same run

    # every view reading what that asset writes, directly or through other views (a view behind
    # order_daily_snapshots, which has no automation condition, waits for sync_all)
    deps = {s.key.to_user_string(): {d.asset_key.to_user_string() for d in s.deps} for s in defs.resolve_all_asset_specs() if s.group_name == "views"}
    downstream_views: set[str] = set()
    while grown := {v for v, d in deps.items() if d & (downstream_views | {"swap_orders_by_created_day"})} - downstream_views:
        downstream_views |= grown
    assert {"v_fill_rate", "v_earnings", "v_summary"} <= downstream_views
    assert requested["after a swap partition"] == downstream_views


def test_every_ingestion_materialization_records_counts_runtime_and_figures(synced):
    from pipelines.definitions import INGESTION_KEYS

    world, results = synced.world, synced.results
    events = {
        e.asset_key.to_user_string(): e.metadata
        for r in results
        for e in (m.event_specific_data.materialization for m in r.get_asset_materialization_events())
    }
    numeric = (dg.IntMetadataValue, dg.FloatMetadataValue)
    for asset in [*INGESTION_KEYS, *DAILY_ASSETS]:
        meta = events[asset]
        for key in ("rows_received", "inserted", "updated", "unchanged", "requests", "retries", "duration_s", "dagster/row_count"):
            assert isinstance(meta.get(key), numeric), (asset, key, meta.get(key))
    for asset in ORDER_FEEDS:
        for key in ("earned_usd", "orders_open", "avg_fill_rate"):
            assert isinstance(events[asset].get(key), dg.FloatMetadataValue), (asset, key)
    # the row count is the table's, after the commit
    assert events["cpc_orders"]["dagster/row_count"].value == world.scalar("SELECT count(*) FROM cpc_orders")
    assert events["swap_orders_by_created_day"]["dagster/row_count"].value == world.scalar("SELECT count(*) FROM swap_orders")
    assert events["cpamoe_lead_files"]["rows_received"].value == 0  # no files: zeros, not missing keys
