"""Sync one status-filtered order list (CPC, CPL, swap) through the one stream driver.

``SyncReport`` lives in :mod:`pipelines.feeds.run` (with :func:`~pipelines.feeds.run.run_stream`)
and is re-exported here for the callers that import it from this module.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pipelines.feeds.run import Fetched, SyncReport, run_stream
from pipelines.sources.http import ApiClient
from pipelines.feeds.incremental import sync_status_lists
from pipelines.sources.status_list import StatusListing
from pipelines.warehouse.loader import CommitStep, StreamLoad, summary_step
from pipelines.warehouse.staging import TableSpec
from pipelines.warehouse import Warehouse

LogFn = Callable[[str], None]

__all__ = ["SyncReport", "sync_status_listing"]


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
    steps: Sequence[CommitStep] = (),
    business_sql: str | None = None,
    log: LogFn = lambda _m: None,
    on_progress: Callable[[str, int], None] | None = None,
) -> SyncReport:
    """Sync one status-filtered order list incrementally, in one transaction.

    ``steps``: the feed's own commit steps (e.g. its ``summary_step``). ``business_sql`` (one row
    of metrics over ``{wh}.<table>``) is the older spelling of a summary step, still accepted.
    """
    key = spec.key[0]
    path_of = {f.name: f.path for f in spec.fields}

    def fetch(load: StreamLoad) -> Fetched:
        listed = sync_status_lists(
            listing,
            load,
            table=spec.table,
            key_column=key,
            full_refresh=full_refresh,
            max_workers=max_workers,
            log=log,
        )
        return Fetched(
            cursor=listed.cursor,
            mode=listed.mode,
            warnings=listed.warnings,
            full_walk=listed.full_walk,
            steps=[*steps, *([summary_step(business_sql)] if business_sql else [])],
        )

    return run_stream(
        warehouse=warehouse,
        stream=spec.table,
        specs=[spec, *extra_specs],
        run_id=run_id,
        fetch=fetch,
        client=client,
        log=log,
        # the walk's whole-run queries read the key and creation time, never the records' JSON
        key_path=path_of[key],
        created_path=path_of[spec.created_field] if spec.created_field else None,
        keep_records=False,
        on_progress=on_progress,
    )
