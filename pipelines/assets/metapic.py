"""Metapic assets (offers, participants, participant daily stats).

``metapic_offers`` and ``metapic_participants`` are current-state tables rebuilt by ``sync_all``;
``metapic_participant_daily_stats`` is partitioned by UTC day (from ``METAPIC_PARTITIONS_START``,
default 2025-01-01) and backfills a range of days in one run, one day after another.
"""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

import dagster as dg

from pipelines.assets.common import SyncConfig, materialize
from pipelines.checks import standard_checks
from pipelines.http import ApiClient
from pipelines.resources import WRITER_POOL, MetapicResource, WarehouseResource
from pipelines.sources import metapic as source

DAILY_PARTITIONS = dg.DailyPartitionsDefinition(
    start_date=os.environ.get("METAPIC_PARTITIONS_START") or "2025-01-01"
)


@contextmanager
def metapic_fetcher(context: dg.AssetExecutionContext, metapic: MetapicResource) -> Iterator[source.Fetcher]:
    """A client whose rate limiter is shared by every Metapic asset of this process."""
    with metapic.client(on_retry=context.log.warning) as client:
        yield _fetcher(context, metapic, client)


def _fetcher(context: dg.AssetExecutionContext, metapic: MetapicResource, client: ApiClient) -> source.Fetcher:
    return source.Fetcher(
        client=client,
        user_id=metapic.user_id or "",
        page_size=metapic.page_size or source.MAX_PAGE_SIZE,
        max_workers=metapic.max_concurrency,
        log=context.log.info,
    )


@dg.asset(
    group_name="metapic",
    pool=WRITER_POOL,
    kinds={"duckdb", "python"},
    description="Metapic campaigns, every status, one row per offer_id (+ status_history).",
)
def metapic_offers(
    context: dg.AssetExecutionContext,
    config: SyncConfig,  # the list is read whole every run: full_refresh changes nothing
    warehouse: WarehouseResource,
    metapic: MetapicResource,
) -> dg.MaterializeResult:
    def sync(progress):
        with metapic_fetcher(context, metapic) as fetcher:
            fetcher.on_progress = progress
            return source.sync_offers(
                warehouse=warehouse.open(on_wait=context.log.warning), fetcher=fetcher, run_id=context.run_id
            )

    return materialize(context, sync)


@dg.asset(
    group_name="metapic",
    pool=WRITER_POOL,
    kinds={"duckdb", "python"},
    deps=[metapic_offers],
    description="Participants of every Metapic campaign, one row per (offer_id, participant_key) "
    "(+ status_history). Re-read while the campaign can change, and once after it ends.",
)
def metapic_participants(
    context: dg.AssetExecutionContext,
    config: SyncConfig,
    warehouse: WarehouseResource,
    metapic: MetapicResource,
) -> dg.MaterializeResult:
    def sync(progress):
        with metapic_fetcher(context, metapic) as fetcher:
            fetcher.on_progress = progress
            return source.sync_participants(
                warehouse=warehouse.open(on_wait=context.log.warning),
                fetcher=fetcher,
                run_id=context.run_id,
                full_refresh=config.full_refresh,
            )

    return materialize(context, sync)


@dg.asset(
    group_name="metapic",
    pool=WRITER_POOL,
    kinds={"duckdb", "python"},
    deps=[metapic_offers],
    partitions_def=DAILY_PARTITIONS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    description="Per participant, campaign and UTC day: clicks, links created, estimated GP "
    "(participants-stats with start_date = end_date = the day). A range of days runs in one run.",
)
def metapic_participant_daily_stats(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    metapic: MetapicResource,
) -> dg.MaterializeResult:
    days = [date.fromisoformat(key) for key in context.partition_keys]

    def sync(progress):
        reports = []
        with metapic_fetcher(context, metapic) as fetcher:
            fetcher.on_progress = progress
            wh = warehouse.open(on_wait=context.log.warning)
            for day in days:
                report = source.sync_daily_stats(warehouse=wh, fetcher=fetcher, run_id=context.run_id, day=day)
                received = report.result.primary.received if report.result else 0
                context.log.info(f"{day}: {report.requests} requests, {received} rows")
                reports.append(report)
        return source.combine_reports(source.DAILY_STATS.table, reports)

    return materialize(context, sync)


metapic_participant_daily_stats_job = dg.define_asset_job(
    "metapic_participant_daily_stats_job",
    selection=[metapic_participant_daily_stats],
    partitions_def=DAILY_PARTITIONS,
    description="Daily participant statistics of Metapic campaigns, one UTC day per partition.",
)

ASSETS: list = [metapic_offers, metapic_participants, metapic_participant_daily_stats]  # every asset of this source
SYNC_ASSETS: list = [metapic_offers, metapic_participants]  # current-state ingestion assets materialized by sync_all (take SyncConfig)
CHECKS: list = [
    *standard_checks(metapic_offers, "metapic_offers", ["offer_id"]),
    *standard_checks(metapic_participants, "metapic_participants", ["offer_id", "participant_key"]),
    # the participant's status is kept per day (no history): its values are checked all the same
    *standard_checks(metapic_participant_daily_stats, "metapic_participant_daily_stats", ["offer_id", "participant_key", "date"]),
]
JOBS: list = [metapic_participant_daily_stats_job]
# Each night, yesterday's statistics (stopped by default: start it in the UI or with the daemon).
SCHEDULES: list = [dg.build_schedule_from_partitioned_job(metapic_participant_daily_stats_job, hour_of_day=3)]
