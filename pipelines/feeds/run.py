"""The one stream driver: stage a feed's pages, commit them in one transaction, report.

Every feed's sync is the same four beats: start the clock, open a :class:`StreamLoad`, let the
feed fetch (its own plan: status lists, id batches, one list per campaign, CSV files), commit what
it staged together with its named :class:`CommitStep`\\ s, and report. :func:`run_stream` does the
beats; a feed supplies only ``fetch(load) -> Fetched``. So timing, the request and retry counts,
warning logging and the ``SyncReport`` are written once, and a new feed cannot forget one of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipelines.sources.http import ApiClient
from pipelines.warehouse.failures import record_failure
from pipelines.warehouse.loader import CommitStep, LoadResult, StreamLoad, TableResult
from pipelines.warehouse.staging import TableSpec
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


@dataclass
class Fetched:
    """What a feed's fetch phase hands the driver to commit.

    ``requests``/``retries`` default to the client's totals; a feed sharing one client across
    several streams (a range of days) passes its own share.
    """

    cursor: dict[str, Any] | None
    mode: str
    warnings: list[str] = field(default_factory=list)
    full_walk: bool = False
    steps: Sequence[CommitStep] = ()
    requests: int | None = None
    retries: int | None = None


def run_stream(
    *,
    warehouse: Warehouse,
    stream: str,
    specs: Sequence[TableSpec],
    run_id: str,
    fetch: Callable[[StreamLoad], Fetched | None],
    client: ApiClient | None = None,
    log: LogFn = lambda _m: None,
    report_stream: str | None = None,
    report: SyncReport | None = None,
    **load_options: Any,
) -> SyncReport:
    """Sync one stream: ``fetch`` stages pages into the load, then everything commits at once.

    ``fetch`` returning None means there is nothing to commit (the warehouse is left untouched).
    ``report`` (e.g. a subclass carrying the feed's own numbers) is filled in and returned;
    otherwise a :class:`SyncReport` named ``report_stream`` (default: ``stream``) is.
    """
    started, started_at = time.monotonic(), datetime.now(UTC)
    report = report if report is not None else SyncReport(stream=report_stream or stream, mode="", result=None)
    try:
        with StreamLoad(warehouse, stream, list(specs), run_id=run_id, **load_options) as load:
            fetched = fetch(load)
            if fetched is not None:
                for warning in fetched.warnings:
                    log(f"warning: {warning}")
                stats = client.stats if client is not None else None
                requests = fetched.requests if fetched.requests is not None else (stats.requests if stats else 0)
                retries = fetched.retries if fetched.retries is not None else (stats.retries if stats else 0)
                report.result = load.commit(
                    cursor=fetched.cursor,
                    mode=fetched.mode,
                    started_at=started_at,
                    requests=requests,
                    retries=retries,
                    warnings=fetched.warnings,
                    full_walk=fetched.full_walk,
                    steps=fetched.steps,
                )
                report.mode, report.requests, report.retries = fetched.mode, requests, retries
                report.warnings = fetched.warnings
    except Exception as exc:
        # rolled back: the failure is written on its own, for `affwh status` (an interrupted run,
        # a BaseException, is not a failure of the stream)
        record_failure(warehouse, stream=stream, run_id=run_id, started_at=started_at, exc=exc)
        raise
    report.seconds = time.monotonic() - started
    return report
