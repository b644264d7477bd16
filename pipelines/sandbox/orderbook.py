"""A simulated book of orders that move through statuses as sandbox time passes.

Shared by the OnlyTraffic order feeds (CPC, CPL, swap): each feed subclasses :class:`OrderBook`
with its own statuses, its own record shape (``render``) and its own lifecycle rates.
Orders are created over ``history_days`` before the anchor; new ones keep arriving as time is
advanced. Open orders are accepted, delivered and finished hour by hour, deterministically.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pipelines.sandbox.world import World


@dataclass(slots=True)
class Order:
    n: int
    order_id: str
    created: datetime
    ordered: int
    price: float
    duration_days: float
    account: int
    status: str
    delivered: float = 0.0
    accepted: datetime | None = None
    finished: datetime | None = None
    extra: dict | None = None


class OrderBook:
    """Orders of one feed. Subclasses set the class attributes and implement ``render``."""

    feed = "orders"
    id_prefix = "ord_"
    waiting = "waiting"
    active = "accepted"
    completed = "completed"
    rejected = "rejected"
    cancelled: str | None = None
    count_attr = "cpc_orders"
    ordered_range = (100, 5000)
    price_range = (0.01, 0.2)
    accept_per_hour = 1 / 20  # mean wait ~20 h
    reject_per_hour = 1 / 200
    cancel_per_hour = 1 / 4000
    auto_reject_after: timedelta | None = None
    overshoot = 0.03  # delivery can run past the ordered quantity by up to 3%

    def __init__(self, world: World) -> None:
        self.world = world
        self.orders: list[Order] = []
        self.by_id: dict[str, Order] = {}
        self.open: set[int] = set()
        self._sorted: dict[str, list[Order]] = {}
        self.version = 0
        self._generate(getattr(world.scale, self.count_attr))

    # -- statuses ------------------------------------------------------------------------------

    @property
    def statuses(self) -> list[str]:
        return [s for s in (self.waiting, self.active, self.rejected, self.completed, self.cancelled) if s]

    @property
    def terminal_statuses(self) -> tuple[str, ...]:
        return tuple(s for s in (self.rejected, self.completed, self.cancelled) if s)

    def is_open(self, order: Order) -> bool:
        return order.status in (self.waiting, self.active)

    # -- generation ----------------------------------------------------------------------------

    def _new_order(self, rng: random.Random, created: datetime) -> Order:
        n = len(self.orders) + 1
        lo, hi = self.ordered_range
        order = Order(
            n=n,
            order_id=f"{self.id_prefix}{n:07d}",
            created=created.replace(microsecond=0),
            ordered=int(round(rng.uniform(lo, hi), -1)) or lo,
            price=round(rng.uniform(*self.price_range), 2),
            duration_days=rng.uniform(5, 60),
            account=100000 + rng.randrange(400),
            status=self.waiting,
        )
        self.customize(rng, order)
        self.orders.append(order)
        self.by_id[order.order_id] = order
        return order

    def customize(self, rng: random.Random, order: Order) -> None:
        """Hook for feed-specific fields (kept in ``order.extra``)."""

    def _generate(self, count: int) -> None:
        world = self.world
        rng = world.rng(self.feed, "initial")
        span = world.scale.history_days * 86400
        offsets = sorted(rng.uniform(0, span) for _ in range(count))
        for seconds_ago in reversed(offsets):
            created = world.anchor - timedelta(seconds=seconds_ago)
            order = self._new_order(rng, created)
            self._age(rng, order, world.anchor)
        self._touch()

    def _age(self, rng: random.Random, order: Order, now: datetime) -> None:
        """Put a freshly generated historical order in the state it would have reached by now."""
        hours = (now - order.created).total_seconds() / 3600
        wait = rng.expovariate(self.accept_per_hour)
        if rng.random() < self.reject_per_hour / (self.reject_per_hour + self.accept_per_hour):
            reject_at = min(wait, self.auto_reject_after.total_seconds() / 3600) if self.auto_reject_after else wait
            if reject_at < hours:
                self._finish(order, self.rejected, order.created + timedelta(hours=reject_at))
            else:
                self.open.add(order.n)
            return
        if self.auto_reject_after is not None and wait > self.auto_reject_after.total_seconds() / 3600:
            limit = self.auto_reject_after.total_seconds() / 3600
            if limit < hours:
                self._finish(order, self.rejected, order.created + timedelta(hours=limit))
            else:
                self.open.add(order.n)
            return
        if wait >= hours:
            self.open.add(order.n)
            return
        order.status = self.active
        order.accepted = order.created + timedelta(hours=wait)
        active_hours = hours - wait
        total_hours = order.duration_days * 24
        if self.cancelled and rng.random() < self.cancel_per_hour * total_hours:
            cancel_at = rng.uniform(0, total_hours)
            if cancel_at < active_hours:
                order.delivered = order.ordered * cancel_at / total_hours
                self._finish(order, self.cancelled, order.accepted + timedelta(hours=cancel_at))
                return
        if active_hours >= total_hours:
            order.delivered = order.ordered * (1 + rng.uniform(0, self.overshoot))
            self._finish(order, self.completed, order.accepted + timedelta(hours=total_hours))
        else:
            order.delivered = order.ordered * active_hours / total_hours
            self.open.add(order.n)

    def _finish(self, order: Order, status: str, when: datetime) -> None:
        order.status = status
        order.finished = when.replace(microsecond=0)
        self.open.discard(order.n)

    # -- time passes ---------------------------------------------------------------------------

    def advance(self, world: World, until: datetime) -> None:
        rng = world.step_rng(self.feed, "step", until=until)
        step_hours = (until - world.now).total_seconds() / 3600
        if step_hours <= 0:
            return
        for n in sorted(self.open):
            order = self.orders[n - 1]
            self.step(rng, order, until, step_hours)
        # new orders: Poisson arrivals at the historical rate
        per_hour = getattr(world.scale, self.count_attr) / (world.scale.history_days * 24)
        arrivals = _poisson(rng, per_hour * step_hours)
        for _ in range(arrivals):
            created = world.now + timedelta(hours=rng.uniform(0, step_hours))
            order = self._new_order(rng, created)
            self.open.add(order.n)
        self._touch()

    def step(self, rng: random.Random, order: Order, until: datetime, hours: float) -> None:
        if order.status == self.waiting:
            if self.auto_reject_after is not None and until - order.created >= self.auto_reject_after:
                self._finish(order, self.rejected, until)
            elif rng.random() < self.reject_per_hour * hours:
                self._finish(order, self.rejected, until)
            elif rng.random() < self.accept_per_hour * hours:
                order.status = self.active
                order.accepted = until
            return
        if self.cancelled and rng.random() < self.cancel_per_hour * hours:
            self._finish(order, self.cancelled, until)
            return
        rate = order.ordered / (order.duration_days * 24)
        order.delivered += rate * hours * rng.uniform(0.5, 1.5)
        if order.delivered >= order.ordered:
            order.delivered = min(order.delivered, order.ordered * (1 + self.overshoot))
            self._finish(order, self.completed, until)

    def move_on(self, order: Order, roll: float) -> str:
        """Move an open order one status on, now (a list changing while it is read: see
        :mod:`pipelines.sandbox.churn`). ``roll`` (0..1) picks the way: a waiting order is mostly
        accepted, sometimes rejected; an accepted one mostly completes (fully delivered),
        sometimes is cancelled (where the feed has that status). Returns the new status."""
        now = self.world.now
        if order.status == self.waiting:
            if roll < 0.75:
                order.status = self.active
                order.accepted = now
            else:
                self._finish(order, self.rejected, now)
        elif order.status == self.active:
            if self.cancelled and roll >= 0.8:
                self._finish(order, self.cancelled, now)
            else:
                order.delivered = max(order.delivered, float(order.ordered))
                self._finish(order, self.completed, now)
        self._touch()
        return order.status

    def _touch(self) -> None:
        self._sorted.clear()
        self.version += 1

    # -- reading -------------------------------------------------------------------------------

    def listed(self, status: str) -> list[Order]:
        """Orders in ``status``, newest created first (the order the API serves them in)."""
        if status not in self._sorted:
            chosen = [o for o in self.orders if o.status == status]
            chosen.sort(key=lambda o: (o.created, o.n), reverse=True)
            self._sorted[status] = chosen
        return self._sorted[status]

    def render(self, order: Order) -> dict[str, Any]:
        raise NotImplementedError

    def truth(self) -> list[dict[str, Any]]:
        """Every order as the API would render it (for tests comparing the warehouse)."""
        return [self.render(o) for o in self.orders]


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 50:
        return max(0, int(round(rng.gauss(lam, math.sqrt(lam)))))
    threshold, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= threshold:
            return k
        k += 1

