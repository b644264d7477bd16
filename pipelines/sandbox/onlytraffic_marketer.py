"""Simulated OnlyTraffic Marketer API: ``GET /api/marketer/cpc/orders`` and ``/api/marketer/cpl/orders``.

Faithful to the docs: ``Authorization`` key; ``offset`` (default 0) and ``limit`` (default 50,
max 1000) as query parameters or JSON body fields; the default status filter is ``active``;
errors, including validation errors and rate limits, come as ``{"status": "error", ...}`` inside
HTTP 200 bodies. Assumption where the docs are silent: lists are newest-created first, and a
wrong key gets HTTP 401 with an error envelope. The CPL default status filter is undocumented:
here it is ``accepted`` only, so a client that forgets ``status`` visibly loses orders.

Every parameter is validated before anything is read: ``null``, a non-integer or out-of-range
``offset``/``limit``/``of_account_id``/``offer_id``, or an unknown ``status`` gets the documented
error envelope with ``error_code`` 422 (in an HTTP 200 body), never an HTTP 500. Each list honours
only the filters its docs name (CPC ``of_account_id``, ``creative_public_id``; CPL
``of_account_id``, ``offer_id``); other parameters are ignored. With churn switched on
(:mod:`pipelines.sandbox.churn`) the lists move between two requests.
"""

from __future__ import annotations

import re
from datetime import UTC, timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pipelines.sandbox.orderbook import Order, OrderBook
from pipelines.sandbox.server import Sandbox, json_response
from pipelines.sandbox.world import epoch, iso

API_KEY = "sandbox-marketer-key-3f9a"
DEFAULT_LIMIT = 50
MAX_LIMIT = 1000


class CpcBook(OrderBook):
    feed = "cpc"
    id_prefix = "cpco_"
    active = "active"
    count_attr = "cpc_orders"
    ordered_range = (500, 20000)
    price_range = (0.02, 0.15)

    def customize(self, rng, order: Order) -> None:
        n = order.account
        order.extra = {
            "creative": {
                "of_account_id": n,
                "public_id": f"cpcr_{n:06d}",
                "uuid": f"550e8400-e29b-41d4-a716-{n:012d}",
                "name": f"Model {n}",
                "username": f"model{n}",
                "picture": f"https://cdn.example.com/{n}_800.webp",
                "picture_thumb": f"https://cdn.example.com/{n}_200.webp",
                "pictures": [{"full": f"https://cdn.example.com/{n}_800.webp", "thumb": f"https://cdn.example.com/{n}_200.webp"}],
                "price": round(4.99 + (n % 5) * 2.5, 2),
                "description": "Subscribe for exclusive content",
                "categories": ["fitness"] if n % 2 else ["brunette"],
            },
            "url": f"https://tracking.example.com/click/{order.order_id}",
        }

    def render(self, o: Order) -> dict[str, Any]:
        delivered = int(o.delivered)
        return {
            "order_id": o.order_id,
            "of_account_id": o.account,
            "creative": o.extra["creative"],
            "url": o.extra["url"],
            "clicks": {"ordered": o.ordered, "delivered": delivered},
            "price_per_click": o.price,
            "total_earned": round(min(o.ordered, delivered) * o.price, 2),
            "status": o.status,
            "date_start": epoch(o.accepted),
            "date_finish": epoch(o.finished) if o.status == self.completed else None,
            "created_at": iso(o.created.astimezone(UTC)),
            "created_at_ts": epoch(o.created),
        }


CPL_CAMPAIGN_TYPES = ("free", "paid", "paid_trial", "tracking_link")
LINK_BASED = ("paid_trial", "tracking_link")  # campaigns whose clicks are counted


