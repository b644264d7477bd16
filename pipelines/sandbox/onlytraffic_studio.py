"""Simulated OnlyTraffic Studio API: ``GET /swaps/orders`` (mounted at ``/studio``).

Faithful to the docs: ``X-API-Key`` header; ``page`` (1-based, default 1) and ``page_size``
(default 50, 1..100) with a ``pagination`` block; filters ``order_id``, ``offer_id``,
``of_account_id`` (either side), ``role``, ``status``, ``from``/``to`` (created date, UTC,
inclusive) and ``sort`` (NULL ``completed_at`` always last). Records carry **no status field**,
exactly as documented: a client only knows an order's status from the filter it asked for.

Where the docs are silent (assumptions, mirrored by the pipeline): errors are
``{"success": false, "error": {"code", "message"}}``, with HTTP 422 for invalid parameters, 401
for a wrong key, and HTTP 200 or 429 for rate limits; without ``status`` or ``role`` every order
is listed; money is in USD units. With churn switched on (:mod:`pipelines.sandbox.churn`) the
lists move between two requests, and terminal lists may be served in another order than asked.
"""

from __future__ import annotations

import math
from datetime import UTC, date, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pipelines.sandbox.orderbook import Order, OrderBook
from pipelines.sandbox.server import Sandbox, json_response
from pipelines.sandbox.world import epoch

API_KEY = "sandbox-studio-key-7c21"
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 100
ROUTE = "studio/swaps/orders"
ROLES = ("offer", "order")
SORTS = ("created_at_desc", "created_at_asc", "completed_at_desc", "completed_at_asc")
# stats blocks shaped {total, today, percent}, with the share of subscribed fans each counts
COUNT_BLOCKS = {
    "pay_subscribe": (0.2, 0.6),
    "pay_resubscribe": (0.05, 0.3),
    "purchases_1": (0.1, 0.4),
    "purchases_2": (0.05, 0.2),
    "purchases_5": (0.01, 0.08),
    "whale": (0.0, 0.02),
    "messages_3": (0.1, 0.5),
}


class SwapBook(OrderBook):
    """Swap orders: two models promote each other until ``quantity`` fans are delivered."""

    feed = "swap"
    id_prefix = "swpo_"
    active = "accepted"
    cancelled = "cancelled"
    count_attr = "swap_orders"
    ordered_range = (50, 2000)
    price_range = (0.0, 0.0)

    def customize(self, rng, order: Order) -> None:
        offer_mine = rng.random() < 0.6
        order.extra = {
            "offer_id": 7000 + rng.randrange(50),
            "max_days": math.ceil(order.duration_days) + rng.randrange(10),
            "guaranteed_price": round(rng.uniform(50, 500), 2) if rng.random() < 0.4 else 0,
            "stats_public_arpu": rng.random() < 0.5,
            "offer_mine": offer_mine,
            "sides": {
                "offer": self._side(rng, order.account, mine=offer_mine, ratio=1.0),
                "order": self._side(rng, 100000 + rng.randrange(400), mine=not offer_mine, ratio=rng.uniform(0.8, 1.1)),
            },
        }

    @staticmethod
    def _side(rng, account: int, *, mine: bool, ratio: float) -> dict[str, Any]:
        return {
            "mine": mine,
            "account": account,
            "performer_top": round(rng.uniform(0.1, 20), 1),
            "subscribe_price": rng.choice([0, 0, 4.99, 9.99, 14.99]),
            "ratio": ratio,
            "arpu": rng.uniform(2, 40),
            "shares": {name: rng.uniform(lo, hi) for name, (lo, hi) in COUNT_BLOCKS.items()},
        }

    # -- rendering -----------------------------------------------------------------------------

    def _today_fans(self, o: Order, side: dict) -> int:
        """Fans delivered since midnight UTC (0 once the order is no longer running)."""
        if o.status != self.active:
            return 0
        now = self.world.now
        since_midnight = now.hour + now.minute / 60
        per_hour = o.ordered / (o.duration_days * 24)
        return int(min(o.delivered, per_hour * since_midnight) * side["ratio"])

    def _render_side(self, o: Order, name: str) -> dict[str, Any]:
        side = o.extra["sides"][name]
        fans = int(o.delivered * side["ratio"])
        today = self._today_fans(o, side)
        spent = round(fans * side["arpu"], 2)
        counts = {
            block: {
                "total": int(fans * share),
                "today": int(today * share),
                "percent": round(100 * int(fans * share) / fans, 2) if fans else 0,
            }
            for block, share in side["shares"].items()
        }
        paying = counts["pay_subscribe"]["total"]
        public = side["mine"] or o.extra["stats_public_arpu"]
        guaranteed = o.extra["guaranteed_price"]
        return {
            "is_mine": side["mine"],
            "model": {
                "of_account_id": side["account"],
                "username": f"model{side['account']}",
                "performer_top": side["performer_top"],
                "subscribe_price": side["subscribe_price"],
            },
            "campaign_link": f"https://onlyfans.com/model{side['account']}/c{o.n}{name[0]}",
            "stats": {
                "fans_subscribed": {"total": fans, "today": today},
                "transactions_sum": {"total": spent, "today": round(today * side["arpu"], 2)},
                "arpu": (round(spent / fans, 2) if fans else 0) if public else None,
                "arpu_paying": (round(spent / paying, 2) if paying else 0) if public else None,
                "romi": round(spent / guaranteed, 4) if guaranteed else None,
                **counts,
            },
        }

    def completed_at(self, o: Order):
        return o.finished if o.status == self.completed else None

    def render(self, o: Order) -> dict[str, Any]:
        completed = self.completed_at(o)
        return {
            "order_id": o.order_id,
            "offer_id": o.extra["offer_id"],
            "quantity": o.ordered,
            "max_days": o.extra["max_days"],
            "guaranteed_price": o.extra["guaranteed_price"],
            "stats_public_arpu": o.extra["stats_public_arpu"],
            "is_offer_mine": o.extra["offer_mine"],
            "is_order_mine": not o.extra["offer_mine"],
            "offer_side": self._render_side(o, "offer"),
            "order_side": self._render_side(o, "order"),
            "created_at": _iso_z(o.created),
            "created_at_ts": epoch(o.created),
            "started_at": _iso_z(o.accepted),
            "started_at_ts": epoch(o.accepted),
            "completed_at": _iso_z(completed),
            "completed_at_ts": epoch(completed),
        }

    def status_of(self, order_id: str) -> str:
        """The truth the API never sends (tests compare it with the status taken from filters)."""
        return self.by_id[order_id].status


