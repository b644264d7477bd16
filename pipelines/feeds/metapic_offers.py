"""The Metapic campaigns feed: the whole list, every status, merged into ``metapic_offers``."""

from __future__ import annotations

from pipelines.feeds.metapic_specs import OFFERS, OFFERS_SUMMARY_SQL
from pipelines.feeds.run import Fetched, SyncReport, run_stream
from pipelines.sources.metapic import Fetcher
from pipelines.warehouse import Warehouse
from pipelines.warehouse.loader import StreamLoad, summary_step


def sync_offers(*, warehouse: Warehouse, fetcher: Fetcher, run_id: str) -> SyncReport:
    """Read the whole campaign list (every status) and merge it: the list is small."""
    client = fetcher.client

    def fetch(load: StreamLoad) -> Fetched:
        load.read_state({"prior_offers": "SELECT offer_id FROM wh.main.metapic_offers"})
        walk = fetcher.offers(load.add)
        warnings = list(walk.warnings)
        missing = load.query(
            "SELECT count(*) FROM prior_offers AS p WHERE NOT EXISTS (SELECT 1 FROM recs "
            "WHERE TRY_CAST(json_extract_string(rec, '$.id') AS BIGINT) = p.offer_id)"
        )[0][0]
        if missing and walk.complete:
            warnings.append(f"metapic_offers: {missing} offer(s) no longer listed under any status; kept as last seen")
        return Fetched(
            cursor={"offers_listed": walk.records},
            mode="full",
            warnings=warnings,
            full_walk=walk.complete,
            steps=[summary_step(OFFERS_SUMMARY_SQL)],
        )

    return run_stream(
        warehouse=warehouse, stream=OFFERS.table, specs=[OFFERS], run_id=run_id, fetch=fetch, client=client,
        on_progress=fetcher.progress,
    )
