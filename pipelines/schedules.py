"""How the project runs unattended: schedules, the automation sensor and freshness policies.

Everything here is built from environment variables (declared, with their defaults and checks, in
:mod:`pipelines.settings`, whence the README's "Operations" table) and applied to the definitions
in one place, so feed modules carry no operational settings. Schedules and the sensor are RUNNING by default, which in Dagster means they fire only
while the daemon runs (``make ui`` / ``dg dev``, or ``dagster-daemon run``); nothing fires from
``make run`` or the tests' in-process runs.
"""

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

import dagster as dg

from pipelines import settings
from pipelines.run_recovery import recover_killed_runs

# dagster's own cron helpers (the ones its scheduler uses), so "is this a tick of that cron" agrees
# with the daemon exactly.
from dagster._utils.schedules import get_next_cron_tick

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _window(warn_name: str, fail_name: str, unit: timedelta) -> tuple[timedelta, timedelta]:
    warn, fail = settings.value(warn_name) * unit, settings.value(fail_name) * unit
    if warn >= fail:
        raise ValueError(f"{warn_name} must be shorter than {fail_name}")
    return warn, fail


@dataclass(frozen=True)
class OperationsSettings:
    """The environment's choices (read once per ``build_defs``; tests change the variables)."""

    open_records_cron: str
    reconcile_cron: str
    daily_partitions_cron: str
    timezone: str
    schedules_running: bool
    automation_running: bool
    automation_interval_seconds: int
    freshness: tuple[timedelta, timedelta]  # (warn, fail) for assets synced all day long
    daily_freshness: tuple[timedelta, timedelta]  # (warn, fail) for daily partitions

    @classmethod
    def from_env(cls) -> "OperationsSettings":
        return cls(
            open_records_cron=settings.value("SYNC_OPEN_RECORDS_CRON"),
            reconcile_cron=settings.value("RECONCILE_CRON"),
            daily_partitions_cron=settings.value("DAILY_PARTITIONS_CRON"),
            timezone=settings.value("SCHEDULES_TIMEZONE"),
            schedules_running=settings.value("SCHEDULES_DEFAULT_STATUS") == "running",
            automation_running=settings.value("AUTOMATION_DEFAULT_STATUS") == "running",
            automation_interval_seconds=max(int(settings.value("AUTOMATION_INTERVAL_SECONDS")), 1),
            freshness=_window("FRESHNESS_WARN_MINUTES", "FRESHNESS_FAIL_MINUTES", timedelta(minutes=1)),
            daily_freshness=_window("FRESHNESS_DAILY_WARN_HOURS", "FRESHNESS_DAILY_FAIL_HOURS", timedelta(hours=1)),
        )

    @property
    def schedule_status(self) -> dg.DefaultScheduleStatus:
        return dg.DefaultScheduleStatus.RUNNING if self.schedules_running else dg.DefaultScheduleStatus.STOPPED

    def is_reconcile_tick(self, when: datetime) -> bool:
        return get_next_cron_tick(self.reconcile_cron, when - timedelta(seconds=1), self.timezone) == when


# -- schedules -------------------------------------------------------------------------------------


def sync_open_records_schedule(sync_all: str, settings: OperationsSettings) -> dg.ScheduleDefinition:
    """``sync_all`` incrementally: open records re-read, new ones picked up, finished ones left.

    Skipped while a ``sync_all`` run is queued or running (a slow sync never piles up runs) and on
    the daily reconciliation's ticks (that run re-reads everything anyway).
    """

    @dg.schedule(
        name="sync_open_records",
        job_name=sync_all,
        cron_schedule=settings.open_records_cron,
        execution_timezone=settings.timezone,
        default_status=settings.schedule_status,
        description=f"Incremental sync_all ({settings.open_records_cron}, {settings.timezone}; SYNC_OPEN_RECORDS_CRON): "
        "open orders, leads and live offers refreshed, new records picked up.",
    )
    def sync_open_records(context: dg.ScheduleEvaluationContext):
        tick = context.scheduled_execution_time
        if tick is not None and settings.is_reconcile_tick(tick):
            return dg.SkipReason("the daily reconciliation runs sync_all at this time")
        recover_killed_runs(context.instance)  # a run whose process died is not "still running"
        busy = context.instance.get_run_records(
            filters=dg.RunsFilter(job_name=sync_all, statuses=IN_FLIGHT), limit=1
        )
        if busy:
            return dg.SkipReason(f"sync_all run {busy[0].dagster_run.run_id} is still queued or running")
        return dg.RunRequest(tags={"sync_mode": "incremental"})

    return sync_open_records


