"""``sync_all``: every current-state feed, the marts and the views, in one run.

Selected by tag and group rather than by a list, so a feed added in its source folder is in it.
The executor (one step per feed, bounded concurrency) is the code location's default: see
``pipelines/definitions.py``.
"""

import dagster as dg

from pipelines.defs.feed_asset import FEED_TAG

sync_all = dg.define_asset_job(
    "sync_all",
    selection=dg.AssetSelection.tag(FEED_TAG, "current") | dg.AssetSelection.groups("marts", "views"),
    description="Materialize every current-state ingestion asset, then the views.",
)