def _iso_z(ts: datetime | None) -> str | None:
    """As in the docs' example: whole seconds, UTC, ``Z`` suffix."""
    if ts is None:
        return None
    return ts.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def error_body(code: str, message: str) -> dict:
    return {"success": False, "error": {"code": code, "message": message}}


# The fields schema-drift tests change (see pipelines.sandbox.faults.DriftPlan). Records carry no
# status: an unknown one is drift that adds a status field (the pipeline lets it win).
DRIFT_FIELDS = {
    "/swaps/orders": {
        "key": "order_id", "optional": "max_days", "typed": ("quantity", "lots"),
        "enum": ("status", "frozen"),
    },
}


class StudioApi:
    """The Studio API: swap orders only."""

    name = "onlytraffic_studio"
    prefix = "/studio"
    pagination = "pages"

    # Test knobs for a misbehaving API (off by default): "ignore_page" serves page 1 whatever is
    # asked; "has_next_always" claims one more page than there is, forever.
    PAGINATION_QUIRKS = ("ignore_page", "has_next_always")

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.pagination_quirk: str | None = None
        self.book = SwapBook(sandbox.world)
        sandbox.world.datasets["studio_swap"] = self.book
        self._cache: dict[tuple, list[Order]] = {}
        self._cache_version = -1

    def routes(self) -> list[BaseRoute]:
        return [Route("/swaps/orders", self._list, methods=["GET"])]

    def error_body(self, kind: str) -> tuple[int, dict]:
        if kind == "auth":
            return 401, error_body("unauthorized", "Invalid or missing API key")
        if kind == "429":
            return 429, error_body("rate_limited", "Too many requests")
        return 200, error_body("rate_limited", "Rate limit exceeded, retry later")

    def env(self, base_url: str) -> dict[str, str]:
        return {"ONLYTRAFFIC_STUDIO_BASE_URL": base_url, "ONLYTRAFFIC_STUDIO_API_KEY": API_KEY}

    @staticmethod
    def records_in(body: Any) -> list[dict]:
        """The swap orders of a list response (for schema drift)."""
        data = body.get("data") if isinstance(body, dict) else None
        return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []

    async def _list(self, request: Request) -> Response:
        self.sandbox.stats.request(ROUTE, str(request.query_params))
        if request.headers.get("x-api-key") != API_KEY:
            status, body = self.error_body("auth")
            return json_response(body, status)
        try:
            query = _parse(request.query_params)
        except ValueError as exc:
            return json_response(error_body("validation_error", str(exc)), 422)
        page, size = query.pop("page"), query.pop("page_size")
        if self.pagination_quirk == "ignore_page":
            page = 1
        with self.sandbox.world.lock:
            self.sandbox.churn.before_list(self.book)  # a live list moves between two requests
            orders = self._select(query)
            if query["status"]:
                orders = self.sandbox.churn.arrange(self.book, query["status"], orders)
            total = len(orders)
            chosen = orders[(page - 1) * size : page * size]
            data = [self.book.render(o) for o in chosen]
        self.sandbox.stats.served(ROUTE, query["status"] or "all", len(data))
        total_pages = math.ceil(total / size)
        if self.pagination_quirk == "has_next_always":
            total_pages = max(total_pages, page + 1)
        return json_response(
            {
                "success": True,
                "data": data,
                "pagination": {
                    "page": page,
                    "page_size": size,
                    "total": total,
                    "total_pages": total_pages,
                    "has_next": page < total_pages,
                },
            }
        )

    def _select(self, q: dict[str, Any]) -> list[Order]:
        """The filtered, sorted list (cached until the book changes: pages are cheap slices)."""
        book = self.book
        if self._cache_version != book.version:
            self._cache.clear()
            self._cache_version = book.version
        key = tuple(sorted(q.items()))
        if key in self._cache:
            return self._cache[key]
        orders = book.listed(q["status"]) if q["status"] else list(book.orders)
        if q["order_id"] is not None:
            orders = [o for o in orders if o.order_id == q["order_id"]]
        if q["offer_id"] is not None:
            orders = [o for o in orders if o.extra["offer_id"] == q["offer_id"]]
        if q["of_account_id"] is not None:
            wanted = q["of_account_id"]
            orders = [o for o in orders if wanted in (s["account"] for s in o.extra["sides"].values())]
        if q["role"] is not None:
            offer = q["role"] == "offer"
            orders = [o for o in orders if o.extra["offer_mine"] == offer]
        if q["from"] is not None:
            orders = [o for o in orders if o.created.astimezone(UTC).date() >= q["from"]]
        if q["to"] is not None:
            orders = [o for o in orders if o.created.astimezone(UTC).date() <= q["to"]]
        orders = _sorted(orders, q["sort"], book)
        if len(self._cache) > 256:
            self._cache.clear()
        self._cache[key] = orders
        return orders


