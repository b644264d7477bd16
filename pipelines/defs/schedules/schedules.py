"""The schedules of ``sync_all`` and the automation sensor, built from the environment each time the
definitions load (see pipelines/schedules.py for what each does and the variables). A source's
latest-day schedule lives in its own folder (``pipelines/defs/<source>/schedules.py``)."""

import dagster as dg

from pipelines.defs.feed_asset import full_refresh_run_config
from pipelines.schedules import OperationsSettings, automation_sensor, build_schedules


@dg.definitions
def defs() -> dg.Definitions:
    settings = OperationsSettings.from_env()
    return dg.Definitions(
        schedules=build_schedules("sync_all", full_refresh_run_config(), settings),
        sensors=[automation_sensor(settings)],
    )
