"""OnlyTraffic's schedule: swap orders of the latest complete created day (``DAILY_PARTITIONS_CRON``),
built from the environment each time the definitions load."""

import dagster as dg

from pipelines.defs.onlytraffic.assets import swap_orders_by_created_day_job
from pipelines.schedules import OperationsSettings, latest_day_schedule


@dg.definitions
def defs() -> dg.Definitions:
    settings = OperationsSettings.from_env()
    return dg.Definitions(
        schedules=[latest_day_schedule("swap_orders_latest_day", swap_orders_by_created_day_job, settings)]
    )
