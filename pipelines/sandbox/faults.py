"""Switchable misbehaviour for the sandbox's API routes: faults, schema drift, pagination lies.

A fault plan says how often (``rate``, 0..1) a request is hit and by which kinds of fault, chosen
by a seeded generator so a test run is reproducible. Kinds:

``429``        HTTP 429 (the API's own rate-limit body)
``error_200``  HTTP 200 whose body is the API's own rate-limit error envelope
``500`` ``502`` ``503``  server errors
``timeout``    the response is delayed by ``slow_seconds`` (longer than a client timeout)
``drop``       the connection is cut half-way through the body
``malformed``  HTTP 200 with a truncated, invalid JSON body
``auth``       HTTP 401 (for the "fails at once" tests; not part of ``ALL_KINDS``)
``403``        HTTP 403 with the API's auth error body (not part of ``ALL_KINDS`` either)

``max_faults`` caps the total number injected (None: no cap); ``only`` restricts faults to requests whose
path and query (``/x/orders?status=completed``) contain one of the given substrings; ``skip`` lets
the first that many of those requests through untouched (a later page, a later batch fails).
``retry_after_on`` lists the kinds whose answer carries a ``Retry-After`` header: none by default,
because no API doc promises one (the CPC spec and the CPL fact sheet name 429 without it, cpa.moe
claims no limit, Metapic's doc says nothing), so a client must cope without it.
``retry_after_max`` draws each ``Retry-After`` from ``retry_after .. retry_after_max`` (whole
seconds when both are whole); ``latency`` delays every API request, faulted or not (a slow API).
:attr:`FaultInjector.injected` counts what was injected, per kind: what tests derive retries from.

A :class:`DriftPlan` rewrites the *records* of successful JSON responses (each API module says
where its records are with ``records_in(body)``): fields added, fields removed, a field of the
wrong type or an unknown enum value on a deterministic subset of records. A :class:`LiePlan`
makes pagination lie, per pagination style (``offset``, ``pages``, ``laravel``: the module's
``pagination`` attribute): an empty page before the end, a page that repeats the previous one, or
a total that changes between pages.
"""

from __future__ import annotations

import random
import threading
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import parse_qsl

ALL_KINDS = ("429", "error_200", "500", "502", "503", "timeout", "drop", "malformed")
EXTRA_KINDS = ("auth", "403")


@dataclass
class FaultPlan:
    rate: float = 0.0
    kinds: tuple[str, ...] = ALL_KINDS
    retry_after: float = 1.0
    slow_seconds: float = 3.0
    seed: int = 7
    max_faults: int | None = None
    only: tuple[str, ...] = ()
    retry_after_max: float | None = None
    latency: float = 0.0
    skip: int = 0
    retry_after_on: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: dict) -> FaultPlan:
        plan = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        plan.kinds = tuple(plan.kinds)
        plan.only = tuple(plan.only)
        plan.retry_after_on = tuple(plan.retry_after_on)
        unknown = (set(plan.kinds) | set(plan.retry_after_on)) - set(ALL_KINDS) - set(EXTRA_KINDS)
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
    _matched: int = 0  # requests ``only`` matched so far (for ``skip``)

    def configure(self, plan: FaultPlan) -> None:
        with self._lock:
            self.plan = plan
            self._rng = random.Random(plan.seed)
            self.injected = {}
            self._matched = 0

    def pick(self, path: str) -> str | None:
        """The fault to inject into this request, if any."""
        with self._lock:
            plan = self.plan
            if plan.rate <= 0 or not plan.kinds:
                return None
            if plan.only and not any(s in path for s in plan.only):
                return None
            self._matched += 1
            if self._matched <= plan.skip:
                return None
            if plan.max_faults is not None and sum(self.injected.values()) >= plan.max_faults:
                return None
            if self._rng.random() >= plan.rate:
                return None
            kind = self._rng.choice(plan.kinds)
            self.injected[kind] = self.injected.get(kind, 0) + 1
            return kind

    def retry_after_header(self, kind: str) -> dict[str, str]:
        """The ``Retry-After`` header of one injected fault of ``kind``, when the plan sends one
        for that kind (a value is drawn either way, so a seed gives the same faults with or
        without headers)."""
        seconds = self.retry_after()
        return {"retry-after": f"{seconds:g}"} if kind in self.plan.retry_after_on else {}

    def retry_after(self) -> float:
        """The ``Retry-After`` of one injected fault."""
        with self._lock:
            low, high = self.plan.retry_after, self.plan.retry_after_max
            if high is None or high <= low:
                return low
            if float(low).is_integer() and float(high).is_integer():
                return float(self._rng.randint(int(low), int(high)))
            return round(self._rng.uniform(low, high), 3)


# -- schema drift ------------------------------------------------------------------------------


def _split(path: str) -> list[str]:
    return path.split(".")


def _set(record: dict, path: str, value: Any) -> None:
    *parents, leaf = _split(path)
    node = record
    for name in parents:
        child = node.get(name)
        if not isinstance(child, dict):
            child = node[name] = {}
        node = child
    node[leaf] = value


def _drop(record: dict, path: str) -> None:
    *parents, leaf = _split(path)
    node: Any = record
    for name in parents:
        node = node.get(name) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)