class CplBook(OrderBook):
    """CPL orders: fans ordered against our offers. Waiting orders are auto-rejected after 3 days.

    ``status_overrides`` (order_id -> raw status) makes the API report an order with a status
    outside the documented enum while still listing it under its documented filter: tests use it
    to check that an unknown value is kept, not dropped.
    """

    feed = "cpl"
    id_prefix = "cplo_"
    active = "accepted"  # also the (undocumented) default status filter
    cancelled = "cancelled"
    count_attr = "cpl_orders"
    ordered_range = (50, 1500)
    price_range = (1.5, 6.0)
    auto_reject_after = timedelta(days=3)

    def __init__(self, world) -> None:
        self.status_overrides: dict[str, str] = {}
        super().__init__(world)

    def customize(self, rng, order: Order) -> None:
        campaign_type = rng.choice(CPL_CAMPAIGN_TYPES)
        url = None
        if rng.random() >= 0.15:  # campaign_url is nullable
            kind = "trial" if campaign_type == "paid_trial" else "c"
            url = f"https://onlyfans.com/model{order.account}/{kind}{order.n}"
        order.extra = {
            "offer_id": 5000 + rng.randrange(40),
            "campaign_type": campaign_type,
            "campaign_url": url,
            "clicks_per_fan": rng.uniform(4, 15) if campaign_type in LINK_BASED else None,
            "tags": rng.sample(["reddit", "twitter", "tiktok", "ig", "vip"], rng.randrange(3)),
        }

    def render(self, o: Order) -> dict[str, Any]:
        delivered = int(o.delivered)
        per_fan = o.extra["clicks_per_fan"]
        clicks = int(delivered * per_fan) if per_fan else None
        completed = o.finished if o.status == self.completed else None
        return {
            "order_id": o.order_id,
            "offer_id": o.extra["offer_id"],
            "of_account_id": o.account,
            "campaign_type": o.extra["campaign_type"],
            "campaign_url": o.extra["campaign_url"],
            "quantity_ordered": o.ordered,
            "quantity_delivered": delivered,
            "price_per_fan": o.price,
            "clicks": clicks,
            "total_earned": round(min(o.ordered, delivered) * o.price, 2),
            "status": self.status_overrides.get(o.order_id, o.status),
            "created_at": iso(o.created.astimezone(UTC)),
            "created_at_ts": epoch(o.created),
            "completed_at": iso(completed.astimezone(UTC)) if completed else None,
            "completed_at_ts": epoch(completed),
            # not in the fact sheet (the dashboard shows them): clients must keep, not fail on them
            "tags": o.extra["tags"],
            "conversion_rate": round(delivered / clicks, 4) if clicks else None,
        }


def error_envelope(message: str, code: int) -> dict:
    return {"status": "error", "message": message, "error_code": code}


# Per list: the fields schema-drift tests change (see pipelines.sandbox.faults.DriftPlan): the
# record key, an optional field, a typed field with a value of the wrong type, the enum field.
DRIFT_FIELDS = {
    "/cpc/orders": {
        "key": "order_id", "optional": "url", "typed": ("clicks.ordered", "lots"),
        "enum": ("status", "paused_by_admin"),
    },
    "/cpl/orders": {
        "key": "order_id", "optional": "campaign_url", "typed": ("quantity_ordered", "lots"),
        "enum": ("status", "paused_by_admin"),
    },
}