def _sorted(orders: list[Order], sort: str, book: SwapBook) -> list[Order]:
    field, direction = sort.rsplit("_", 1)
    desc = direction == "desc"
    if field == "created_at":
        return sorted(orders, key=lambda o: (o.created, o.n), reverse=desc)
    done = [o for o in orders if book.completed_at(o) is not None]
    running = [o for o in orders if book.completed_at(o) is None]
    done.sort(key=lambda o: (book.completed_at(o), o.n), reverse=desc)
    running.sort(key=lambda o: (o.created, o.n), reverse=True)
    return done + running  # NULL completed_at always last, whatever the direction


def _parse(params) -> dict[str, Any]:
    """Validate the query string the way the API does (422 with a message naming the field)."""
    unknown_enum = {
        "status": ("waiting", "accepted", "rejected", "completed", "cancelled"),
        "role": ROLES,
        "sort": SORTS,
    }
    q: dict[str, Any] = {
        "page": _int(params.get("page", "1"), "page", 1),
        "page_size": _int(params.get("page_size", str(DEFAULT_PAGE_SIZE)), "page_size", 1, MAX_PAGE_SIZE),
        "order_id": params.get("order_id") or None,
        "offer_id": _int(params["offer_id"], "offer_id") if params.get("offer_id") else None,
        "of_account_id": _int(params["of_account_id"], "of_account_id") if params.get("of_account_id") else None,
        "from": _date(params["from"], "from") if params.get("from") else None,
        "to": _date(params["to"], "to") if params.get("to") else None,
    }
    for name, allowed in unknown_enum.items():
        value = params.get(name) or None
        if value is not None and value not in allowed:
            raise ValueError(f"{name} must be one of: {', '.join(allowed)}")
        q[name] = value
    q["sort"] = q["sort"] or "created_at_desc"
    if q["from"] and q["to"] and q["from"] > q["to"]:
        raise ValueError("from must be on or before to")
    return q


def _int(value: Any, name: str, minimum: int | None = None, maximum: int | None = None) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer") from None
    if (minimum is not None and number < minimum) or (maximum is not None and number > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise ValueError(f"{name} must be {bounds}")
    return number


def _date(value: str, name: str) -> date:
    try:
        if len(value) != 10:
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name} must be a date (YYYY-MM-DD)") from None