@dataclass
class DriftPlan:
    """How the records of successful responses drift from the documented schema.

    ``extra`` fields are added to every record and ``drop`` fields (dotted paths) removed from
    every record. Records are split by a stable hash of their key (the first of ``key`` present):
    those hashing to 0 modulo ``every`` get ``wrong_type`` (field -> a value of the wrong JSON
    type), those hashing to 1 get ``unknown_enum`` (field -> an undocumented value). ``only``
    limits the drift to responses whose path and query contain one of the given substrings.
    """

    only: tuple[str, ...] = ()
    key: tuple[str, ...] = ("id",)
    every: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    drop: tuple[str, ...] = ()
    wrong_type: dict[str, Any] = field(default_factory=dict)
    unknown_enum: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> DriftPlan:
        plan = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        plan.only, plan.key, plan.drop = tuple(plan.only), tuple(plan.key), tuple(plan.drop)
        return plan

    @property
    def active(self) -> bool:
        return bool(self.extra or self.drop or (self.every and (self.wrong_type or self.unknown_enum)))

    def applies_to(self, path: str) -> bool:
        return self.active and (not self.only or any(s in path for s in self.only))

    def record_key(self, record: dict) -> str | None:
        for name in self.key:
            value = record.get(name)
            if value is not None:
                return str(value)
        return None

    def target(self, record: dict) -> str | None:
        """``wrong_type``, ``unknown_enum`` or None: what happens to this record."""
        key = self.record_key(record)
        if not self.every or key is None:
            return None
        bucket = zlib.crc32(key.encode()) % self.every
        if bucket == 0 and self.wrong_type:
            return "wrong_type"
        if bucket == 1 and self.unknown_enum:
            return "unknown_enum"
        return None

    def apply(self, record: dict) -> None:
        target = self.target(record)  # decided on the record as the API rendered it
        for name, value in self.extra.items():
            _set(record, name, value)
        for name in self.drop:
            _drop(record, name)
        changes = self.wrong_type if target == "wrong_type" else self.unknown_enum if target == "unknown_enum" else {}
        for name, value in changes.items():
            _set(record, name, value)


# -- pagination lies ---------------------------------------------------------------------------

LIE_KINDS = ("empty_page", "repeat_page", "total_changes")
# The query parameters that select a page, per pagination style (the rest name the list).
_PAGE_PARAMS = {"offset": ("offset", "limit"), "pages": ("page", "page_size"), "laravel": ("page", "size")}


@dataclass
class LiePlan:
    """A lie told by every list's page number ``at_page`` (1-based), the first time it is asked
    for (every time with ``persistent``); ``only`` as in the other plans."""

    kind: str | None = None
    only: tuple[str, ...] = ()
    at_page: int = 2
    persistent: bool = False

    @classmethod
    def from_dict(cls, data: dict) -> LiePlan:
        plan = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        plan.only = tuple(plan.only)
        if plan.kind is not None and plan.kind not in LIE_KINDS:
            raise ValueError(f"unknown pagination lie {plan.kind!r}; one of {LIE_KINDS}")
        if plan.at_page < 2:
            raise ValueError("at_page must be 2 or more (a lie needs a page before it)")
        return plan

    def applies_to(self, path: str) -> bool:
        return self.kind is not None and (not self.only or any(s in path for s in self.only))


def page_of(style: str, path: str, query: str) -> tuple[str, int] | None:
    """(the list a request reads, its 1-based page number) for a pagination style."""
    names = _PAGE_PARAMS.get(style)
    if names is None:
        return None
    params = parse_qsl(query, keep_blank_values=True)
    page_params = {k: v for k, v in params if k in names}
    list_key = path + "?" + "&".join(sorted(f"{k}={v}" for k, v in params if k not in names))
    try:
        if style == "offset":
            offset = int(page_params.get("offset", 0))
            limit = max(int(page_params.get("limit", 50)), 1)
            return list_key, offset // limit + 1
        return list_key, int(page_params.get("page", 1))
    except ValueError:
        return None


def tell_lie(style: str, kind: str, body: dict, previous: dict | None) -> bool:
    """Make ``body`` (a page, parsed) lie; False when this style cannot tell this lie."""
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        return False
    if kind == "empty_page":
        body["data"] = []
        return True
    if kind == "repeat_page":
        if not isinstance(previous, dict) or not isinstance(previous.get("data"), list):
            return False
        body["data"] = previous["data"]
        return True
    # total_changes: the list claims to have grown since the previous page
    block = {"pages": "pagination", "laravel": "meta"}.get(style)
    holder = body.get(block) if block else None
    if not isinstance(holder, dict) or not isinstance(holder.get("total"), int):
        return False
    holder["total"] += 7
    return True


@dataclass
class LieTeller:
    """Remembers which pages already lied and the page before each lie (to repeat it)."""

    plan: LiePlan = field(default_factory=LiePlan)
    told: dict[str, int] = field(default_factory=dict)  # kind -> lies told
    _previous: dict[str, bytes] = field(default_factory=dict)
    _lied: set = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def configure(self, plan: LiePlan) -> None:
        with self._lock:
            self.plan, self.told = plan, {}
            self._previous.clear()
            self._lied.clear()

    def wants(self, path: str) -> bool:
        return self.plan.applies_to(path)

    def rewrite(self, style: str, path: str, query: str, body: dict) -> bool:
        """Lie in ``body`` if this page should; remember the page before the lie."""
        import orjson

        located = page_of(style, path, query)
        if located is None:
            return False
        list_key, page = located
        plan = self.plan
        with self._lock:
            if page == plan.at_page - 1:
                self._previous[list_key] = orjson.dumps(body)
                return False
            if page != plan.at_page or (not plan.persistent and list_key in self._lied):
                return False
            previous = self._previous.get(list_key)
        told = tell_lie(style, plan.kind or "", body, orjson.loads(previous) if previous else None)
        if told:
            with self._lock:
                self._lied.add(list_key)
                self.told[plan.kind or ""] = self.told.get(plan.kind or "", 0) + 1
        return told
