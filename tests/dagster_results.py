"""Reading a run's result by asset (an op may materialize several assets, e.g. ``sql_views``)."""

import dagster as dg


def materializations(result, asset: str) -> list[dg.AssetMaterialization]:
    """The materializations of ``asset`` in ``result``, in order."""
    key = dg.AssetKey(asset)
    return [
        e.event_specific_data.materialization for e in result.get_asset_materialization_events() if e.asset_key == key
    ]
