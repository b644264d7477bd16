"""Metapic's schedule: participant daily stats of the latest complete day (``DAILY_PARTITIONS_CRON``),
built from the environment each time the definitions load."""

import dagster as dg

from pipelines.defs.metapic.assets import metapic_participant_daily_stats_job
from pipelines.schedules import OperationsSettings, latest_day_schedule


@dg.definitions
def defs() -> dg.Definitions:
    settings = OperationsSettings.from_env()
    return dg.Definitions(
        schedules=[latest_day_schedule("metapic_daily_stats_latest_day", metapic_participant_daily_stats_job, settings)]
    )
