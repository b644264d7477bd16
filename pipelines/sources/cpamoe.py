"""cpa.moe affiliate API client: lead statuses (``list.json``), lead submission (``add.json``).

Docs: ``shared/api-docs/cpamoe-affiliate-api.md``. What matters for correctness:

- Credentials ride in the URL (``?id={user}-{key}``): the client redacts them from every message,
  and nothing here logs a URL. Requests are POST with form fields ("pure POST"). list.json's
  ``ids`` go in the query string, where the docs put them (``list.json?id={user}-{key}&ids=1,2,3``),
  and the same ids in the form body too (a server reading the POST fields finds them there); 50
  ids of at most 64 characters keep the URL near 3.3 kB, well within what servers accept.
- Every error is ``{"status": "error", "error": "<code>"}`` in an HTTP 200 body:
  :func:`cpamoe_envelope` turns it into :class:`CpamoeError` naming the code and the docs'
  description; ``db`` (internal error) is retried, ``security`` fails at once as ``AuthError``
  naming CPAMOE_USER_ID / CPAMOE_API_KEY. Never read as an empty page.
- The API only answers for ids we send, so the warehouse keeps the register of our leads
  (:mod:`pipelines.feeds.cpamoe_register`) and the feed (:mod:`pipelines.feeds.cpamoe`) picks the
  leads to ask about; :func:`fetch_statuses` asks for one batch of at most 50 ids and hands the
  whole response on as one :class:`~pipelines.page.Page`.
- ``add.json`` and ``list.json`` swap the meaning of ``id`` and ``uid``. Decision: ``lead_id`` is
  OUR id (list.json ``id`` / the object key; add.json ``uid``), ``uid`` is cpa.moe's internal id
  (list.json ``uid``; add.json ``id``).
- The list.json example in the docs is not valid JSON (``[ 1234 : {...} ]``): a success may be
  an object keyed by our id or a list of lead objects, whichever comes; an empty result may be
  ``[]``. The envelope accepts both and the page carries either form (the feed splits it in DuckDB).
- Customer phone, e-mail, IP, name, user agent and address (:data:`PERSONAL_FIELDS`) are dropped
  from a page before it is handed on; the feed's SQL removes them from every stored record too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import orjson

from pipelines.clock import utc_now
from pipelines.page import Page
from pipelines.sources.http import ApiClient, ApiError, AuthError

ADD_PATH = "/ext/add.json"
LIST_PATH = "/ext/list.json"
MAX_IDS_PER_REQUEST = 50  # "Better don't send more that 50 IDs in one request"
MAX_ID_LENGTH = 64
ID_PATTERN = "[A-Za-z0-9._-]+"  # regexp_full_match; no comma: ids are sent as ids=1,2,3

# -- the docs' vocabularies (one source of truth for the feed's SQL and the checks) -----------

ERROR_CODES: dict[str, str] = {
    "nooffer": "no offer ID present",
    "noid": "no lead ID present",
    "nophone": "no phone present",
    "duplicate": "the order with the same info had already been created",
    "offer": "offer was not found",
    "security": "user is banned (or the credentials are wrong)",
    "ban": "customer IP or phone is banned",
    "traffic": "offer is blocked",
    "db": "internal error at cpa.moe",
}
RETRYABLE_CODES = frozenset({"db"})

STAGE_NAMES: dict[str, str] = {
    "wait": "processing order",
    "hold": "order in hold stage",
    "approve": "order is approved",
    "cancel": "order is cancelled by generic reason",
    "trash": "order is cancelled as trash",
}
STATUS_NAMES: dict[int, str] = {
    1: "New order",
    2: "Processing",
    3: "Callback",
    4: "Hold",
    5: "Cancelled",
    6: "Packing",
    7: "Sending",
    8: "Transfer",
    9: "Arrived",
    10: "Completed",
    11: "Return",
    12: "Deleted",
}
REASON_NAMES: dict[int, str] = {
    1: "Incorrect phone (trash)",
    2: "Changed his mind",
    3: "Did not order (trash)",
    4: "Requires certificate",
    5: "Wrong GEO (trash)",
    6: "Errors or fakes (trash)",
    7: "Duplicate order (trash)",
    8: "Ordered elsewhere (trash)",
    9: "Expensive",
    10: "Not satisfied with delivery",
    11: "Could not get through (trash)",
    12: "Possibly fraud (trash)",
    13: "Speaks different language (trash)",
    14: "Product did not fit (trash)",
    15: "Offer disabled",
}
TRASH_REASONS = frozenset(code for code, name in REASON_NAMES.items() if name.endswith("(trash)"))
# Customer data add.json accepts; removed from any record before it is stored.
PERSONAL_FIELDS = ("phone", "email", "ip", "name", "ua", "addr", "street", "index")
PERSONAL_FIELDS_SET = frozenset(PERSONAL_FIELDS)


# -- the envelope ----------------------------------------------------------------------------


class CpamoeError(ApiError):
    """An error cpa.moe reported in its body; ``code`` is the documented code (``duplicate``...)."""

    @property
    def code(self) -> str | None:
        match = re.search(r"error '([^']*)'", self.reason)
        return match.group(1) if match else None

    @property
    def description(self) -> str:
        return ERROR_CODES.get(self.code or "", "undocumented error code")


def cpamoe_envelope(data: Any, http_status: int) -> None:
    """Raise for cpa.moe's error envelope; accept an add.json result or a list.json result."""
    if isinstance(data, list):
        return  # list.json: a list of leads (or [] when none was found)
    if not isinstance(data, dict):
        raise CpamoeError(f"expected a JSON object or list, got {type(data).__name__}")
    # A lead keyed "status"/"error" would have an object as its value: only strings are envelopes.
    status, error = data.get("status"), data.get("error")
    if status == "error" or (isinstance(error, str) and status is None):
        code = str(error if error is not None else "none")[:40]
        description = ERROR_CODES.get(code, "undocumented error code")
        message = f"error '{code}': {description}"
        if code == "security":
            raise AuthError(message)
        raise CpamoeError(message, retryable=code in RETRYABLE_CODES)


