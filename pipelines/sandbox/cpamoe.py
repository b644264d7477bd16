"""Simulated cpa.moe affiliate API: ``add.json`` and ``list.json`` under ``/cpamoe/ext/``.

Faithful to ``shared/api-docs/cpamoe-affiliate-api.md``:

- credentials ride in the query string as ``id={user}-{key}``; add.json's lead fields may come as
  a form body or a JSON body (``Content-Type: application/json``); list.json reads ``ids`` from
  the query string ONLY, where the docs put it (``list.json?id={user}-{key}&ids=1,2,3``): ids in a
  body alone are not seen, so a client relying on them gets ``noid``;
- every error is ``{"status": "error", "error": "<code>"}`` inside an HTTP 200 body, with the
  documented codes (nooffer, noid, nophone, duplicate, offer, security, ban, traffic, db);
- ``add.json`` answers ``{"status": "ok", "id": <cpa.moe's id>, "uid": <our id>}``: in add.json
  ``uid`` is the id on *our* side (generated for ``id=auto``) and ``id`` cpa.moe's, the reverse of
  list.json, where ``id`` is ours and ``uid`` theirs;
- ``list.json`` returns only the asked ids that exist, as an object keyed by our id (the default)
  or as a list (``LeadBook.response_form = "list"``); nothing found is ``[]`` (what PHP encodes
  an empty array as); ``reason`` only for status 5, ``count`` once goods are approved, ``comment``
  when there is one.

Assumptions where the docs are silent (the least convenient plausible answer, never a 500): a
wrong or missing key gets ``security`` in an HTTP 200 body; list.json gets ``noid`` (the only
documented code about ids) for no ids, for more than 50 ids (the docs say "better don't send more
than 50": the whole request is refused, counted in ``LeadBook.oversized_requests``) and for an id
that is empty (``1,,2``), longer than 64 characters or not made of ``A-Za-z0-9._-`` (the whole
request is refused, not just that id); a missing ``ip`` is not rejected (no error code exists for
it). Leads move wait (1 new, 2 processing, 3 callback) -> hold (4) ->
approve (6 packing .. 9 arrived) -> 10 completed or 11 return, or end as 5 cancelled (stage
cancel, or trash for a "(trash)" reason) or 12 deleted (stage trash); 5, 10, 11 and 12 are final.

Leads also move while a client polls (``LeadBook.move_share``): on that share of list.json
requests one open lead moves one status on before the answer, preferably a lead an earlier request
was already answered about, so a poll's reading can be stale by the time it commits.
``LeadBook.record_changes`` logs every change (time, id, status, stage) for tests to compare
histories with.
"""

from __future__ import annotations

import heapq
import random
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from pipelines.sandbox.server import Sandbox, json_response
from pipelines.sandbox.world import World

USER_ID = "4242"
API_KEY = "sandbox-cpamoe-key-7c1e9b"
DATASET = "cpamoe_leads"

OFFERS = frozenset(range(200, 240))  # 217 is the docs' example offer
BLOCKED_OFFERS = frozenset({239})  # -> error "traffic"
BANNED_PHONES = frozenset({"70000000000"})  # -> error "ban"
BANNED_IPS = frozenset({"6.6.6.6"})

TRASH_REASONS = (1, 3, 5, 6, 7, 8, 11, 12, 13, 14)
CANCEL_REASONS = (2, 4, 9, 10, 15)
FINAL_STATUSES = frozenset({5, 10, 11, 12})
# Leads are created over the last few weeks (at most the world's history): cpa.moe traffic is
# high-volume and short-lived, and it leaves a good share of leads still open at the anchor.
LEAD_HISTORY_DAYS = 21

# status -> (mean hours until the next change, [(weight, next status or "cancel"/"trash")])
TRANSITIONS: dict[int, tuple[float, list[tuple[int, int | str]]]] = {
    1: (8, [(60, 2), (10, 4), (10, "cancel"), (15, "trash"), (5, 12)]),
    2: (24, [(25, 3), (20, 4), (35, 6), (10, "cancel"), (10, "trash")]),
    3: (24, [(30, 2), (35, 6), (20, "cancel"), (15, "trash")]),
    4: (72, [(65, 6), (35, "cancel")]),
    6: (24, [(95, 7), (5, "cancel")]),
    7: (24, [(100, 8)]),
    8: (48, [(100, 9)]),
    9: (48, [(85, 10), (15, 11)]),
}
COMMENTS = ("Purr-purr-purr", "Call after 18:00", "Customer asked for a discount")
MAX_IDS = 50  # "Better don't send more that 50 IDs in one request": more are refused
ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")  # the ids a register accepts; others are refused