class MarketerApi:
    """The Marketer API family; each order list is an :class:`OrderBook`."""

    name = "onlytraffic_marketer"
    prefix = "/onlytraffic"
    pagination = "offset"

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        world = sandbox.world
        self.books: dict[str, OrderBook] = {"cpc": CpcBook(world), "cpl": CplBook(world)}
        for key, book in self.books.items():
            world.datasets[f"marketer_{key}"] = book

    def routes(self) -> list[BaseRoute]:
        return [
            Route(f"/api/marketer/{key}/orders", self._lister(key), methods=["GET", "POST"])
            for key in self.books
        ]

    def error_body(self, kind: str) -> tuple[int, dict]:
        if kind == "auth":
            return 401, error_envelope("Unauthorized: invalid API key", 401)
        if kind == "429":
            return 429, error_envelope("Too many requests", 429)
        return 200, error_envelope("Rate limit exceeded, retry later", 429)

    def env(self, base_url: str) -> dict[str, str]:
        return {"ONLYTRAFFIC_MARKETER_BASE_URL": base_url, "ONLYTRAFFIC_MARKETER_API_KEY": API_KEY}

    @staticmethod
    def records_in(body: Any) -> list[dict]:
        """The orders of a list response (for schema drift)."""
        data = body.get("data") if isinstance(body, dict) else None
        return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []

    def _lister(self, key: str):
        book = self.books[key]
        route = f"marketer/{key}/orders"
        filters = FILTERS[key]

        async def handler(request: Request) -> Response:
            self.sandbox.stats.request(route, str(request.query_params))
            if request.headers.get("authorization") != API_KEY:
                status, body = self.error_body("auth")
                return json_response(body, status)
            params = await _params(request)
            try:
                query = _validate(params, book, filters)
            except ValueError as exc:
                return json_response(error_envelope(str(exc), 422))
            status, offset, limit = query.pop("status"), query.pop("offset"), query.pop("limit")
            with self.sandbox.world.lock:
                self.sandbox.churn.before_list(book)  # a live list moves between two requests
                orders = self.sandbox.churn.arrange(book, status, book.listed(status))
                if "of_account_id" in query:
                    orders = [o for o in orders if o.account == query["of_account_id"]]
                if "creative_public_id" in query:
                    wanted = query["creative_public_id"]
                    orders = [o for o in orders if o.extra["creative"]["public_id"] == wanted]
                if "offer_id" in query:
                    orders = [o for o in orders if o.extra["offer_id"] == query["offer_id"]]
                page = [book.render(o) for o in orders[offset : offset + limit]]
            self.sandbox.stats.served(route, status, len(page))
            return Response(orjson.dumps({"status": "success", "data": page}), media_type="application/json")

        return handler


# The filters each list documents (CPC: the OpenAPI spec; CPL: the fact sheet), with their type.
# Anything else is ignored, as a real API ignores parameters it does not know.
FILTERS = {
    "cpc": {"of_account_id": "integer", "creative_public_id": "string"},
    "cpl": {"of_account_id": "integer", "offer_id": "integer"},
}


def _validate(params: dict[str, Any], book: OrderBook, filters: dict[str, str]) -> dict[str, Any]:
    """Every parameter checked before anything is read, the way the API validates a request: a
    value it would reject (``null``, a non-integer, out of range, an unknown status) raises
    ``ValueError`` with the message of a 422 error envelope, never an exception (HTTP 500)."""
    query: dict[str, Any] = {
        "offset": _int(params.get("offset", 0), "offset", minimum=0),
        "limit": _int(params.get("limit", DEFAULT_LIMIT), "limit", minimum=1, maximum=MAX_LIMIT),
    }
    status = params.get("status", book.active)  # CPC documented: active only; CPL: accepted
    if not isinstance(status, str) or status not in book.statuses:
        raise ValueError(f"The selected status is invalid: {str(status)[:40]}")
    query["status"] = status
    for name, kind in filters.items():
        if name not in params:
            continue
        value = params[name]
        if kind == "integer":
            query[name] = _int(value, name)
        elif isinstance(value, str) and value:
            query[name] = value
        else:
            raise ValueError(f"The {name} must be a string.")
    return query


async def _params(request: Request) -> dict[str, Any]:
    """Query parameters, or JSON body fields (the docs allow both)."""
    params: dict[str, Any] = dict(request.query_params)
    raw = await request.body()
    if raw:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict):
            for k, v in body.items():
                params.setdefault(k, v)
    return params


def _int(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer as a query string or JSON body carries it: digits, or a JSON integer (not a
    boolean, not a float, not null)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"The {name} must be an integer.")
    text = value.strip() if isinstance(value, str) else str(value)
    if not re.fullmatch(r"-?[0-9]{1,18}", text):
        raise ValueError(f"The {name} must be an integer.")
    number = int(text)
    if minimum is not None and number < minimum:
        raise ValueError(f"The {name} must be at least {minimum}.")
    if maximum is not None and number > maximum:
        raise ValueError(f"The {name} may not be greater than {maximum}.")
    return number
