"""Metapic assets (offers, participants, participant daily stats).

``metapic_offers`` and ``metapic_participants`` are current-state tables rebuilt by ``sync_all``;
``metapic_participant_daily_stats`` is partitioned by UTC day (from ``METAPIC_PARTITIONS_START``,
default 2025-01-01) and backfills a range of days in one run, one day after another.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date

import dagster as dg

from pipelines import settings
from pipelines.checks import check_specs, evaluate_checks, history_intervals_check, standard_checks
from pipelines.defs.feed_asset import FEED_TAG, WAIT, FeedRun, feed_asset, materialize_asset
from pipelines.defs.table_metadata import table_metadata
from pipelines.defs.metapic.resources import MetapicResource
from pipelines.resources import WRITER_POOL, WarehouseResource
# module aliases: the asset objects below are named like the feed modules
from pipelines.feeds import metapic_offers as offers_feed
from pipelines.feeds import metapic_participants as participants_feed
from pipelines.feeds import metapic_stats as stats_feed
from pipelines.feeds.metapic_specs import DAILY_STATS, PARTICIPANT_ENTITIES_SQL
from pipelines.sources import metapic as source
from pipelines.feeds.status_lists import SyncReport

DAILY_PARTITIONS = dg.DailyPartitionsDefinition(start_date=settings.value("METAPIC_PARTITIONS_START"))


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
        return offers_feed.sync_offers(warehouse=run.open_warehouse(), fetcher=fetcher, run_id=run.run_id)


def sync_participants(run: FeedRun, progress) -> SyncReport:
    with metapic_fetcher(run.metapic, run.log) as fetcher:
        fetcher.on_progress = progress
        return participants_feed.sync_participants(
            warehouse=run.open_warehouse(),
            fetcher=fetcher,
            run_id=run.run_id,
            full_refresh=run.full_refresh,
        )


# the participant's status is kept per day (no history): its values are checked all the same
DAILY_CHECKS = standard_checks(
    "metapic_participant_daily_stats", "metapic_participant_daily_stats", ["offer_id", "participant_key", "date"]
)


@dg.asset(
    group_name="metapic",
    check_specs=check_specs(DAILY_CHECKS),
    pool=WRITER_POOL,
    kinds={"duckdb", "python"},
    tags={FEED_TAG: "daily"},
    deps=["metapic_offers"],
    partitions_def=DAILY_PARTITIONS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    description="Per participant, campaign and UTC day: clicks, links created, estimated GP "
    "(participants-stats with start_date = end_date = the day). A range of days runs in one run.",
    metadata=table_metadata("metapic_participant_daily_stats"),
)
def metapic_participant_daily_stats(
    context: dg.AssetExecutionContext,
    warehouse: WarehouseResource,
    metapic: MetapicResource,
) -> Iterator:
    days = [date.fromisoformat(key) for key in context.partition_keys]

    def sync(progress):
        reports = []
        with metapic_fetcher(metapic, context.log) as fetcher:
            fetcher.on_progress = progress
            wh = warehouse.open(on_wait=context.log.warning)
            for day in days:
                report = stats_feed.sync_daily_stats(warehouse=wh, fetcher=fetcher, run_id=context.run_id, day=day)
                received = report.result.primary.received if report.result else 0
                context.log.info(f"{day}: {report.requests} requests, {received} rows")
                reports.append(report)
        return stats_feed.combine_reports(DAILY_STATS.table, reports)

    yield materialize_asset(context, sync)
    yield from evaluate_checks(warehouse, DAILY_CHECKS, log=context.log)


metapic_participant_daily_stats_job = dg.define_asset_job(
    "metapic_participant_daily_stats_job",
    selection=[metapic_participant_daily_stats],
    partitions_def=DAILY_PARTITIONS,
    description="Daily participant statistics of Metapic campaigns, one UTC day per partition.",
)

# Metapic mostly waits on its rate limit (300 requests a minute, one list per live campaign):
# "wait" steps run beside the CPU-bound feeds, and first among ready steps (priority).
metapic_offers = feed_asset(
    "metapic_offers", group="metapic", sync=sync_offers, resources=["metapic"], load=WAIT, priority=1,
    description="Metapic campaigns, every status, one row per offer_id (+ status_history).",
    checks=[
        *standard_checks("metapic_offers", "metapic_offers", ["offer_id"]),
        history_intervals_check("metapic_offers", "metapic_offer"),
    ],
)
metapic_participants = feed_asset(
    "metapic_participants", group="metapic", sync=sync_participants, resources=["metapic"], load=WAIT,
    priority=1, deps=["metapic_offers"],
    description="Participants of every Metapic campaign, one row per (offer_id, participant_key) "
    "(+ status_history). Re-read while the campaign can change, and once after it ends.",
    checks=[
        *standard_checks("metapic_participants", "metapic_participants", ["offer_id", "participant_key"]),
        # entities leave this table (snapshot rule): their history ends without a current row
        history_intervals_check("metapic_participants", "metapic_participant", PARTICIPANT_ENTITIES_SQL),
    ],
)


