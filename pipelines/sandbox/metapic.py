"""Simulated Metapic API v2: campaigns (offers), their participants, participants' statistics.

Faithful to ``shared/api-docs/metapic-api-v2.md`` where it speaks:

- ``Authorization: <token>``; a wrong token gets HTTP 401 ``{"message": "Unauthenticated."}``.
- ``GET /v2/offers``: ``created_by`` is required (Laravel 422 ``{"message", "errors"}`` without it);
  ``statuses[]`` must be among deleted/ended/scheduled/paused/active and, when omitted, only
  *active* offers are listed; ``size`` at most 100 (default 20); ``include[]`` adds
  ``traffic_sources_costs`` (``cpc`` in minor units, ``cpc_v2.amount`` in currency units) and the
  store (``store_name``, ``currency``). Filters are read from the query string or, as the docs'
  example requests do, from a JSON body (the body wins, as in Laravel).
- ``GET /v2/offers/{id}/participants`` and ``.../participants-stats``: Laravel pages
  (``data``/``links``/``meta``); participants may have no ``id``, no ``user_id``, and be known only
  by ``pre_registered_identifier`` or ``pre_registered_email``; stats need ``start_date`` and
  ``end_date`` (``Y-m-d``) and aggregate clicks over that range.
- Every response carries ``x-ratelimit-limit``/``x-ratelimit-remaining`` (the only rate-limit
  headers the docs show); over the limit (300 per 60 s by default, a fixed window from the first
  request, as Laravel's throttle) the answer is 429 with ``x-ratelimit-remaining: 0``. The docs
  promise neither ``Retry-After`` nor ``x-ratelimit-reset``, so the 429 carries them only when
  :attr:`MetapicApi.retry_after_on_limit` is switched on (off by default, like
  ``FaultPlan.retry_after_on`` for injected faults): a client must find the window's end itself.

Assumptions where the docs are silent: offers also carry ``valid_from``/``valid_until``
(``Y-m-d H:i:s``, UTC); lists are ordered by id (offers) and join order (participants); the page
size of the participant lists is ``size`` too (default 10, the docs' ``per_page``); a participant
without id or user shows its pre-registered identifier (or e-mail) as ``display_name``; ``active``
on participants-stats filters to participants with (true) or without (false) clicks in the range;
participants and clicks freeze when a campaign ends or is deleted; a day's clicks are counted when
the campaign was active at the start of that (UTC) day. As time advances, now and then a
pre-registered participant of a campaign not yet frozen signs up (gains ``id`` and ``user_id``,
keeps serving its pre-registered identifier or e-mail, ``display_name`` becomes null; the docs show
no sign-up, so the least convenient shape) and, more rarely, one leaves the list for good. No doc
shows a participant with nothing to identify it: there are none unless :meth:`set_keyless` asks.
:meth:`MetapicApi.set_churn` makes lists change while they are read.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pipelines.sandbox.server import Sandbox
from pipelines.sandbox.world import World

ACCESS_TOKEN = "sandbox-metapic-token-7c21e9"
USER_ID = 4242
OFFER_STATUSES = ("deleted", "ended", "scheduled", "paused", "active")
INCLUDES = ("trafficSourcesCosts", "store", "targets", "sharedBudget")
PARTICIPANT_STATUSES = ("suggestion", "open", "accepted", "product_sent", "have_received", "done", "store_denied")
CLICKING = frozenset({"accepted", "product_sent", "have_received", "done"})
SORTABLE = ("id", "created_at", "campaign_title", "valid_from", "valid_until")
STORES = ("Bins-Bechtelar", "Kuhn, Gulgowski and Koch", "Carroll-Bode", "Adams, McClure and Lind", "Koepp-Koss")
CURRENCIES = ("SEK", "EUR", "PLN", "USD", "NOK")
# The initial campaigns cycle through these fates so every status exists in even a tiny world.
FATES = ("active", "ended", "scheduled", "active", "paused", "ended", "deleted", "active")


def _ts(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value is not None else None


def _day_start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


@dataclass(slots=True)
class Participant:
    n: int  # global sequence number (stable identity inside the sandbox)
    id: int | None
    user_id: int | None
    identifier: str | None  # pre_registered_identifier
    email: str | None  # pre_registered_email
    display_name: str | None
    joined: datetime
    initial: str  # suggestion or open
    accepted: datetime | None = None
    denied: datetime | None = None
    product_sent: datetime | None = None
    have_received: datetime | None = None
    done: datetime | None = None
    payment: str | None = None  # paid on "done" for one-time-payment campaigns ("150.00")
    forced_status: str | None = None  # tests: a status the docs do not list
    signed_up: datetime | None = None  # a pre-registered creator who signed up: id and user_id from then on
    removed: datetime | None = None  # no longer listed from then on
    _clicks_cache: tuple[datetime, int] | None = None


@dataclass(slots=True)
class Offer:
    id: int
    created: datetime
    valid_from: datetime
    valid_until: datetime
    pause: tuple[datetime, datetime] | None
    deleted_at: datetime | None
    store_id: int
    currency: str
    campaign_title: str
    type: str
    token: str
    has_product_seeding: bool
    has_onetime_payment: bool
    costs: list[dict]
    participants: list[Participant] = field(default_factory=list)

    def status_at(self, t: datetime) -> str:
        if self.deleted_at is not None and t >= self.deleted_at:
            return "deleted"
        if t < self.valid_from:
            return "scheduled"
        if t >= self.valid_until:
            return "ended"
        if self.pause and self.pause[0] <= t < self.pause[1]:
            return "paused"
        return "active"

    @property
    def frozen_at(self) -> datetime:
        """Participants stop changing when the campaign ends or is deleted."""
        return min(self.valid_until, self.deleted_at or self.valid_until)

    @property
    def store_name(self) -> str:
        return STORES[self.store_id % len(STORES)]


class MetapicCampaigns:
    """Campaigns whose status is a function of time, and participants moving through statuses."""

    # Per participant of a live campaign and per day: the chance that a pre-registered one signs up,
    # and that one is removed from the list. Settable (tests raise them).
    signups_per_day = 0.08
    removals_per_day = 0.01

    def __init__(self, world: World) -> None:
        self.world = world
        self.offers: list[Offer] = []
        self.by_id: dict[int, Offer] = {}
        self._participants = 0
        self.keyless_every = 0  # see set_keyless
        rng = world.rng("metapic", "initial")
        for i in range(world.scale.offers):
            self._new_offer(rng, FATES[i % len(FATES)], world.anchor, active_rank=i // len(FATES))

    # -- generation ------------------------------------------------------------------------------

    def _new_offer(self, rng, fate: str, now: datetime, active_rank: int = 0) -> Offer:
        day = timedelta(days=1)
        history = self.world.scale.history_days
        pause = None
        deleted_at = None
        if fate == "active":
            valid_from = now - rng.uniform(2, 20) * day
            valid_until = now + (0.4 + 1.5 * active_rank + rng.uniform(0, 0.5)) * day
        elif fate == "ended":
            valid_until = now - rng.uniform(0.5, min(30, history / 3)) * day
            valid_from = valid_until - rng.uniform(7, min(25, history / 3)) * day
        elif fate == "scheduled":
            valid_from = now + rng.uniform(0.3, 2.5) * day
            valid_until = valid_from + rng.uniform(7, 30) * day
        elif fate == "paused":
            valid_from = now - rng.uniform(3, 15) * day
            pause = (now - rng.uniform(0.5, 2) * day, now + rng.uniform(0.5, 3) * day)
            valid_until = now + rng.uniform(5, 20) * day
        elif fate == "deleted":
            valid_from = now - rng.uniform(5, 15) * day
            valid_until = valid_from + rng.uniform(10, 30) * day
            deleted_at = now - rng.uniform(0.5, 3) * day
        else:  # "new": created now, starts soon
            valid_from = now + rng.uniform(0, 2) * day
            valid_until = valid_from + rng.uniform(7, 30) * day
            if rng.random() < 0.2:
                start = valid_from + rng.uniform(1, 4) * day
                pause = (start, start + rng.uniform(0.5, 3) * day)
            if rng.random() < 0.08:
                deleted_at = valid_from + rng.uniform(0, 20) * day
        created = now if fate == "new" else min(valid_from, now) - rng.uniform(0, 3) * day
        n = len(self.offers) + 1
        cpc = rng.randint(1, 250)  # minor units
        currency = CURRENCIES[rng.randrange(len(CURRENCIES))]
        general = {
            "id": 200 + 2 * n,
            "source": 0,
            "source_name": "General",
            "cpc": cpc,
            "cpc_v2": {"amount": f"{cpc / 100:.2f}", "currency": currency},
            "cpa": round(rng.uniform(0.01, 0.25), 2),
            "currency": currency,
        }
        if n % 4 == 2:  # a legacy campaign: minor units only
            del general["cpc_v2"]
        costs = [general]
        if n % 3 == 0:  # a second traffic source, listed first: the "General" one is the offer's
            other = rng.randint(1, 400)
            costs.insert(0, {
                "id": 201 + 2 * n, "source": 1, "source_name": "Instagram", "cpc": other,
                "cpc_v2": {"amount": f"{other / 100:.2f}", "currency": currency},
                "cpa": round(rng.uniform(0.01, 0.25), 2), "currency": currency,
            })
        offer = Offer(
            id=600 + n,
            created=created.replace(microsecond=0),
            valid_from=valid_from.replace(microsecond=0),
            valid_until=valid_until.replace(microsecond=0),
            pause=pause,
            deleted_at=deleted_at.replace(microsecond=0) if deleted_at else None,
            store_id=1760 + rng.randrange(40),
            currency=currency,
            campaign_title=f"Campaign {n}",
            type="suggestion" if n % 5 == 0 else "standard",
            token=f"tok{n:05d}{rng.randrange(16**6):06x}",
            has_product_seeding=rng.random() < 0.5,
            has_onetime_payment=rng.random() < 0.4,
            costs=costs,
        )
        self.offers.append(offer)
        self.by_id[offer.id] = offer
        per_offer = self.world.scale.participants_per_offer
        for _ in range(rng.randint(max(1, per_offer // 2), per_offer + per_offer // 2)):
            offer.participants.append(self._new_participant(rng, offer))
        offer.participants.sort(key=lambda p: (p.joined, p.n))
        return offer

    def _new_participant(self, rng, offer: Offer) -> Participant:
        self._participants += 1
        n = self._participants
        hour = timedelta(hours=1)
        span = max((offer.frozen_at - offer.created).total_seconds(), 3600)
        joined = offer.created + timedelta(seconds=rng.uniform(0, span) * 0.8)
        kind = rng.random()
        ident: dict[str, Any] = {"id": None, "user_id": None, "identifier": None, "email": None, "display_name": None}
        if self.keyless_every and n % self.keyless_every == 0:
            pass  # nothing identifies this participant (no doc shows one): only with the switch on
        elif kind < 0.5:
            ident.update(id=50_000 + n, user_id=3000 + n, display_name=f"creator{n}" if n % 2 else None)
        elif kind < 0.72:
            ident.update(user_id=3000 + n)
        elif kind < 0.88:
            ident.update(identifier=f"creator.{n}", display_name=f"creator.{n}")
        else:
            email = f"Creator.{n}@Example.com"
            ident.update(email=email, display_name=email)
        p = Participant(n=n, joined=joined.replace(microsecond=0), initial="suggestion" if rng.random() < 0.5 else "open", **ident)
        decided = joined + rng.expovariate(1 / 24) * hour
        if rng.random() < 0.12:
            p.denied = decided
            return p
        p.accepted = decided
        step = decided
        if offer.has_product_seeding:
            p.product_sent = step = step + rng.expovariate(1 / 24) * hour
            p.have_received = step = step + rng.expovariate(1 / 48) * hour
        if rng.random() < 0.6:
            p.done = step + rng.expovariate(1 / 120) * hour
            if offer.has_onetime_payment:
                p.payment = f"{rng.choice((50, 100, 150, 250)):.2f}"
        return p

    def set_keyless(self, every: int = 40) -> list[Participant]:
        """Switch for quarantine tests: every ``every``-th participant, existing and future, has
        nothing to key it by (no id, user_id, pre-registered identifier, e-mail or display name).
        No doc shows such a participant, so the default world has none. Returns those changed."""
        self.keyless_every = every
        changed = [p for o in self.offers for p in o.participants if every and p.n % every == 0]
        for p in changed:
            p.id = p.user_id = p.identifier = p.email = p.display_name = None
            p.signed_up = None
        return changed

    # -- time passes -----------------------------------------------------------------------------

    def advance(self, world: World, until: datetime) -> None:
        """Campaign and participant statuses are functions of time; new campaigns arrive, and now
        and then a pre-registered participant of a live campaign signs up or one is removed."""
        rng = world.step_rng("metapic", "step", until=until)
        hours = (until - world.now).total_seconds() / 3600
        per_hour = world.scale.offers / (world.scale.history_days * 24)
        expected = per_hour * hours
        if rng.random() < expected - math.floor(expected):
            expected += 1
        for _ in range(int(expected)):
            self._new_offer(rng, "new", world.now + timedelta(hours=rng.uniform(0, hours)))
        self._evolve_participants(world, until)

    def _evolve_participants(self, world: World, until: datetime) -> None:
        """Sign-ups (the creator gains ``id`` and ``user_id``, keeps serving its pre-registered
        identifier or e-mail, ``display_name`` becomes null) and removals, among the participants
        of campaigns whose list can still change, at a random second of the step (seeded)."""
        start = world.now
        seconds = (until - start).total_seconds()
        if seconds <= 0:
            return
        rng = world.step_rng("metapic", "participants", until=until)
        live = [o for o in self.offers if o.created <= start and until <= o.frozen_at]
        members = [p for o in live for p in self.joined(o)]
        pre = [p for p in members if p.signed_up is None and p.id is None and (p.identifier or p.email)]
        for people, rate, attr in ((pre, self.signups_per_day, "signed_up"), (members, self.removals_per_day, "removed")):
            expected = len(people) * rate * seconds / 86400
            count = int(expected) + (1 if rng.random() < expected - int(expected) else 0)
            for p in rng.sample(people, min(count, len(people))):
                at = start + timedelta(seconds=rng.uniform(0, seconds))
                setattr(p, attr, min(at.replace(microsecond=0) + timedelta(seconds=1), until))

    def sign_up(self, p: Participant, at: datetime | None = None) -> None:
        """A pre-registered participant signs up (now, unless ``at``)."""
        p.signed_up = at or self.now

    def remove(self, p: Participant, at: datetime | None = None) -> None:
        """A participant leaves the list (now, unless ``at``)."""
        p.removed = at or self.now

    def identity(self, p: Participant) -> tuple[int | None, int | None, str | None]:
        """``id``, ``user_id`` and ``display_name`` as served now: a signed-up creator has an id and
        a user id, and no display name."""
        if p.signed_up is not None and p.signed_up <= self.now:
            return 50_000 + p.n, 3000 + p.n, None
        return p.id, p.user_id, p.display_name

    # -- reading ---------------------------------------------------------------------------------

    @property
    def now(self) -> datetime:
        return self.world.now

    def participant_status(self, offer: Offer, p: Participant, t: datetime) -> str:
        if p.forced_status:
            return p.forced_status
        t = min(t, offer.frozen_at)
        for when, status in ((p.done, "done"), (p.have_received, "have_received"), (p.product_sent, "product_sent"), (p.accepted, "accepted"), (p.denied, "store_denied")):
            if when is not None and t >= when:
                return status
        return p.initial

    def daily_clicks(self, offer: Offer, p: Participant, day: date) -> int:
        """Clicks of one participant on one UTC day (so far, for today); none after the offer ended."""
        start = _day_start(day)
        now = min(self.now, offer.frozen_at)
        if start > now or start < p.joined.replace(hour=0, minute=0, second=0) or offer.status_at(start) != "active":
            return 0
        if self.participant_status(offer, p, start) not in CLICKING:
            return 0
        full = hash((self.world.seed, offer.id, p.n, day.toordinal())) % 90
        if now < start + timedelta(days=1):
            return int(full * (now - start).total_seconds() / 86400)
        return full

    def clicks_between(self, offer: Offer, p: Participant, first: date, last: date) -> int:
        first = max(first, p.joined.date())
        last = min(last, self.now.date(), offer.frozen_at.date())
        days = (last - first).days
        return sum(self.daily_clicks(offer, p, first + timedelta(days=i)) for i in range(days + 1)) if days >= 0 else 0

    def total_clicks(self, offer: Offer, p: Participant) -> int:
        cached = p._clicks_cache
        if cached is None or cached[0] != self.now:
            p._clicks_cache = (self.now, self.clicks_between(offer, p, p.joined.date(), self.now.date()))
        return p._clicks_cache[1]

    def joined(self, offer: Offer, until: datetime | None = None) -> list[Participant]:
        """Participants listed: joined by ``until`` (default now), not removed by now."""
        limit = min(self.now, until) if until is not None else self.now
        return [p for p in offer.participants if p.joined <= limit and (p.removed is None or p.removed > self.now)]

    def render_offer(self, offer: Offer, includes: set[str]) -> dict[str, Any]:
        key = f"dXBsb2Fkcy9vZmZlci97b2ZmZXIuaWR9{offer.id}"
        record: dict[str, Any] = {
            "id": offer.id,
            "campaign_title": offer.campaign_title,
            "campaign_text": f"Join campaign {offer.id} and earn per click.",
            "has_product_seeding": offer.has_product_seeding,
            "has_onetime_payment": offer.has_onetime_payment,
            "status": offer.status_at(self.now),
            "image_url": f"https://media.metapic.com/insecure/rs:fill:800:500/g:sm/{key}",
            "image": {"key": key, "url": f"https://media.metapic.com/{key}", "base_url": "https://media.metapic.com", "base64": key},
            "store_id": offer.store_id,
            "token": offer.token,
            "type": offer.type,
            "valid_from": _ts(offer.valid_from),
            "valid_until": _ts(offer.valid_until),
        }
        if "store" in includes:
            record.update(store_name=offer.store_name, store_logo_url=None, store_logo=None, currency=offer.currency)
        if "trafficSourcesCosts" in includes:
            record["traffic_sources_costs"] = offer.costs
        return record

    def render_participant(self, offer: Offer, p: Participant) -> dict[str, Any]:
        pid, user_id, display_name = self.identity(p)
        record: dict[str, Any] = {
            "id": pid,
            "offer_id": offer.id,
            "user_id": user_id,
            "display_name": display_name,
            "clicks": self.total_clicks(offer, p),
            "status": self.participant_status(offer, p, self.now),
        }
        if p.identifier is not None:
            record["pre_registered_identifier"] = p.identifier
        if p.email is not None:
            record["pre_registered_email"] = p.email
        status = record["status"]
        record["todo"] = None
        record["payment_amount"] = p.payment if status == "done" else None
        return record

    def render_stats(self, offer: Offer, p: Participant, first: date, last: date) -> dict[str, Any]:
        clicks = self.clicks_between(offer, p, first, last)
        links = sum(
            hash((self.world.seed, 7919, offer.id, p.n, (first + timedelta(days=i)).toordinal())) % 3
            for i in range((last - first).days + 1)
            if self.daily_clicks(offer, p, first + timedelta(days=i))
        )
        cpc = next(c for c in offer.costs if c["source"] == 0)["cpc"] / 100
        pid, user_id, display_name = self.identity(p)
        return {
            "id": pid,
            "user_id": user_id,
            "display_name": display_name,
            "clicks": clicks,
            "status": self.participant_status(offer, p, self.now),
            "links_created": links,
            "estimated_gp": round(clicks * cpc * 0.3, 2) if clicks else None,
            "estimated_earning_to_cost_ratio": round(1.1 + (offer.id % 7) / 10, 2) if clicks else None,
        }

    # -- truth for tests -------------------------------------------------------------------------

    def truth(self) -> list[dict[str, Any]]:
        """Every campaign as ``GET /v2/offers`` renders it with store and costs included."""
        return [self.render_offer(o, {"store", "trafficSourcesCosts"}) for o in self.offers if o.created <= self.now]

    def participants_truth(self) -> list[dict[str, Any]]:
        """Every participant that has joined, as the participants list renders it."""
        return [self.render_participant(o, p) for o in self.offers for p in self.joined(o)]

    def stats_truth(self, offer_id: int, day: date) -> list[dict[str, Any]]:
        offer = self.by_id[offer_id]
        return [self.render_stats(offer, p, day, day) for p in self.joined(offer, _day_start(day) + timedelta(days=1))]


DOCUMENTED_RATE_LIMIT = 300  # requests per window: the docs' x-ratelimit-limit
DOCUMENTED_RATE_WINDOW = 60.0


class FixedWindowLimiter:
    """Laravel's throttle: ``limit`` hits per ``window`` seconds, the window opening on the first hit."""

    def __init__(self, api: MetapicApi) -> None:
        self.api = api
        self.started: float | None = None
        self.hits = 0
        self.max_hits = 0  # the most requests served in any one window
        self.rejected = 0
        self._lock = threading.Lock()

    def hit(self) -> tuple[dict[str, str], float | None]:
        """Headers for this response, and the seconds to wait when it must be refused (the
        undocumented ``Retry-After``/``x-ratelimit-reset`` only with ``retry_after_on_limit``)."""
        limit, window = self.api.rate_limit, self.api.rate_window
        with self._lock:
            now = time.monotonic()
            if self.started is None or now - self.started >= window:
                self.started, self.hits = now, 0
            if self.hits >= limit:
                self.rejected += 1
                wait = max(self.started + window - now, 0.0)
                headers = {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": "0"}
                if self.api.retry_after_on_limit:
                    headers["retry-after"] = str(math.ceil(wait))
                    headers["x-ratelimit-reset"] = str(math.ceil(time.time() + wait))
                return headers, wait
            self.hits += 1
            self.max_hits = max(self.max_hits, self.hits)
            return {"x-ratelimit-limit": str(limit), "x-ratelimit-remaining": str(limit - self.hits)}, None

    def reset(self) -> None:
        with self._lock:
            self.started, self.hits, self.max_hits, self.rejected = None, 0, 0, 0


class ValidationError(Exception):
    """A Laravel 422: ``errors`` maps each field to its messages."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("validation failed")
        self.errors = errors

    def body(self) -> dict[str, Any]:
        messages = [m for ms in self.errors.values() for m in ms]
        message = messages[0]
        if len(messages) > 1:
            more = len(messages) - 1
            message += f" (and {more} more error{'s' if more > 1 else ''})"
        return {"message": message, "errors": self.errors}


class NotFound(Exception):
    pass


# The fields schema-drift tests change (see pipelines.sandbox.faults.DriftPlan), per list.
# Participants may have no id: their drift key is the first identifying field present.
DRIFT_FIELDS = {
    "/v2/offers?": {
        "key": "id", "optional": "token", "typed": ("store_id", "store-17"),
        "enum": ("status", "archived"),
    },
    "/participants?": {
        "key": ("id", "user_id", "pre_registered_identifier", "display_name"), "optional": "display_name",
        "typed": ("clicks", "many"), "enum": ("status", "invited"),
    },
}


CHURN_KINDS = ("status", "signup", "remove")


@dataclass
class ChurnPlan:
    """A live participant list changing while it is read (issue 16): on a ``share`` (0..1) of
    participant-list requests, before answering, one participant of that campaign moves one
    status on, signs up, or is removed (one of ``kinds``, chosen by a generator seeded with
    ``seed``). The change is real: it stays in the truth afterwards. Campaigns whose list is
    frozen (ended, deleted) never change; ``offers`` limits churn to those campaign ids."""

    share: float = 0.0
    kinds: tuple[str, ...] = CHURN_KINDS
    seed: int = 11
    offers: tuple[int, ...] = ()

    @classmethod
    def from_dict(cls, data: dict) -> ChurnPlan:
        plan = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        plan.kinds = tuple(plan.kinds)
        plan.offers = tuple(int(o) for o in plan.offers)
        if set(plan.kinds) - set(CHURN_KINDS):
            raise ValueError(f"unknown churn kinds: {sorted(set(plan.kinds) - set(CHURN_KINDS))}")
        if not 0 <= plan.share <= 1:
            raise ValueError("share must be between 0 and 1")
        return plan


class MetapicApi:
    """The Metapic API v2 routes the warehouse reads. ``rate_limit``/``rate_window`` are settable,
    ``retry_after_on_limit`` adds ``Retry-After``/``x-ratelimit-reset`` to its 429s (the docs show
    neither: off by default); :meth:`set_churn` makes participant lists change while they are read."""

    name = "metapic"
    prefix = "/metapic"
    pagination = "laravel"

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.campaigns = MetapicCampaigns(sandbox.world)
        sandbox.world.datasets["metapic"] = self.campaigns
        self.rate_limit = DOCUMENTED_RATE_LIMIT
        self.rate_window = DOCUMENTED_RATE_WINDOW
        self.retry_after_on_limit = False
        self.limiter = FixedWindowLimiter(self)
        self.set_churn()
        if sandbox.metapic_rate_limit is not None:
            self.set_rate_limit(sandbox.metapic_rate_limit)

    def set_rate_limit(self, limit: int | None = None, window: float | None = None) -> None:
        """Serve ``limit`` requests per ``window`` seconds (advertised in ``x-ratelimit-limit``,
        enforced with 429) from a fresh window. The documented 300 per minute is the default (None);
        the bench lifts it to measure the engine rather than the wait."""
        limit = DOCUMENTED_RATE_LIMIT if limit is None else limit
        window = DOCUMENTED_RATE_WINDOW if window is None else window
        if int(limit) < 1 or float(window) <= 0:
            raise ValueError("the rate limit needs limit >= 1 and window > 0")
        self.rate_limit, self.rate_window = int(limit), float(window)
        self.limiter.reset()

    def set_churn(self, **plan: Any) -> None:
        """Switch list churn (a :class:`ChurnPlan` as keywords; no arguments: off). ``churned``
        counts the changes applied per kind, ``churn_log`` lists them (offer id, participant, kind)."""
        self.churn = ChurnPlan.from_dict(plan)
        self._churn_rng = random.Random(self.churn.seed)
        self.churned: dict[str, int] = {}
        self.churn_log: list[tuple[int, int, str]] = []

    def _maybe_churn(self, offer: Offer) -> None:
        """Apply one change to ``offer``'s participants before a list request is answered."""
        plan, rng, campaigns = self.churn, self._churn_rng, self.campaigns
        now = campaigns.now
        if plan.share <= 0 or now >= offer.frozen_at or (plan.offers and offer.id not in plan.offers):
            return
        if rng.random() >= plan.share:
            return
        members = campaigns.joined(offer)
        events = ("denied", "accepted", "product_sent", "have_received", "done")

        def next_event(p: Participant) -> str | None:
            later = [(getattr(p, e), e) for e in events if getattr(p, e) is not None and getattr(p, e) > now]
            return min(later)[1] if later and not p.forced_status else None

        candidates = {
            "status": [p for p in members if next_event(p)],
            "signup": [p for p in members if p.signed_up is None and p.id is None and (p.identifier or p.email)],
            "remove": members,
        }
        kinds = [k for k in plan.kinds if candidates[k]]
        if not kinds:
            return
        kind = rng.choice(kinds)
        p = rng.choice(candidates[kind])
        if kind == "status":
            setattr(p, next_event(p), now)  # type: ignore[arg-type]
            p._clicks_cache = None
        elif kind == "signup":
            campaigns.sign_up(p)
        else:
            campaigns.remove(p)
        self.churned[kind] = self.churned.get(kind, 0) + 1
        self.churn_log.append((offer.id, p.n, kind))

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/v2/offers", self._endpoint("offers", self._list_offers), methods=["GET"]),
            Route("/v2/offers/{offer_id:int}", self._endpoint("offer", self._show_offer), methods=["GET"]),
            Route("/v2/offers/{offer_id:int}/participants", self._endpoint("participants", self._list_participants), methods=["GET"]),
            Route("/v2/offers/{offer_id:int}/participants-stats", self._endpoint("participants-stats", self._participants_stats), methods=["GET"]),
        ]

    def error_body(self, kind: str) -> tuple[int, dict]:
        if kind == "auth":
            return 401, {"message": "Unauthenticated."}
        if kind == "429":
            return 429, {"message": "Too Many Attempts."}
        return 200, {"message": "Too Many Attempts."}  # an error inside an HTTP 200 body

    def env(self, base_url: str) -> dict[str, str]:
        return {"METAPIC_BASE_URL": base_url, "METAPIC_ACCESS_TOKEN": ACCESS_TOKEN, "METAPIC_USER_ID": str(USER_ID)}

    @staticmethod
    def records_in(body: Any) -> list[dict]:
        """The records of a Laravel page (for schema drift); an unwrapped detail has none."""
        data = body.get("data") if isinstance(body, dict) else None
        return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []

    # -- plumbing --------------------------------------------------------------------------------

    def _endpoint(self, kind: str, handler):
        async def endpoint(request: Request) -> Response:
            offer_id = request.path_params.get("offer_id")
            route = f"metapic/offers/{offer_id}/{kind}" if kind in ("participants", "participants-stats") else f"metapic/{kind}"
            self.sandbox.stats.request(route, str(request.query_params))
            headers, wait = self.limiter.hit()
            if wait is not None:
                return _json({"message": "Too Many Attempts."}, 429, headers)
            if request.headers.get("authorization") != ACCESS_TOKEN:
                return _json({"message": "Unauthenticated."}, 401, headers)
            params = await _params(request)
            try:
                with self.sandbox.world.lock:
                    body, served_key, served = handler(params, offer_id)
            except ValidationError as exc:
                return _json(exc.body(), 422, headers)
            except NotFound:
                return _json({"message": f"No query results for model [App\\Models\\Offer] {offer_id}"}, 404, headers)
            self.sandbox.stats.served(route, served_key, served)
            return _json(body, 200, headers)

        return endpoint

    def _offer(self, offer_id: int) -> Offer:
        offer = self.campaigns.by_id.get(offer_id)
        if offer is None or offer.created > self.campaigns.now:
            raise NotFound()
        return offer

    # -- handlers --------------------------------------------------------------------------------

    def _list_offers(self, params: dict[str, Any], _offer_id) -> tuple[dict, str, int]:
        errors: dict[str, list[str]] = {}
        created_by = _integer(params, "created_by", errors, required=True)
        statuses = _array(params, "statuses", errors, allowed=OFFER_STATUSES)
        includes = _array(params, "include", errors, allowed=INCLUDES)
        size = _integer(params, "size", errors, minimum=1, maximum=100)
        page = _integer(params, "page", errors, minimum=1)
        store_ids = _array(params, "store_ids", errors)
        sort = params.get("sort_by")
        if sort is not None:
            match = re.fullmatch(r"(\w+):(asc|desc)", str(sort))
            if not match or match.group(1) not in SORTABLE:
                errors["sort_by"] = ["The sort by field must follow the format column_name:direction."]
        if errors:
            raise ValidationError(errors)
        wanted = set(statuses) if statuses else {"active"}  # documented trap: default is active only
        now = self.campaigns.now
        offers = [o for o in self.campaigns.offers if o.created <= now and created_by == USER_ID]
        offers = [o for o in offers if o.status_at(now) in wanted]
        if store_ids:
            ids = {int(s) for s in store_ids if str(s).isdigit()}
            offers = [o for o in offers if o.store_id in ids]
        if sort is not None:
            column, direction = str(sort).split(":")
            attr = {"id": "id", "created_at": "created", "campaign_title": "campaign_title", "valid_from": "valid_from", "valid_until": "valid_until"}[column]
            offers.sort(key=lambda o: (getattr(o, attr), o.id), reverse=direction == "desc")
        body = laravel_page(offers, page or 1, size or 20, "/v2/offers", lambda o: self.campaigns.render_offer(o, set(includes or ())))
        return body, ",".join(sorted(wanted)), len(body["data"])

    def _show_offer(self, _params: dict[str, Any], offer_id: int) -> tuple[dict, str, int]:
        # Documented unwrapped (no "data"), store and costs always included.
        return self.campaigns.render_offer(self._offer(offer_id), {"store", "trafficSourcesCosts"}), "detail", 1

    def _list_participants(self, params: dict[str, Any], offer_id: int) -> tuple[dict, str, int]:
        offer = self._offer(offer_id)
        errors: dict[str, list[str]] = {}
        status = params.get("status")
        if status is not None and status not in PARTICIPANT_STATUSES:
            errors["status"] = ["The selected status is invalid."]
        size = _integer(params, "size", errors, minimum=1, maximum=100)
        page = _integer(params, "page", errors, minimum=1)
        if errors:
            raise ValidationError(errors)
        self._maybe_churn(offer)
        rows = [self.campaigns.render_participant(offer, p) for p in self.campaigns.joined(offer)]
        if status is not None:
            rows = [r for r in rows if r["status"] == status]
        query = params.get("query")
        if query:
            rows = [r for r in rows if query.lower() in str(r.get("display_name") or "").lower()]
        body = laravel_page(rows, page or 1, size or 10, f"/v2/offers/{offer_id}/participants", lambda r: r)
        return body, status or "all", len(body["data"])

    def _participants_stats(self, params: dict[str, Any], offer_id: int) -> tuple[dict, str, int]:
        offer = self._offer(offer_id)
        errors: dict[str, list[str]] = {}
        first = _date(params, "start_date", errors)
        last = _date(params, "end_date", errors)
        if first and last and last < first:
            errors["end_date"] = ["The end date field must be a date after or equal to start date."]
        size = _integer(params, "size", errors, minimum=1, maximum=100)
        page = _integer(params, "page", errors, minimum=1)
        active = params.get("active")
        if active is not None and str(active).lower() not in ("true", "false", "1", "0"):
            errors["active"] = ["The active field must be true or false."]
        if errors:
            raise ValidationError(errors)
        assert first is not None and last is not None
        members = self.campaigns.joined(offer, _day_start(last) + timedelta(days=1))
        rows = [self.campaigns.render_stats(offer, p, first, last) for p in members]
        if active is not None:
            want = str(active).lower() in ("true", "1")
            rows = [r for r in rows if (r["clicks"] > 0) == want]
        body = laravel_page(rows, page or 1, size or 10, f"/v2/offers/{offer_id}/participants-stats", lambda r: r)
        return body, f"{first}..{last}", len(body["data"])


