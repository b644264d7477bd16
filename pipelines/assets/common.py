"""What every ingestion asset does around its sync: config, not-configured handling, progress."""


import time
from collections.abc import Callable

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
    context: dg.AssetExecutionContext, sync: Callable[[ProgressLog], SyncReport]
) -> dg.MaterializeResult:
    """Run ``sync`` and turn its report into the asset's materialization.

    A source without credentials is reported as not configured (a warning and metadata), not
    crashed on, so the rest of ``sync_all`` still runs.
    """
    progress = ProgressLog(context.log.info)
    try:
        report = sync(progress)
    except NotConfigured as exc:
        context.log.warning(f"{exc}. Skipping: nothing was fetched or written.")
        terminal_progress.done(f"{context.asset_key.to_user_string()}: not configured ({', '.join(exc.missing)} unset)")
        return dg.MaterializeResult(
            metadata={"configured": False, "missing_variables": ", ".join(exc.missing)}
        )
    if progress.pages:
        context.log.info(progress.summary())
    for warning in report.warnings:
        context.log.warning(warning)
    summary = f"{report.stream}: {report.mode} sync, {report.requests} requests, {report.retries} retries, {report.seconds:.1f}s"
    if report.result is not None:
        t = report.result.primary
        summary += f"; {t.received} records: {t.inserted} new, {t.updated} changed, {t.unchanged} unchanged"
        if t.quarantined:
            summary += f", {t.quarantined} quarantined"
    context.log.info(summary)
    terminal_progress.done(summary)
    metadata = {"configured": True, **report.metadata()}
    table = _table_of(context, report)
    if table is not None and hasattr(context.resources, "warehouse"):
        metadata["dagster/row_count"] = _row_count(context, table)
    return dg.MaterializeResult(metadata=metadata)


def _table_of(context: dg.AssetExecutionContext, report: SyncReport) -> str | None:
    """The warehouse table an asset stands for: the one named like the asset (the style rule), else
    the primary table of what it committed (e.g. swap_orders for the created-day backfills)."""
    name = context.asset_key.path[-1]
    if name in warehouse_schema.tables:
        return name
    if report.result is not None and report.result.primary.table in warehouse_schema.tables:
        return report.result.primary.table
    return None


def _row_count(context: dg.AssetExecutionContext, table: str) -> int:
    """Rows in ``table`` after the commit: Dagster shows ``dagster/row_count`` in the catalog and
    plots it across materializations."""
    warehouse = context.resources.warehouse.open(on_wait=context.log.warning)
    with warehouse.connect(read_only=True) as con:
        return con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