# -- the status poll ---------------------------------------------------------------------------

def fetch_statuses(client: ApiClient, auth_id: str, ids: list[str], *, label: str) -> Page:
    """One list.json request; the whole response is staged as one record for DuckDB to split.

    ``label`` names the page in progress reports (the feed's stream).

    Customer fields are dropped here already, before DuckDB sees the page (the staging SQL drops
    them too): DuckDB can write leftover heap bytes into the slack of compressed string blocks
    (duckdb/duckdb#23382), so data that must never be stored must never be in its memory either.
    A page (at most 50 leads) is re-serialized only when it carries such fields.
    """
    # ids are A-Za-z0-9._- (the register and submit_lead check it); httpx percent-encodes the
    # query all the same (the commas as %2C, which every server decodes back)
    joined = ",".join(ids)
    response = client.post(LIST_PATH, params={"id": auth_id, "ids": joined}, data={"ids": joined})
    data = response.data
    count = len(data) if isinstance(data, list | dict) else 0
    leads = data if isinstance(data, list) else list(data.values()) if isinstance(data, dict) else []
    personal = [lead for lead in leads if isinstance(lead, dict) and not PERSONAL_FIELDS_SET.isdisjoint(lead)]
    body = response.content
    if personal:
        for lead in personal:
            for name in PERSONAL_FIELDS:
                lead.pop(name, None)
        body = orjson.dumps(data)
    return Page(b"[" + body + b"]", count, label=label, records_path="$[*]")


# -- submitting a lead -----------------------------------------------------------------------


@dataclass(frozen=True)
class SubmittedLead:
    lead_id: str  # our id: what list.json is asked with (add.json ``uid``)
    uid: str | None  # cpa.moe's internal id (add.json ``id``)
    offer_id: int | None
    submitted_at: datetime
    note: str | None = None


def add_form(
    *,
    offer: int | str,
    phone: str,
    ip: str,
    lead_id: str = "auto",
    name: str | None = None,
    email: str | None = None,
    country: str | None = None,
    wm: str | int | None = None,
    ua: str | None = None,
    comment: str | None = None,
) -> dict[str, Any]:
    """The add.json form of one lead, checked before anything is sent.

    ``ValueError`` for input add.json cannot take: a lead id list.json could not be asked about
    later (it must be ``auto`` or at most :data:`MAX_ID_LENGTH` characters of :data:`ID_PATTERN`),
    no customer IP.
    """
    lead_id = str(lead_id).strip()
    if lead_id.lower() != "auto" and (
        len(lead_id) > MAX_ID_LENGTH or not re.fullmatch(ID_PATTERN, lead_id)
    ):
        raise ValueError(
            f"lead id must be 'auto' or at most {MAX_ID_LENGTH} letters, digits, '.', '_' or '-' "
            "(it is sent comma-separated to list.json)"
        )
    if not str(ip or "").strip():
        raise ValueError("ip is required by add.json (the customer's IP address)")
    fields: dict[str, Any] = {"id": lead_id, "offer": offer, "phone": phone, "ip": ip}
    optional = {"name": name, "email": email, "country": country, "wm": wm, "ua": ua, "comm": comment}
    fields.update({k: v for k, v in optional.items() if v not in (None, "")})
    return fields


def add_lead(client: ApiClient, auth_id: str, form: dict[str, Any]) -> SubmittedLead:
    """Post one lead (an :func:`add_form`) to add.json, once; what cpa.moe accepted, as our ids.

    add.json is not idempotent (with ``auto`` a retry would create a second lead), so the
    client's retries are switched off for it. Raises :class:`CpamoeError` when the answer is not
    ``ok`` or names no id the lead could be polled with (the message says the lead may exist).
    """
    lead_id, offer = form["id"], form["offer"]
    client.retry = replace(client.retry, max_attempts=1)
    response = client.post(ADD_PATH, params={"id": auth_id}, data=form)
    data = response.data
    if not isinstance(data, dict) or data.get("status") != "ok":
        raise CpamoeError("add.json answered without status 'ok'; the lead may not have been created")
    returned = data.get("uid")
    note = None
    if returned is None or str(returned).strip() == "":
        if lead_id.lower() == "auto":
            raise CpamoeError(
                f"add.json accepted the lead (cpa.moe id {data.get('id')}) but returned no uid: "
                "its status cannot be polled; register its id by hand"
            )
        ours = lead_id
    else:
        ours = str(returned).strip()
        if len(ours) > MAX_ID_LENGTH or not re.fullmatch(ID_PATTERN, ours):
            # list.json refuses a batch holding such an id: registering it would stop every poll
            raise CpamoeError(
                f"add.json accepted the lead (cpa.moe id {data.get('id')}) but returned a uid that "
                f"is not {MAX_ID_LENGTH} or fewer letters, digits, '.', '_' or '-': it cannot be polled"
            )
        if lead_id.lower() != "auto" and ours != lead_id:
            note = f"add.json returned uid {ours} for the id {lead_id} we sent; polling with {ours}"
    theirs = str(data["id"]) if data.get("id") is not None else None
    offer_id = int(str(offer).strip()) if str(offer).strip().isdigit() else None
    return SubmittedLead(ours, theirs, offer_id, utc_now(), note)
