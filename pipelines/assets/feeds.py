"""Every current-state feed as ONE subsettable multi-asset whose feeds run in two lanes.

Why not one asset per feed: Dagster's in-process executor runs steps one after another, and
Metapic's participants are a list per campaign under a documented budget of 300 requests per
window, so that feed spends minutes waiting with the CPU idle (6 of a large sync's 10 minutes).
Here the Metapic feeds run in their own lane (a thread) beside a lane with every other feed, one
after another: the sync takes about as long as the slower lane instead of the sum of both.

Only two lanes, on purpose: the other feeds are CPU-bound on DuckDB (two cores here) and each
holds a staging database of up to ``WAREHOUSE_MEMORY_LIMIT``; running them side by side would add
memory, not speed. Metapic's staging is small (tens of thousands of participants).

Every table is still its own asset key (lineage, checks, freshness, selecting one in the UI);
materializing a subset runs only those feeds. Writers of the one DuckDB file take turns: see
:meth:`pipelines.warehouse.Warehouse.attach`. Dagster's logger is used from the op's own thread
only: the lanes hand it their messages and results through a queue.
"""


import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import dagster as dg

from pipelines.assets.common import SyncConfig, materialize
from pipelines.resources import (
    WRITER_POOL,
    CpamoeResource,
    MetapicResource,
    OnlyTrafficMarketerResource,
    OnlyTrafficStudioResource,
    WarehouseResource,
)
from pipelines.sync import SyncReport

METAPIC_LANE = "metapic"  # rate-limited: waits more than it works
MAIN_LANE = "main"  # CPU- and memory-bound: one feed at a time


@dataclass(frozen=True)
class FeedRun:
    """What a feed's sync is given: the run, its config and resources, and a logger that is safe
    to call from a lane's thread."""

    run_id: str
    full_refresh: bool
    log: Any  # .info(msg) / .warning(msg)
    warehouse: WarehouseResource
    onlytraffic_marketer: OnlyTrafficMarketerResource
    onlytraffic_studio: OnlyTrafficStudioResource
    cpamoe: CpamoeResource
    metapic: MetapicResource

    def open_warehouse(self):
        return self.warehouse.open(on_wait=self.log.warning)


@dataclass(frozen=True)
class Feed:
    """One current-state table fed from an API (or the lead files), and how to sync it."""

    key: str
    group: str
    description: str
    sync: Callable[[FeedRun, Callable[[str, int], None]], SyncReport]  # (run, progress) -> report
    lane: str = MAIN_LANE
    deps: tuple[str, ...] = ()  # feeds it reads (in the same lane: they run first)

    def spec(self) -> dg.AssetSpec:
        return dg.AssetSpec(self.key, group_name=self.group, description=self.description,
                            kinds={"duckdb", "python"}, deps=list(self.deps))


class FeedFailed(Exception):
    """A feed of the op failed (the first one's error is the cause); the message names it."""


class FeedStopped(Exception):
    """Raised inside a feed at its next page once the op is ending early (Ctrl-C, a terminated
    run): the feed commits nothing, as after any error."""


def _stop_aware(progress: Callable[[str, int], None], stop: threading.Event) -> Callable[[str, int], None]:
    """The feed's per-page progress callback, which also stops the feed once ``stop`` is set."""

    def report(stream: str, records: int) -> None:
        if stop.is_set():
            raise FeedStopped("the run is stopping: this feed commits nothing")
        progress(stream, records)

    return report


class QueueLog:
    """``.info``/``.warning`` that queue the message for the op's thread to log."""

    def __init__(self, events: queue.Queue) -> None:
        self._events = events

    def info(self, message: str) -> None:
        self._events.put(("log", "info", message))

    def warning(self, message: str) -> None:
        self._events.put(("log", "warning", message))


def build_feeds_asset(feeds: list[Feed], name: str = "sync_feeds") -> dg.AssetsDefinition:
    by_key = {f.key: f for f in feeds}
    for feed in feeds:
        for dep in feed.deps:
            if dep not in by_key or by_key[dep].lane != feed.lane or feeds.index(by_key[dep]) > feeds.index(feed):
                raise ValueError(f"feed {feed.key}: {dep} must be an earlier feed of lane {feed.lane}")

    @dg.multi_asset(
        name=name,
        specs=[f.spec() for f in feeds],
        can_subset=True,
        pool=WRITER_POOL,
        description="Current-state feeds: Metapic in one lane, every other feed in another.",
    )
    def sync_feeds(
        context: dg.AssetExecutionContext,
        config: SyncConfig,
        warehouse: WarehouseResource,
        onlytraffic_marketer: OnlyTrafficMarketerResource,
        onlytraffic_studio: OnlyTrafficStudioResource,
        cpamoe: CpamoeResource,
        metapic: MetapicResource,
    ) -> Iterator[dg.MaterializeResult]:
        selected = [f for f in feeds if dg.AssetKey(f.key) in context.selected_asset_keys]
        events: queue.Queue = queue.Queue()
        run = FeedRun(context.run_id, config.full_refresh, QueueLog(events), warehouse,
                      onlytraffic_marketer, onlytraffic_studio, cpamoe, metapic)
        yield from _run_lanes(context, selected, run, events)

    return sync_feeds


def _run_lanes(
    context: dg.AssetExecutionContext, selected: list[Feed], run: FeedRun, events: queue.Queue
) -> Iterator[dg.MaterializeResult]:
    lanes: dict[str, list[Feed]] = {}
    for feed in selected:
        lanes.setdefault(feed.lane, []).append(feed)
    stop = threading.Event()  # set when the op ends: running feeds stop at their next page, none starts

    def run_lane(lane: list[Feed]) -> None:
        failed: set[str] = set()
        try:
            for feed in lane:
                if stop.is_set():
                    break
                if failed_deps := sorted(failed & set(feed.deps)):
                    failed.add(feed.key)
                    run.log.warning(f"{feed.key}: not run, it reads {', '.join(failed_deps)}, which failed")
                    continue
                try:
                    result = materialize(lambda progress, f=feed: f.sync(run, _stop_aware(progress, stop)),
                                         asset_key=dg.AssetKey(feed.key), log=run.log, warehouse=run.warehouse)
                except Exception as exc:  # noqa: BLE001 - reported by the op's thread, which fails the op
                    failed.add(feed.key)
                    events.put(("failed", feed.key, exc))
                else:
                    events.put(("done", feed.key, result))
        finally:
            events.put(("lane_end", None, None))

    failures: list[tuple[str, Exception]] = []
    with ThreadPoolExecutor(max_workers=max(1, len(lanes)), thread_name_prefix="feed-lane") as pool:
        for lane in lanes.values():
            pool.submit(run_lane, lane)
        running = len(lanes)
        try:
            while running:
                kind, what, payload = events.get()
                if kind == "log":
                    getattr(context.log, what)(payload)
                elif kind == "done":
                    yield payload
                elif kind == "failed":
                    context.log.error(f"{what} failed: {type(payload).__name__}: {payload}")
                    failures.append((what, payload))
                elif kind == "lane_end":
                    running -= 1
        finally:
            stop.set()  # the op is ending (also when Dagster interrupts it): no new feed starts
    if failures:
        key, first = failures[0]
        others = [k for k, _ in failures[1:]]
        also = f" (also failed: {', '.join(others)}; see the log)" if others else ""
        raise FeedFailed(f"{key}: {type(first).__name__}: {first}{also}") from first
