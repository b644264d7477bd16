"""Drive one sync of one stream (fetch, stage, commit) and report what it did."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pipelines.http import ApiClient
from pipelines.incremental import StatusListing, sync_status_lists
from pipelines.loader import LoadResult, StreamLoad, TableResult
from pipelines.staging import TableSpec
from pipelines.warehouse import Warehouse

LogFn = Callable[[str], None]


@dataclass
class SyncReport:
    stream: str
    mode: str
    result: LoadResult | None
    requests: int = 0
    retries: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, object]:
        """Numbers the Dagster UI shows, and plots across runs."""
        meta: dict[str, object] = {
            "mode": self.mode,
            "requests": self.requests,
            "retries": self.retries,
            "duration_s": round(self.seconds, 3),
            "warnings": len(self.warnings),
        }
        # The first (primary) table's counts are unprefixed, whatever the stream is called (range
        # backfills and the lead register commit under their own stream names), and are zero when
        # nothing was committed: every run reports the same keys, so the UI's plots have no gaps.
        tables = self.result.tables if self.result is not None else {self.stream: TableResult(self.stream)}
        for i, (name, t) in enumerate(tables.items()):
            prefix = "" if i == 0 else f"{name}."
            meta[f"{prefix}rows_received"] = t.received
            meta[f"{prefix}inserted"] = t.inserted
            meta[f"{prefix}updated"] = t.updated
            meta[f"{prefix}unchanged"] = t.unchanged
            meta[f"{prefix}quarantined"] = t.quarantined
            meta[f"{prefix}status_changes"] = t.status_changes
        if self.result is not None:
            meta.update(self.result.business)
        if self.warnings:
            meta["warning_messages"] = "\n".join(self.warnings[:50])
        return meta


def sync_status_listing(
    *,
    warehouse: Warehouse,
    client: ApiClient,
    listing: StatusListing,
    spec: TableSpec,
    extra_specs: tuple[TableSpec, ...] = (),
    run_id: str,
    full_refresh: bool = False,
    max_workers: int = 4,
    business_sql: str | None = None,
    log: LogFn = lambda _m: None,
    on_progress: Callable[[str, int], None] | None = None,
) -> SyncReport:
    """Sync one status-filtered order list (CPC, CPL, swap) incrementally, in one transaction."""
    started = time.monotonic()
    started_at = datetime.now(UTC)
    key = spec.key[0]
    key_field = next(f for f in spec.fields if f.name == key)
    with StreamLoad(
        warehouse,
        spec.table,
        [spec, *extra_specs],
        run_id=run_id,
        key_sql=f"json_extract_string(rec, '{key_field.path}')",
        on_progress=on_progress,
    ) as load:
        listing_result = sync_status_lists(
            listing,
            load,
            table=spec.table,
            key_column=key,
            full_refresh=full_refresh,
            max_workers=max_workers,
            log=log,
        )
        for warning in listing_result.warnings:
            log(f"warning: {warning}")
        result = load.commit(
            cursor=listing_result.cursor,
            mode=listing_result.mode,
            started_at=started_at,
            requests=client.stats.requests,
            retries=client.stats.retries,
            warnings=listing_result.warnings,
            full_walk=listing_result.full_walk,
            business_sql=business_sql,
        )
    return SyncReport(
        stream=spec.table,
        mode=listing_result.mode,
        result=result,
        requests=client.stats.requests,
        retries=client.stats.retries,
        seconds=time.monotonic() - started,
        warnings=listing_result.warnings,
    )
