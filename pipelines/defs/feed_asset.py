"""What every ingestion asset does around its sync: one step per table, its checks, its retries.

Each current-state table is its own ``@dg.asset`` (:func:`feed_asset`), so each feed is its own
step: Dagster's executor runs the feeds that do not depend on each other side by side (bounded in
``pipelines/definitions.py``), a failing feed fails only its step, and a ``RetryPolicy`` retries a
feed whose transient errors outlived the HTTP layer's own retries.

A feed's asset checks are evaluated in the feed's own step, right after its commit: a check step
shared by every table would be skipped as a whole when one feed fails, and a step per table would
cost a process each. The step's load tag (``cpu`` or ``wait``) lets the executor keep CPU-bound
feeds one at a time while the rate-limited Metapic feeds, which mostly wait, run beside them.

This module lives in the defs folder but defines no Dagster object of its own (the loader finds
none here); the source folders call it.
"""

import importlib
import os
import pkgutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import dagster as dg

from models import metadata as warehouse_schema
from pipelines import progress as terminal_progress
from pipelines import settings
from pipelines.checks import WarehouseCheck, check_specs, evaluate_checks
from pipelines.defs.table_metadata import table_metadata
from pipelines.resources import NotConfigured, WarehouseResource
from pipelines.feeds.status_lists import SyncReport

NOTHING_CONFIGURED = "nothing-configured"
LOAD_TAG = "affwh/load"  # executor tag: "cpu" (DuckDB-bound) or "wait" (rate-limited, mostly idle)
FEED_TAG = "affwh/feed"  # asset tag: "current" (in sync_all) or "daily" (partitioned backfills)
CPU, WAIT = "cpu", "wait"


class SyncConfig(dg.Config):
    """Run config of ingestion assets. ``full_refresh`` re-reads every record (the daily
    reconciliation does this); otherwise only what can still change is requested."""

    full_refresh: bool = False


class FeedFailed(dg.Failure):
    """A feed gave up. The message names the feed and the cause (for a rejected credential, the
    variable to fix); raised without Dagster retries when another attempt cannot help."""


class NothingConfigured(FeedFailed):
    """No source at all has its credentials: the run would "succeed" having fetched nothing."""

    def __init__(self) -> None:
        super().__init__(description=nothing_configured_message(), allow_retries=False)


def nothing_configured_message() -> str:
    """One line: which variables to set, and that ``make run`` needs none (it syncs the sandbox)."""
    sources = " or ".join(" + ".join(s.variables) for s in settings.ALL_SOURCES)
    return (
        f"No source is configured, so nothing was synced: set {sources} (in the environment or .env); "
        "`make run` without credentials syncs the built-in sandbox instead."
    )


def configured_sources() -> list[str]:
    """The sources whose credential variables are all set (what the resources were built from)."""
    return [s.source for s in settings.ALL_SOURCES if not s.missing()]


def first_in_run(context: dg.AssetExecutionContext, what: str) -> bool:
    """True for the first step of this run to ask about ``what``, across the executor's processes
    (a file created exclusively in the run's storage folder): a run-wide failure is reported by
    one step, not by every step that meets it."""
    folder = Path(context.instance.storage_directory()) / context.run_id
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(folder / f"affwh-{what}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def feed_retry_policy() -> dg.RetryPolicy:
    """``FEED_STEP_RETRIES`` (default 2) more attempts of a feed's step, the first after
    ``FEED_STEP_RETRY_DELAY_SECONDS`` (default 30, doubling, with jitter): for an outage longer
    than the HTTP layer's own retries. Read when the definitions are imported."""
    return dg.RetryPolicy(
        max_retries=settings.value("FEED_STEP_RETRIES"),
        delay=settings.value("FEED_STEP_RETRY_DELAY_SECONDS"),
        backoff=dg.Backoff.EXPONENTIAL,
        jitter=dg.Jitter.PLUS_MINUS,
    )


def is_transient(exc: BaseException) -> bool:
    """Worth another attempt of the whole step: a request that kept failing in a way that
    passes (5xx, 429, timeouts, dropped connections), or the warehouse file held too long.
    A rejected credential, a bad setting or a bug fails at once."""
    if getattr(exc, "retryable", False):
        return True
    reason = getattr(exc, "reason", "")  # the HTTP layer's ApiError after its own retries
    if isinstance(reason, str) and reason.startswith("gave up after"):
        return True
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    text = str(exc).lower()
    return type(exc).__module__.startswith("duckdb") and "lock" in text


@dataclass(frozen=True)
class FeedRun:
    """What a feed's sync is given: the run, its config, its resources and the step's logger."""

    run_id: str
    full_refresh: bool
    log: Any  # .info(msg) / .warning(msg)
    resources: Any  # the step's resources: .warehouse, .onlytraffic_marketer, ...

    def __getattr__(self, name: str) -> Any:
        return getattr(self.resources, name)

    def open_warehouse(self):
        # another feed's step committing is expected contention, not a warning
        return self.resources.warehouse.open(on_wait=self.log.info)


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
    first: Callable[[], bool] = lambda: True,
) -> dg.MaterializeResult:
    """Run ``sync`` and turn its report into the materialization of ``asset_key``.

    With ``warehouse`` the table's row count after the commit is added. A source without
    credentials is reported as not configured (a warning and metadata), not crashed on, so the
    rest of ``sync_all`` still runs with the sources that are configured. When no source is,
    the run fails instead (:class:`NothingConfigured`), from the step for which ``first()`` is
    true; the others report themselves not configured as before.
    """
    name = asset_key.to_user_string()
    progress = ProgressLog(log.info)
    try:
        report = sync(progress)
    except NotConfigured as exc:
        if not configured_sources() and first():
            terminal_progress.done(f"{name}: FAILED: {nothing_configured_message()}")
            raise NothingConfigured() from None
        log.warning(f"{exc}. Skipping: nothing was fetched or written.")
        terminal_progress.done(f"{name}: not configured ({', '.join(exc.missing)} unset)")
        return dg.MaterializeResult(
            asset_key=asset_key, metadata={"configured": False, "missing_variables": ", ".join(exc.missing)}
        )
    if progress.pages:
        log.info(progress.summary())
    for warning in report.warnings:
        log.warning(warning)
        terminal_progress.done(f"{name}: warning: {warning}")
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
    return materialize(
        sync, asset_key=context.asset_key, log=context.log, warehouse=context.resources.warehouse,
        first=lambda: first_in_run(context, NOTHING_CONFIGURED),
    )


