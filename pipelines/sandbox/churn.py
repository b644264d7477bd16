"""Order lists that move while they are read, and terminal lists served in an unhelpful order.

A live API does not stand still during a sync: between two page requests an active order completes,
a waiting one is accepted. With offset or page-number pagination the list shifts under the reader,
so an order can be on no page it reads. :class:`Churner` makes the OnlyTraffic order sandboxes
(CPC, CPL, swap: :mod:`pipelines.sandbox.orderbook`) do the same, deterministically: on a chosen
share of list requests, one open order (picked by a seeded generator) moves one status on before
the request is answered.

``hide`` takes orders out of every list (an order no status list returns any more), and
``terminal_order`` serves terminal lists (rejected, completed, cancelled) oldest-first or in a
stable shuffle instead of newest-first, whatever ``sort`` asks for: the Marketer docs promise no
order at all, so the incremental sync's "not sorted newest-first, re-read in full" path must work.

Controlled through ``/_sandbox/churn`` (GET/POST a :class:`ChurnPlan` as JSON) or
``Sandbox.set_churn(...)``; off by default.
"""

from __future__ import annotations

import hashlib
import random
import threading
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipelines.sandbox.orderbook import Order, OrderBook

TERMINAL_ORDERS = ("oldest_first", "shuffled")


@dataclass
class ChurnPlan:
    """``share`` of list requests (0..1) that move one open order one status on first; ``only``
    limits it (and ``terminal_order``) to feeds whose name is listed (``cpc``, ``cpl``, ``swap``)."""

    share: float = 0.0
    seed: int = 1
    only: tuple[str, ...] = ()
    terminal_order: str | None = None
    hide: tuple[str, ...] = ()  # order ids no status list returns (an order gone from the API)

    @classmethod
    def from_dict(cls, data: dict) -> ChurnPlan:
        plan = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        plan.only = tuple(plan.only)
        plan.hide = tuple(plan.hide)
        plan.share = float(plan.share)
        if not 0.0 <= plan.share <= 1.0:
            raise ValueError("share must be between 0 and 1")
        if plan.terminal_order is not None and plan.terminal_order not in TERMINAL_ORDERS:
            raise ValueError(f"unknown terminal_order {plan.terminal_order!r}; one of {TERMINAL_ORDERS}")
        return plan

    def applies_to(self, feed: str) -> bool:
        return not self.only or feed in self.only


@dataclass
class Churner:
    """Applies a :class:`ChurnPlan`; ``moves`` records every move made (feed, order_id, from, to)."""

    plan: ChurnPlan = field(default_factory=ChurnPlan)
    moves: list[tuple[str, str, str, str]] = field(default_factory=list)
    _rng: random.Random = field(default_factory=lambda: random.Random("churn:1"))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def configure(self, plan: ChurnPlan) -> None:
        with self._lock:
            self.plan = plan
            self.moves = []
            self._rng = random.Random(f"churn:{plan.seed}")

    def to_dict(self) -> dict:
        with self._lock:
            plan = asdict(self.plan)
            plan["only"] = list(plan["only"])
            plan["hide"] = list(plan["hide"])
            return {"plan": plan, "moves": len(self.moves)}

    def before_list(self, book: OrderBook) -> None:
        """Called by a list handler, under the world lock, before it reads ``book``."""
        plan = self.plan
        if plan.share <= 0 or not plan.applies_to(book.feed):
            return
        with self._lock:
            if self._rng.random() >= plan.share or not book.open:
                return
            candidates = sorted(book.open)
            order = book.orders[candidates[self._rng.randrange(len(candidates))] - 1]
            before = order.status
            roll = self._rng.random()
        after = book.move_on(order, roll)
        with self._lock:
            self.moves.append((book.feed, order.order_id, before, after))

    def arrange(self, book: OrderBook, status: str, orders: list[Order]) -> list[Order]:
        """``orders`` (newest-first) as this plan serves one status list: without the hidden
        orders, and a terminal list in ``terminal_order``."""
        if self.plan.hide:
            hidden = set(self.plan.hide)
            orders = [o for o in orders if o.order_id not in hidden]
        mode = self.plan.terminal_order
        if mode is None or status not in book.terminal_statuses or not self.plan.applies_to(book.feed):
            return orders
        if mode == "oldest_first":
            return orders[::-1]
        return sorted(orders, key=lambda o: hashlib.blake2b(f"{self.plan.seed}:{o.order_id}".encode(), digest_size=8).digest())
