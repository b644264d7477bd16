"""Reading a run's result by asset: the feeds share one op (sync_feeds), so "the materializations
of node X" no longer names one table."""

import dagster as dg


def materializations(result, asset: str) -> list[dg.AssetMaterialization]:
    """The materializations of ``asset`` in ``result``, in order."""
    key = dg.AssetKey(asset)
    return [
        e.event_specific_data.materialization for e in result.get_asset_materialization_events() if e.asset_key == key
    ]