def laravel_page(items: list, page: int, per_page: int, path: str, render) -> dict[str, Any]:
    """A Laravel API-resource page: ``data``, ``links`` and ``meta``."""
    total = len(items)
    last_page = max(1, math.ceil(total / per_page))
    chunk = items[(page - 1) * per_page : page * per_page]
    first_index = (page - 1) * per_page + 1 if chunk else None

    def url(n: int | None) -> str | None:
        return f"{path}?page={n}" if n is not None else None

    return {
        "data": [render(item) for item in chunk],
        "links": {
            "first": url(1),
            "last": url(last_page),
            "prev": url(page - 1) if page > 1 else None,
            "next": url(page + 1) if page < last_page else None,
        },
        "meta": {
            "current_page": page,
            "from": first_index,
            "last_page": last_page,
            "links": [
                {"url": url(page - 1) if page > 1 else None, "label": "&laquo; Previous", "active": False},
                *({"url": url(n), "label": str(n), "active": n == page} for n in range(1, min(last_page, 10) + 1)),
                {"url": url(page + 1) if page < last_page else None, "label": "Next &raquo;", "active": False},
            ],
            "path": path,
            "per_page": per_page,
            "to": first_index + len(chunk) - 1 if first_index is not None else None,
            "total": total,
        },
    }


