"""What every ingestion asset does around its sync: config, not-configured handling, progress."""


import time
from collections.abc import Callable
from typing import Any

import dagster as dg

from models import metadata as warehouse_schema
from pipelines import progress as terminal_progress
from pipelines.resources import NotConfigured
from pipelines.sync import SyncReport


class SyncConfig(dg.Config):
    """Run config of ingestion assets. ``full_refresh`` re-reads every record (the daily
    reconciliation does this); otherwise only what can still change is requested."""

    full_refresh: bool = False


class ProgressLog:
    """Per-stream record counts in the run log as pages arrive, at most every few seconds."""

    def __init__(self, log: Callable[[str], None], every_seconds: float = 5.0) -> None:
        self.log = log
        self.every = every_seconds
        self.counts: dict[str, int] = {}
        self.pages = 0
        self._last = time.monotonic()

    def __call__(self, stream: str, records: int) -> None:
        terminal_progress.report(stream, records)
        self.counts[stream] = self.counts.get(stream, 0) + records
        self.pages += 1
        now = time.monotonic()
        if now - self._last >= self.every:
            self._last = now
            self.log(self.summary())

    def summary(self) -> str:
        parts = ", ".join(f"{k}: {v}" for k, v in sorted(self.counts.items()))
        return f"fetched {self.pages} pages ({parts})"


def materialize(
    sync: Callable[[ProgressLog], SyncReport],
    *,
    asset_key: dg.AssetKey,
    log: Any,
    warehouse: Any = None,
) -> dg.MaterializeResult:
    """Run ``sync`` and turn its report into the materialization of ``asset_key``.

    ``log`` has ``.info``/``.warning`` (Dagster's, or a lane's queue: see feeds.py); with
    ``warehouse`` the table's row count after the commit is added. A source without credentials
    is reported as not configured (a warning and metadata), not crashed on, so the rest of
    ``sync_all`` still runs.
    """
    name = asset_key.to_user_string()
    progress = ProgressLog(log.info)
    try:
        report = sync(progress)
    except NotConfigured as exc:
        log.warning(f"{exc}. Skipping: nothing was fetched or written.")
        terminal_progress.done(f"{name}: not configured ({', '.join(exc.missing)} unset)")
        return dg.MaterializeResult(
            asset_key=asset_key, metadata={"configured": False, "missing_variables": ", ".join(exc.missing)}
        )
    if progress.pages:
        log.info(progress.summary())
    for warning in report.warnings:
        log.warning(warning)
    summary = f"{report.stream}: {report.mode} sync, {report.requests} requests, {report.retries} retries, {report.seconds:.1f}s"
    if report.result is not None:
        t = report.result.primary
        summary += f"; {t.received} records: {t.inserted} new, {t.updated} changed, {t.unchanged} unchanged"
        if t.quarantined:
            summary += f", {t.quarantined} quarantined"
    log.info(summary)
    terminal_progress.done(summary)
    metadata = {"configured": True, **report.metadata()}
    table = _table_of(asset_key, report)
    if table is not None and warehouse is not None:
        metadata["dagster/row_count"] = _row_count(warehouse, table, log)
    return dg.MaterializeResult(asset_key=asset_key, metadata=metadata)


def materialize_asset(context: dg.AssetExecutionContext, sync: Callable[[ProgressLog], SyncReport]) -> dg.MaterializeResult:
    """:func:`materialize` for a single-asset op (the daily-partitioned ones)."""
    return materialize(sync, asset_key=context.asset_key, log=context.log, warehouse=context.resources.warehouse)


def _table_of(asset_key: dg.AssetKey, report: SyncReport) -> str | None:
    """The warehouse table an asset stands for: the one named like the asset (the style rule), else
    the primary table of what it committed (e.g. swap_orders for the created-day backfills)."""
    name = asset_key.path[-1]
    if name in warehouse_schema.tables:
        return name
    if report.result is not None and report.result.primary.table in warehouse_schema.tables:
        return report.result.primary.table
    return None


def _row_count(warehouse: Any, table: str, log: Any) -> int:
    """Rows in ``table`` after the commit: Dagster shows ``dagster/row_count`` in the catalog and
    plots it across materializations."""
    with warehouse.open(on_wait=log.warning).connect(read_only=True) as con:
        return con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
