"""The schedules and the automation sensor, built from the environment each time the definitions
load (see pipelines/schedules.py for what each does and the variables)."""

import dagster as dg

from pipelines.defs.feed_asset import full_refresh_run_config
from pipelines.defs.metapic.assets import metapic_participant_daily_stats_job
from pipelines.defs.onlytraffic.assets import swap_orders_by_created_day_job
from pipelines.schedules import OperationsSettings, automation_sensor, build_schedules

# Daily-partitioned jobs materialized for their latest complete day.
LATEST_DAY_JOBS = {
    "swap_orders_latest_day": swap_orders_by_created_day_job,
    "metapic_daily_stats_latest_day": metapic_participant_daily_stats_job,
}


@dg.definitions
def defs() -> dg.Definitions:
    settings = OperationsSettings.from_env()
    return dg.Definitions(
        schedules=build_schedules("sync_all", full_refresh_run_config(), LATEST_DAY_JOBS, settings),
        sensors=[automation_sensor(settings)],
    )