def _json(body: Any, status: int, headers: dict[str, str]) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


async def _params(request: Request) -> dict[str, Any]:
    """Laravel's input: query string (``name[]=a&name[]=b`` or ``name[0]=a`` make arrays), then a
    JSON body, which wins."""
    params: dict[str, Any] = {}
    for key, value in request.query_params.multi_items():
        match = re.fullmatch(r"(\w+)\[(\d*)\]", key)
        if match:
            params.setdefault(match.group(1), [])
            if isinstance(params[match.group(1)], list):
                params[match.group(1)].append(value)
        else:
            params[key] = value
    raw = await request.body()
    if raw:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        if isinstance(body, dict):
            params.update(body)
    return params


def _label(name: str) -> str:
    return name.replace("_", " ")


def _integer(params, name, errors, *, required=False, minimum=None, maximum=None) -> int | None:
    value = params.get(name)
    if value is None or value == "":
        if required:
            errors[name] = [f"The {_label(name)} field is required."]
        return None
    try:
        number = int(str(value))
    except ValueError:
        errors[name] = [f"The {_label(name)} field must be an integer."]
        return None
    if minimum is not None and number < minimum:
        errors[name] = [f"The {_label(name)} field must be at least {minimum}."]
    if maximum is not None and number > maximum:
        errors[name] = [f"The {_label(name)} field must not be greater than {maximum}."]
    return number


def _array(params, name, errors, *, allowed=None) -> list | None:
    value = params.get(name)
    if value is None:
        return None
    if not isinstance(value, list):
        errors[name] = [f"The {_label(name)} field must be an array."]
        return None
    for i, item in enumerate(value):
        if allowed is not None and item not in allowed:
            errors[f"{name}.{i}"] = [f"The selected {name}.{i} is invalid."]
    return value


def _date(params, name, errors) -> date | None:
    value = params.get(name)
    if value is None or value == "":
        errors[name] = [f"The {_label(name)} field is required."]
        return None
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(value)):
            raise ValueError
        return date.fromisoformat(str(value))
    except ValueError:
        errors[name] = [f"The {_label(name)} field must match the format Y-m-d."]
        return None
