"""The sandbox's simulated world: a clock, a seed, a scale, and one dataset per API.

Everything is deterministic: the same seed, scale and anchor produce the same records, and
advancing the clock by the same steps produces the same changes. A world with another anchor is
the same world moved in time (record times are offsets from the anchor and steps are keyed by
them; only Metapic's daily clicks are drawn per calendar day). Each API module registers a dataset
object with ``advance(world, until)`` to evolve its records as simulated time passes.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol


@dataclass(frozen=True)
class Scale:
    """Record counts of a world. ``history_days``: how far back the initial records go.

    ``factor``: how many times the tiny world this one is. A sandbox module without a count here
    sizes its records as its tiny count times ``factor`` (``round(n * world.scale.factor)``), so a
    new source's module needs no field added to this class.
    """

    cpc_orders: int
    cpl_orders: int
    swap_orders: int
    leads: int
    offers: int
    participants_per_offer: int
    history_days: int = 120
    factor: float = 1.0


SCALES: dict[str, Scale] = {
    # tests: several pages per list with small page sizes, fast to generate
    "tiny": Scale(cpc_orders=240, cpl_orders=180, swap_orders=220, leads=300, offers=12, participants_per_offer=6, history_days=60),
    # make run: a world you can look at
    "small": Scale(cpc_orders=2_000, cpl_orders=1_200, swap_orders=1_500, leads=3_000, offers=60, participants_per_offer=12, factor=10),
    # load tests: thousands of records per feed
    "medium": Scale(cpc_orders=20_000, cpl_orders=5_000, swap_orders=20_000, leads=50_000, offers=200, participants_per_offer=50, factor=100),
    # benchmarks
    "large": Scale(cpc_orders=200_000, cpl_orders=50_000, swap_orders=200_000, leads=500_000, offers=2_000, participants_per_offer=50, history_days=365, factor=1000),
}


class Dataset(Protocol):
    def advance(self, world: World, until: datetime) -> None: ...


def default_anchor() -> datetime:
    """Now, floored to the hour: records look current in ``make run``."""
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


@dataclass
class World:
    seed: int = 1
    scale: Scale = field(default_factory=lambda: SCALES["tiny"])
    anchor: datetime = field(default_factory=default_anchor)
    now: datetime = field(init=False)
    datasets: dict[str, Dataset] = field(default_factory=dict)
    lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.now = self.anchor

    def rng(self, *parts: object) -> random.Random:
        """A generator seeded by the world seed and ``parts``: stable across runs."""
        return random.Random(f"{self.seed}:" + ":".join(str(p) for p in parts))

    def step_rng(self, *parts: object, until: datetime) -> random.Random:
        """The generator of one step of time ending at ``until``, keyed by the seconds since the
        anchor, not by the date: a world started at another hour evolves the same way (the
        built-in sandbox of `affwh run` starts a day before the current hour, so its demo, the
        alerts included, is the same whenever it is run)."""
        return self.rng(*parts, int((until - self.anchor).total_seconds()))

    def advance(self, delta: timedelta) -> datetime:
        """Move simulated time forward; every dataset evolves in steps of at most one hour."""
        with self.lock:
            target = self.now + delta
            while self.now < target:
                step_end = min(target, self.now + timedelta(hours=1))
                for dataset in self.datasets.values():
                    dataset.advance(self, step_end)
                self.now = step_end
            return self.now


def iso(ts: datetime | None) -> str | None:
    return ts.isoformat() if ts is not None else None


def epoch(ts: datetime | None) -> int | None:
    return int(ts.timestamp()) if ts is not None else None