def daily_reconciliation_schedule(
    sync_all: str, full_refresh_config: Mapping, settings: OperationsSettings
) -> dg.ScheduleDefinition:
    """``sync_all`` with ``full_refresh``: every record re-read, so anything an incremental read
    could miss (an order edited after it finished, a lost page) is corrected within a day."""
    return dg.ScheduleDefinition(
        name="daily_reconciliation",
        job_name=sync_all,
        cron_schedule=settings.reconcile_cron,
        execution_timezone=settings.timezone,
        default_status=settings.schedule_status,
        run_config=dict(full_refresh_config),
        tags={"sync_mode": "full_refresh"},
        description=f"Full-refresh sync_all ({settings.reconcile_cron}, {settings.timezone}; RECONCILE_CRON): "
        "every record re-read and reconciled.",
    )


def latest_complete_day(partitions_def: dg.TimeWindowPartitionsDefinition, when: datetime) -> str | None:
    """The key of the last daily partition that ended at or before ``when`` (None before the first)."""
    day_before = when - timedelta(days=1)
    first = partitions_def.start_time_for_partition_key(partitions_def.get_first_partition_key())
    if day_before < first:
        return None
    return partitions_def.get_partition_key_for_timestamp(day_before.timestamp())


def latest_day_schedule(name: str, job, settings: OperationsSettings) -> dg.ScheduleDefinition:
    """Materialize the latest *complete* day of a daily-partitioned job.

    Computed from the tick time rather than the partitions' last key: a partitions definition with
    ``end_offset=1`` ends with today, which is not finished at 02:00.
    """
    partitions_def = job.partitions_def
    assert isinstance(partitions_def, dg.TimeWindowPartitionsDefinition), f"{job.name} is not time-partitioned"

    @dg.schedule(
        name=name,
        job_name=job.name,
        cron_schedule=settings.daily_partitions_cron,
        execution_timezone=settings.timezone,
        default_status=settings.schedule_status,
        description=f"{job.name} for the latest complete day ({settings.daily_partitions_cron}, "
        f"{settings.timezone}; DAILY_PARTITIONS_CRON).",
    )
    def _latest_day(context: dg.ScheduleEvaluationContext):
        key = latest_complete_day(partitions_def, context.scheduled_execution_time)
        if key is None:
            return dg.SkipReason(f"no complete day yet (partitions start {partitions_def.get_first_partition_key()})")
        return dg.RunRequest(partition_key=key)

    return _latest_day


def build_schedules(
    sync_all: str,
    full_refresh_config: Mapping,
    settings: OperationsSettings,
) -> list[dg.ScheduleDefinition]:
    """The schedules of ``sync_all``; a source's daily-partitioned job gets its
    :func:`latest_day_schedule` from its own folder (``pipelines/defs/<source>/schedules.py``)."""
    return [
        sync_open_records_schedule(sync_all, settings),
        daily_reconciliation_schedule(sync_all, full_refresh_config, settings),
    ]


# -- automation and freshness ------------------------------------------------------------------------


def automation_sensor(settings: OperationsSettings) -> dg.AutomationConditionSensorDefinition:
    """Evaluates the assets' automation conditions (the views': rebuild after an upstream write).

    Dagster's implicit sensor for them is STOPPED by default; this one runs as soon as the daemon
    does, so a backfill started from the UI leaves the views re-created without another click.
    """
    return dg.AutomationConditionSensorDefinition(
        "automation_sensor",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultSensorStatus.RUNNING if settings.automation_running else dg.DefaultSensorStatus.STOPPED,
        minimum_interval_seconds=settings.automation_interval_seconds,
        description="Runs assets whose automation condition is met (views after their tables change).",
    )


def with_freshness(defs: dg.Definitions, settings: OperationsSettings, feed_tag: str) -> dg.Definitions:
    """``defs`` with a time-window freshness policy on every ingestion asset: current-state feeds
    (tag ``<feed_tag>: current``) are expected every sync (minutes), daily partitioned ones
    (``daily``) once a day (hours). Applied when the definitions load, so the variables count."""
    windows = {"current": settings.freshness, "daily": settings.daily_freshness}

    def apply(spec: dg.AssetSpec) -> dg.AssetSpec:
        window = windows.get(spec.tags.get(feed_tag, ""))
        if window is None:
            return spec
        warn, fail = window
        return spec.replace_attributes(freshness_policy=dg.FreshnessPolicy.time_window(fail_window=fail, warn_window=warn))

    with warnings.catch_warnings():  # map_asset_specs is a "preview" API: nothing to tell users
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return defs.map_asset_specs(func=apply)
