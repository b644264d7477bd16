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

from pipelines.assets.common import materialize_asset
from pipelines.assets.feeds import METAPIC_LANE, Feed, FeedRun
from pipelines.checks import standard_checks
from pipelines.resources import WRITER_POOL, MetapicResource, WarehouseResource
from pipelines.sources import metapic as source
from pipelines.sync import SyncReport

DAILY_PARTITIONS = dg.DailyPartitionsDefinition(
    start_date=os.environ.get("METAPIC_PARTITIONS_START") or "2025-01-01"
)


@contextmanager
def metapic_fetcher(metapic: MetapicResource, log) -> Iterator[source.Fetcher]:
    """A client whose rate limiter is shared by every Metapic asset of this process."""
    with metapic.client(on_retry=log.warning) as client:
        yield source.Fetcher(
            client=client,
            user_id=metapic.user_id or "",
            page_size=metapic.page_size or source.MAX_PAGE_SIZE,
            max_workers=metapic.max_concurrency,
            log=log.info,
        )


def sync_offers(run: FeedRun, progress) -> SyncReport:
    # the list is read whole every run: full_refresh changes nothing
    with metapic_fetcher(run.metapic, run.log) as fetcher:
        fetcher.on_progress = progress
        return source.sync_offers(warehouse=run.open_warehouse(), fetcher=fetcher, run_id=run.run_id)


def sync_participants(run: FeedRun, progress) -> SyncReport:
    with metapic_fetcher(run.metapic, run.log) as fetcher:
        fetcher.on_progress = progress
        return source.sync_participants(
            warehouse=run.open_warehouse(),
            fetcher=fetcher,
            run_id=run.run_id,
            full_refresh=run.full_refresh,
        )


@dg.asset(
    group_name="metapic",
    pool=WRITER_POOL,
    kinds={"duckdb", "python"},
    deps=["metapic_offers"],
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
        with metapic_fetcher(metapic, context.log) as fetcher:
            fetcher.on_progress = progress
            wh = warehouse.open(on_wait=context.log.warning)
            for day in days:
                report = source.sync_daily_stats(warehouse=wh, fetcher=fetcher, run_id=context.run_id, day=day)
                received = report.result.primary.received if report.result else 0
                context.log.info(f"{day}: {report.requests} requests, {received} rows")
                reports.append(report)
        return source.combine_reports(source.DAILY_STATS.table, reports)

    return materialize_asset(context, sync)


metapic_participant_daily_stats_job = dg.define_asset_job(
    "metapic_participant_daily_stats_job",
    selection=[metapic_participant_daily_stats],
    partitions_def=DAILY_PARTITIONS,
    description="Daily participant statistics of Metapic campaigns, one UTC day per partition.",
)

FEEDS: list[Feed] = [
    Feed("metapic_offers", "metapic", "Metapic campaigns, every status, one row per offer_id (+ status_history).",
         sync_offers, lane=METAPIC_LANE),
    Feed("metapic_participants", "metapic", "Participants of every Metapic campaign, one row per (offer_id, "
         "participant_key) (+ status_history). Re-read while the campaign can change, and once after it ends.",
         sync_participants, lane=METAPIC_LANE, deps=("metapic_offers",)),
]  # current-state feeds, materialized by sync_all in their own lane (pipelines/assets/feeds.py)
ASSETS: list = [metapic_participant_daily_stats]  # this source's own (partitioned) assets
CHECKS: list = [
    *standard_checks("metapic_offers", "metapic_offers", ["offer_id"]),
    *standard_checks("metapic_participants", "metapic_participants", ["offer_id", "participant_key"]),
    # the participant's status is kept per day (no history): its values are checked all the same
    *standard_checks(metapic_participant_daily_stats, "metapic_participant_daily_stats", ["offer_id", "participant_key", "date"]),
]
JOBS: list = [metapic_participant_daily_stats_job]
# Each night, yesterday's statistics (stopped by default: start it in the UI or with the daemon).
SCHEDULES: list = [dg.build_schedule_from_partitioned_job(metapic_participant_daily_stats_job, hour_of_day=3)]