def _table_of(asset_key: dg.AssetKey, report: SyncReport) -> str | None:
    """The warehouse table an asset stands for: the one named like the asset, else the primary
    table of what it committed (e.g. swap_orders for the created-day backfills)."""
    name = asset_key.path[-1]
    if name in warehouse_schema.tables:
        return name
    if report.result is not None and report.result.primary.table in warehouse_schema.tables:
        return report.result.primary.table
    return None


def _row_count(warehouse: Any, table: str, log: Any) -> int:
    """Rows in ``table`` after the commit: Dagster shows ``dagster/row_count`` in the catalog and
    plots it across materializations."""
    with warehouse.open(on_wait=log.info).connect(read_only=True) as con:
        return con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]


def _failure(key: str, exc: BaseException) -> FeedFailed:
    """One line naming the feed and the cause (secrets are already redacted by the HTTP layer)."""
    first = (str(exc).strip().splitlines() or [""])[0]
    return FeedFailed(
        description=f"{key}: {type(exc).__name__}: {first}",
        metadata={"feed": key, "error": type(exc).__name__},
        allow_retries=is_transient(exc),
    )


def feed_asset(
    key: str,
    *,
    group: str,
    description: str,
    sync: Callable[[FeedRun, Callable[[str, int], None]], SyncReport],
    resources: Sequence[str],
    load: str = CPU,
    deps: Sequence[str] = (),
    checks: Sequence[WarehouseCheck] = (),
    priority: int = 0,
) -> dg.AssetsDefinition:
    """A current-state table fed from an API (or the lead files): one asset, one step.

    ``sync(run, progress) -> SyncReport`` does the work in one transaction. ``checks`` (on this
    asset) are evaluated in the same step once it committed. ``load`` tags the step for the
    executor's limits; ``priority`` starts it first among ready steps (the slow Metapic lane).
    """
    checks = list(checks)
    for c in checks:
        if c.asset != dg.AssetKey(key):
            raise ValueError(f"check {c.name} is on {c.asset.to_user_string()}, not on feed {key}")

    @dg.asset(
        name=key,
        group_name=group,
        description=description,
        kinds={"duckdb", "python"},
        deps=list(deps),
        tags={FEED_TAG: "current"},
        op_tags={LOAD_TAG: load, "dagster/priority": str(priority)},
        retry_policy=feed_retry_policy(),
        check_specs=check_specs(checks),
        required_resource_keys={"warehouse", *resources},
        metadata=table_metadata(key) or None,  # its columns, name and DDL (a table of models/)
    )
    def _feed(context: dg.AssetExecutionContext, config: SyncConfig):
        run = FeedRun(context.run_id, config.full_refresh, context.log, context.resources)
        try:
            result = materialize(
                lambda progress: sync(run, progress),
                asset_key=context.asset_key,
                log=context.log,
                warehouse=context.resources.warehouse,
                first=lambda: first_in_run(context, NOTHING_CONFIGURED),
            )
        except (KeyboardInterrupt, dg.DagsterExecutionInterruptedError) as exc:  # Ctrl-C, Terminate: no retry
            raise FeedFailed(description=f"{key}: stopped: the run was interrupted", allow_retries=False) from exc
        except NothingConfigured:
            raise
        except Exception as exc:
            terminal_progress.done(f"{key}: FAILED: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
            raise _failure(key, exc) from exc
        yield result
        yield from evaluate_checks(context.resources.warehouse, checks, log=context.log)

    return _feed


def defs_modules(exclude: str = "") -> Iterator[ModuleType]:
    """Every module of the defs folder (but those under ``exclude``), imported: how the views,
    the schedules and ``sync_all`` find the feeds without a list of them to keep in step."""
    import pipelines.defs

    for info in pkgutil.walk_packages(pipelines.defs.__path__, prefix="pipelines.defs."):
        if not (exclude and info.name.startswith(exclude)):
            yield importlib.import_module(info.name)


def defined_assets(exclude: str = "") -> list[dg.AssetsDefinition]:
    """The assets defined at the top level of the defs modules (each once)."""
    found: dict[int, dg.AssetsDefinition] = {}
    for module in defs_modules(exclude):
        for value in vars(module).values():
            if isinstance(value, dg.AssetsDefinition):
                found.setdefault(id(value), value)
    return list(found.values())


def current_feed_keys() -> list[str]:
    """The current-state feeds (tagged ``affwh/feed: current``), by asset key = op name."""
    return sorted(
        spec.key.to_user_string()
        for a in defined_assets()
        for spec in a.specs
        if spec.tags.get(FEED_TAG) == "current"
    )


def full_refresh_run_config(assets: Sequence[str] | None = None) -> dict:
    """Run config asking every selected feed (default: every current-state feed) to re-read
    everything: ``ops: {<feed>: {config: {full_refresh: true}}}``."""
    keys = current_feed_keys()
    if assets is not None:
        keys = [k for k in keys if k in set(assets)]
    return {"ops": {key: {"config": {"full_refresh": True}} for key in keys}}