def stage_of(status: int, reason: int | None) -> str:
    if status in (1, 2, 3):
        return "wait"
    if status == 4:
        return "hold"
    if status == 5:
        return "trash" if reason in TRASH_REASONS else "cancel"
    if status == 12:
        return "trash"
    return "approve"


@dataclass(slots=True)
class Lead:
    n: int
    lead_id: str  # our id
    uid: int  # cpa.moe's id
    offer: int
    wm: int | None
    created: float  # epoch seconds (floats keep a large world quick to generate)
    count: int
    status: int = 1
    reason: int | None = None
    comment: str | None = None
    stage_override: str | None = None  # tests: an undocumented stage value
    next_at: float | None = None  # epoch seconds of the next change; None once final
    phone: str | None = None  # kept by cpa.moe, never served by list.json
    ip: str | None = None


def _render_id(lead_id: str) -> int | str:
    """Numeric ids come back as JSON numbers, as in the docs' examples."""
    return int(lead_id) if lead_id.isdigit() and not lead_id.startswith("0") and len(lead_id) < 18 else lead_id


class LeadBook:
    """Every lead that exists at cpa.moe, evolving hour by hour; the truth tests compare with."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.leads: list[Lead] = []
        self.by_id: dict[str, Lead] = {}
        self._queue: list[tuple[float, int]] = []  # (next change, n) of open leads
        self._auto = 0
        self.response_form = "object"  # or "list"
        self.extra_fields: dict[str, Any] = {}  # tests: fields a newer API version might add
        self.requests_by_id: Counter = Counter()  # how often list.json was asked for each id
        self.largest_request = 0
        self.oversized_requests = 0
        self.rejected_requests: Counter = Counter()  # why list.json refused a request -> how often
        # tests: the share of list.json requests on which one open lead moves one status on first
        self.move_share = 0.0
        self.moves: list[tuple[str, int, int]] = []  # (our id, status before, status after)
        self._move_requests = 0
        # tests: every change from now on, (epoch seconds, our id, status, stage)
        self.record_changes = False
        self.changes: list[tuple[float, str, int, str]] = []
        self._generate(world.scale.leads)

    # -- generation and time ---------------------------------------------------------------

    def _new_lead(self, rng: random.Random, lead_id: str, created: float, offer: int, wm: int | None) -> Lead:
        n = len(self.leads) + 1
        lead = Lead(
            n=n,
            lead_id=lead_id,
            uid=400_000 + n,
            offer=offer,
            wm=wm,
            created=float(int(created)),
            count=rng.choice((1, 1, 1, 2, 3)),
            comment=rng.choice(COMMENTS) if rng.random() < 0.2 else None,
        )
        self.leads.append(lead)
        self.by_id[lead_id] = lead
        return lead

    def _generate(self, count: int) -> None:
        world = self.world
        rng = world.rng("cpamoe", "initial")
        span = min(world.scale.history_days, LEAD_HISTORY_DAYS) * 86400
        anchor = world.anchor.timestamp()
        offers = sorted(OFFERS - BLOCKED_OFFERS)
        offsets = sorted((rng.uniform(0, span) for _ in range(count)), reverse=True)
        for seconds_ago in offsets:
            lead = self._new_lead(
                rng, str(700_000 + len(self.leads) + 1), anchor - seconds_ago, rng.choice(offers),
                rng.choice((None, 42, 43, 44)),
            )
            self._schedule(rng, lead, lead.created)
            while lead.next_at is not None and lead.next_at <= anchor:
                self._step(rng, lead)
            if lead.next_at is not None:
                heapq.heappush(self._queue, (lead.next_at, lead.n))

    def _schedule(self, rng: random.Random, lead: Lead, after: float) -> None:
        if lead.status in FINAL_STATUSES:
            lead.next_at = None
            return
        mean_hours = TRANSITIONS[lead.status][0]
        lead.next_at = float(int(after + rng.expovariate(1 / mean_hours) * 3600))

    def _step(self, rng: random.Random, lead: Lead) -> None:
        """Apply the lead's next change (at ``lead.next_at``) and schedule the one after."""
        at = lead.next_at
        assert at is not None
        choices = TRANSITIONS[lead.status][1]
        target = rng.choices([t for _, t in choices], weights=[w for w, _ in choices])[0]
        if target == "cancel":
            lead.status, lead.reason = 5, rng.choice(CANCEL_REASONS)
        elif target == "trash":
            lead.status, lead.reason = 5, rng.choice(TRASH_REASONS)
        else:
            lead.status = int(target)
        self._schedule(rng, lead, at)
        if self.record_changes:
            self.changes.append((at, lead.lead_id, lead.status, self.stage(lead)))

    def advance(self, world: World, until: datetime) -> None:
        rng = world.step_rng("cpamoe", "step", until=until)
        limit = until.timestamp()
        while self._queue and self._queue[0][0] <= limit:
            at, n = heapq.heappop(self._queue)
            lead = self.leads[n - 1]
            if lead.next_at != at:
                continue  # stale entry
            self._step(rng, lead)
            if lead.next_at is not None:
                heapq.heappush(self._queue, (lead.next_at, lead.n))

    # -- the API -----------------------------------------------------------------------------

    def stage(self, lead: Lead) -> str:
        return lead.stage_override or stage_of(lead.status, lead.reason)

    def render(self, lead: Lead) -> dict[str, Any]:
        record: dict[str, Any] = {"id": _render_id(lead.lead_id), "uid": lead.uid}
        if lead.wm is not None:
            record["src"] = lead.wm
        record["stage"] = self.stage(lead)
        record["status"] = lead.status
        if lead.status == 5 and lead.reason is not None:
            record["reason"] = lead.reason
        if 6 <= lead.status <= 11:
            record["count"] = lead.count
        if lead.comment:
            record["comment"] = lead.comment
        record.update(self.extra_fields)
        return record

    def truth(self) -> dict[str, dict[str, Any]]:
        """Our lead id -> the record list.json would serve now."""
        with self.world.lock:
            return {lead.lead_id: self.render(lead) for lead in self.leads}

    def is_final(self, lead_id: str) -> bool:
        lead = self.by_id[lead_id]
        return self.stage(lead) in ("cancel", "trash") or lead.status in (10, 11, 12)

    def _move_one(self) -> None:
        """On ``move_share`` of the requests, move one open lead one status on, now.

        An open lead an earlier request was already answered about is preferred: its answer is
        then stale before the client commits, the case a poll must survive.
        """
        if self.move_share <= 0:
            return
        self._move_requests += 1
        rng = self.world.rng("cpamoe", "move", self._move_requests)
        if rng.random() >= self.move_share:
            return
        served = [i for i in self.requests_by_id if i in self.by_id and self.by_id[i].next_at is not None]
        candidates = served or [lead.lead_id for lead in self.leads if lead.next_at is not None]
        if not candidates:
            return
        lead = self.by_id[rng.choice(sorted(candidates))]
        before = lead.status
        lead.next_at = self.world.now.timestamp()
        self._step(rng, lead)
        if lead.next_at is not None:
            heapq.heappush(self._queue, (lead.next_at, lead.n))
        self.moves.append((lead.lead_id, before, lead.status))

    def list(self, ids: list[str]) -> Any:
        with self.world.lock:
            self._move_one()
            self.requests_by_id.update(ids)
            self.largest_request = max(self.largest_request, len(ids))
            found = [self.render(self.by_id[i]) for i in ids if i in self.by_id]
        if not found:
            return []
        if self.response_form == "list":
            return found
        return {str(r["id"]): r for r in found}

    def refuse(self, parts: list[str]) -> str | None:
        """Why list.json refuses these comma-separated ids (None: it answers), counted by reason."""
        if not parts or parts == [""]:
            problem = "no ids"
        elif len(parts) > MAX_IDS:
            problem = "more than 50 ids"
        elif not all(ID_RE.fullmatch(part) for part in parts):
            problem = "malformed id"
        else:
            return None
        with self.world.lock:
            self.rejected_requests[problem] += 1
            if problem == "more than 50 ids":
                self.oversized_requests += 1
                self.largest_request = max(self.largest_request, len(parts))
        return problem

    def add(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Validate like cpa.moe and create the lead; the error codes are the documented ones."""
        offer_raw = str(fields.get("offer") or "").strip()
        lead_id = str(fields.get("id") or "").strip()
        phone = str(fields.get("phone") or "").strip()
        ip = str(fields.get("ip") or "").strip()
        if not offer_raw:
            return _error("nooffer")
        if not lead_id:
            return _error("noid")
        if not phone or not phone.isdigit():
            return _error("nophone")
        if not offer_raw.isdigit() or int(offer_raw) not in OFFERS:
            return _error("offer")
        offer = int(offer_raw)
        if offer in BLOCKED_OFFERS:
            return _error("traffic")
        if phone in BANNED_PHONES or ip in BANNED_IPS:
            return _error("ban")
        with self.world.lock:
            if lead_id.lower() == "auto":
                self._auto += 1
                lead_id = str(900_000_000 + self._auto)
            elif lead_id in self.by_id:
                return _error("duplicate")
            if any(lead.phone == phone and lead.offer == offer for lead in self.leads[-5000:]):
                return _error("duplicate")
            wm = str(fields.get("wm") or "").strip()
            rng = self.world.rng("cpamoe", "add", lead_id)
            lead = self._new_lead(rng, lead_id, self.world.now.timestamp(), offer, int(wm) if wm.isdigit() else None)
            lead.phone, lead.ip = phone, ip
            lead.comment = str(fields["comm"]) if fields.get("comm") else None
            self._schedule(rng, lead, lead.created)
            heapq.heappush(self._queue, (lead.next_at, lead.n))
        return {"status": "ok", "id": lead.uid, "uid": _render_id(lead.lead_id)}


def _error(code: str) -> dict[str, str]:
    return {"status": "error", "error": code}


# The fields schema-drift tests change in list.json leads (see pipelines.sandbox.faults.DriftPlan).
DRIFT_FIELDS = {
    "/ext/list.json": {
        "key": "id", "optional": "comment", "typed": ("status", {"code": 5}), "enum": ("stage", "review"),
    },
}


class CpamoeApi:
    """The cpa.moe affiliate API: ``/ext/add.json`` and ``/ext/list.json``."""

    name = "cpamoe"
    prefix = "/cpamoe"
    pagination = None  # list.json answers for the ids asked: there are no pages
    private_params = ("id",)  # the query's id is {user}-{key}: never recorded

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.book = LeadBook(sandbox.world)
        sandbox.world.datasets[DATASET] = self.book

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/ext/add.json", self._add, methods=["GET", "POST"]),
            Route("/ext/list.json", self._list, methods=["GET", "POST"]),
        ]

    def error_body(self, kind: str) -> tuple[int, dict]:
        if kind == "auth":
            return 200, _error("security")
        if kind == "429":
            return 429, _error("db")
        return 200, _error("db")  # error_200: cpa.moe's internal error, worth retrying

    def env(self, base_url: str) -> dict[str, str]:
        return {"CPAMOE_BASE_URL": base_url, "CPAMOE_USER_ID": USER_ID, "CPAMOE_API_KEY": API_KEY}

    @staticmethod
    def records_in(body: Any) -> list[dict]:
        """The leads of a list.json answer, object or list form (add.json answers have none)."""
        if isinstance(body, list):
            return [r for r in body if isinstance(r, dict)]
        if isinstance(body, dict) and body.get("status") is None:
            return [r for r in body.values() if isinstance(r, dict)]
        return []

    @staticmethod
    def _authorized(request: Request) -> bool:
        return request.query_params.get("id") == f"{USER_ID}-{API_KEY}"

    async def _add(self, request: Request) -> Response:
        self.sandbox.stats.request("cpamoe/add", "")  # the query holds the key: not recorded
        if not self._authorized(request):
            return json_response(_error("security"))
        body = self.book.add(await _body_fields(request))
        self.sandbox.stats.served("cpamoe/add", body["status"], 1)
        return json_response(body)

    async def _list(self, request: Request) -> Response:
        # a body is not read: the docs put ids in the query string (a repeated ``ids``: the last)
        raw_ids = request.query_params.get("ids")
        parts = raw_ids.split(",") if raw_ids is not None else []  # " 2" is malformed, not "2"
        ids = list(dict.fromkeys(parts))
        self.sandbox.stats.request("cpamoe/list", f"ids={len(ids)}")
        if not self._authorized(request):
            return json_response(_error("security"))
        problem = self.book.refuse(parts)
        if problem is not None:
            return json_response(_error("noid"))
        body = self.book.list(ids)
        self.sandbox.stats.served("cpamoe/list", "asked", len(ids))
        self.sandbox.stats.served("cpamoe/list", "returned", len(body))
        return Response(orjson.dumps(body), media_type="application/json")


async def _body_fields(request: Request) -> dict[str, Any]:
    """Form fields or JSON body fields (the docs allow both)."""
    raw = await request.body()
    if not raw:
        return {}
    if "application/json" in request.headers.get("content-type", ""):
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return {}
        return body if isinstance(body, dict) else {}
    return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
