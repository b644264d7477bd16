"""Switchable fault injection for the sandbox's API routes.

A fault plan says how often (``rate``, 0..1) a request is hit and by which kinds of fault, chosen
by a seeded generator so a test run is reproducible. Kinds:

``429``        HTTP 429 with ``Retry-After``
``error_200``  HTTP 200 whose body is the API's own rate-limit error envelope
``500`` ``502`` ``503``  server errors
``timeout``    the response is delayed by ``slow_seconds`` (longer than a client timeout)
``drop``       the connection is cut half-way through the body
``malformed``  HTTP 200 with a truncated, invalid JSON body
``auth``       HTTP 401 (for the "fails at once" tests; not part of ``ALL_KINDS``)

``max_faults`` caps the total number injected (None: no cap); ``only`` restricts faults to requests whose
path and query (``/x/orders?status=completed``) contain one of the given substrings.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, field

ALL_KINDS = ("429", "error_200", "500", "502", "503", "timeout", "drop", "malformed")


@dataclass
class FaultPlan:
    rate: float = 0.0
    kinds: tuple[str, ...] = ALL_KINDS
    retry_after: float = 1.0
    slow_seconds: float = 3.0
    seed: int = 7
    max_faults: int | None = None
    only: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: dict) -> FaultPlan:
        plan = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        plan.kinds = tuple(plan.kinds)
        plan.only = tuple(plan.only)
        unknown = set(plan.kinds) - set(ALL_KINDS) - {"auth"}
        if unknown:
            raise ValueError(f"unknown fault kinds: {sorted(unknown)}")
        return plan

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FaultInjector:
    plan: FaultPlan = field(default_factory=FaultPlan)
    injected: dict[str, int] = field(default_factory=dict)
    _rng: random.Random = field(default_factory=lambda: random.Random(7))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def configure(self, plan: FaultPlan) -> None:
        with self._lock:
            self.plan = plan
            self._rng = random.Random(plan.seed)
            self.injected = {}

    def pick(self, path: str) -> str | None:
        """The fault to inject into this request, if any."""
        with self._lock:
            plan = self.plan
            if plan.rate <= 0 or not plan.kinds:
                return None
            if plan.only and not any(s in path for s in plan.only):
                return None
            if plan.max_faults is not None and sum(self.injected.values()) >= plan.max_faults:
                return None
            if self._rng.random() >= plan.rate:
                return None
            kind = self._rng.choice(plan.kinds)
            self.injected[kind] = self.injected.get(kind, 0) + 1
            return kind
