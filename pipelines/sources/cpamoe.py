"""cpa.moe affiliate API: lead statuses (``list.json``), lead submission (``add.json``).

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
  (:mod:`pipelines.sources.cpamoe_register`). The poll asks for the leads that are not final
  (stage cancel/trash, or status 10/11/12), at most 50 ids a request, several requests at once.
- ``add.json`` and ``list.json`` swap the meaning of ``id`` and ``uid``. Decision: ``lead_id`` is
  OUR id (list.json ``id`` / the object key; add.json ``uid``), ``uid`` is cpa.moe's internal id
  (list.json ``uid``; add.json ``id``).
- The list.json example in the docs is not valid JSON (``[ 1234 : {...} ]``): a success is read as
  an object keyed by our id or as a list of lead objects, whichever comes; an empty result may be
  ``[]``. DuckDB splits either form (no per-record Python); the object key is kept, so a lead
  whose record lacks ``id`` is still matched (the key wins when both are present).
- Fields may be missing (the docs' second example has no ``stage``): a missing ``stage`` or ``uid``
  keeps the last known value. Codes are read leniently (a number or a numeric string); unknown
  stages/codes keep the row (``status``/names NULL) and make an asset check fail naming them.
- An id we asked for that the response lacks is recorded as not found (``found`` false,
  ``not_found_at`` since when), keeping its last known stage; this is not a status change (no
  ``status_history`` row) and the lead keeps being polled. A record for an id we did not ask for,
  a value that is not an object, or a lead with a field of the wrong JSON type (a code that is not
  a number or numeric string, a stage that is not a string...) goes to ``quarantine`` (stream
  ``cpamoe_leads``) with the reason; the lead keeps its last known state.
- Customer phone, e-mail, IP, name, user agent and address are removed from every stored record.
"""

from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

import duckdb
import orjson

from models.status import final_raw_statuses
from pipelines.clock import utc_now
from pipelines.sources.fetch import Emit, run_producers
from pipelines.sources.http import ApiClient, ApiError, AuthError
from pipelines.feeds.run import Fetched, SyncReport, run_stream
from pipelines.page import Page
from pipelines.warehouse.loader import CommitStep, StepResult, StreamLoad, merge_quarantine, summary_step
from pipelines.sources.cpamoe_register import ID_PATTERN, MAX_ID_LENGTH, register_submitted_lead
from pipelines.warehouse.staging import Field, TableSpec
from pipelines.warehouse import Warehouse

if TYPE_CHECKING:
    from pipelines.resources import CpamoeResource

ADD_PATH = "/ext/add.json"
LIST_PATH = "/ext/list.json"
MAX_IDS_PER_REQUEST = 50  # "Better don't send more that 50 IDs in one request"
LEADS_STREAM = "cpamoe_leads"
LEADS_SOURCE = "cpamoe"  # status_history.source and STATUS_MAPPINGS key

LogFn = Callable[[str], None]

# -- the docs' vocabularies (one source of truth for the SQL below and the checks) -----------

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
FINAL_STAGES = final_raw_statuses(LEADS_SOURCE)  # cancel, trash (approve still moves: models.status)
FINAL_STATUS_CODES = (10, 11, 12)
# Customer data add.json accepts; removed from any record before it is stored.
PERSONAL_FIELDS = ("phone", "email", "ip", "name", "ua", "addr", "street", "index")
PERSONAL_FIELDS_SET = frozenset(PERSONAL_FIELDS)


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _case(expr: str, names: dict) -> str:
    whens = " ".join(f"WHEN {k if isinstance(k, int) else _lit(k)} THEN {_lit(v)}" for k, v in names.items())
    return f"CASE {expr} {whens} END"


def _code(path: str) -> str:
    """A code as BIGINT from a JSON number or numeric string ('5', 5, 5.0); NULL otherwise."""
    s = f"trim(json_extract_string(rec, {_lit(path)}))"
    return (
        f"CASE WHEN regexp_full_match({s}, '-?[0-9]{{1,18}}') THEN CAST({s} AS BIGINT) "
        f"WHEN regexp_full_match({s}, '-?[0-9]{{1,18}}\\.0*') THEN CAST(split_part({s}, '.', 1) AS BIGINT) END"
    )


def _text(path: str) -> str:
    return f"json_extract_string(rec, {_lit(path)})"


def is_final_sql(stage: str = "stage", status_code: str = "status_code") -> str:
    stages = ", ".join(_lit(s) for s in FINAL_STAGES)
    codes = ", ".join(str(c) for c in FINAL_STATUS_CODES)
    return f"(coalesce({stage} IN ({stages}), false) OR coalesce({status_code} IN ({codes}), false))"


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

def polled_snapshot_sql(full_refresh: bool) -> str:
    """The leads to ask about (not final; all with ``full_refresh``), copied when the poll starts."""
    where = "" if full_refresh else f"WHERE NOT {is_final_sql()}"
    # in lead_id order, the order ids are polled in: each batch's join reads a narrow range of it
    return f"SELECT lead_id, stage, uid, found FROM wh.main.cpamoe_leads {where} ORDER BY lead_id"


_NULL_PERSONAL = "{" + ", ".join(f'"{f}": null' for f in PERSONAL_FIELDS) + "}"


def _wrong_types_sql(item: str = "item") -> str:
    """Why a lead record has a field of the wrong JSON type (NULL when none has): such a record
    is quarantined, never read leniently into NULLs. Codes may be numbers or numeric strings."""

    def jt(path: str) -> str:
        return f"json_type({item}, '{path}')"

    def js(path: str) -> str:
        return f"json_extract_string({item}, '{path}')"

    def code_ok(path: str) -> str:
        whole = f"TRY_CAST({js(path)} AS DOUBLE) = floor(TRY_CAST({js(path)} AS DOUBLE))"
        numeric = f"regexp_full_match(trim({js(path)}), '-?[0-9]{{1,18}}(\\.0*)?')"
        return (
            f"({jt(path)} IN ('NULL', 'BIGINT', 'UBIGINT') OR ({jt(path)} = 'DOUBLE' AND {whole}) "
            f"OR ({jt(path)} = 'VARCHAR' AND {numeric}))"
        )

    rules = {
        "uid": ("id", lambda p: f"{jt(p)} IN ('NULL', 'BIGINT', 'UBIGINT', 'VARCHAR')"),
        "src": ("id", lambda p: f"{jt(p)} IN ('NULL', 'BIGINT', 'UBIGINT', 'VARCHAR')"),
        "stage": ("string", lambda p: f"{jt(p)} IN ('NULL', 'VARCHAR')"),
        "status": ("integer", code_ok),
        "reason": ("integer", code_ok),
        "count": ("integer", code_ok),
        "comment": ("string", lambda p: f"{jt(p)} IN ('NULL', 'VARCHAR')"),
    }
    reasons = [
        f"CASE WHEN {jt(f'$.{name}')} IS NOT NULL AND NOT {ok(f'$.{name}')} "
        f"THEN '{name} ($.{name}): expected {kind}, got ' || {jt(f'$.{name}')} "
        f"|| coalesce(': ' || left({js(f'$.{name}')}, 60), '') END"
        for name, (kind, ok) in rules.items()
    ]
    return "NULLIF(concat_ws('; ', " + ", ".join(reasons) + "), '')"


# Every returned lead, matched to the id we asked for: by the object key, else by its ``id``.
# Built batch by batch while polling (StreamLoad ``batch_tables``): the JSON work of one statement
# over every lead of a run would hold all their parse buffers at once.
# ``asked`` narrows ``polled`` (every lead of the run, 500,000 on the large bench) to the batch's
# ids with a semi join first, so the two lookups build hash tables over a batch, not over the run.
ITEMS_SQL = f"""
WITH items AS (
    SELECT r.seq, CAST(j.id AS BIGINT) AS pos,
           CASE WHEN json_type(r.rec) = 'OBJECT' THEN j.key END AS obj_key, j.value AS item,
           json_extract_string(j.value, '$.id') AS rec_id
    FROM recs AS r, json_each(r.rec) AS j
), asked AS (
    SELECT * FROM polled
    WHERE lead_id IN (SELECT obj_key FROM items UNION SELECT rec_id FROM items)
), resolved AS (
    SELECT i.*,
           coalesce(pk.lead_id, pi.lead_id) AS lead_id,
           coalesce(pk.stage, pi.stage) AS prev_stage,
           coalesce(pk.uid, pi.uid) AS prev_uid
    FROM items AS i
    LEFT JOIN asked AS pk ON pk.lead_id = i.obj_key
    LEFT JOIN asked AS pi ON pi.lead_id = i.rec_id
)
SELECT seq, pos, prev_stage AS listed_status, lead_id AS matched_id, prev_uid,
       coalesce(obj_key, rec_id) AS returned_id,
       CASE WHEN json_type(item) = 'OBJECT' THEN json_merge_patch(item, '{_NULL_PERSONAL}') ELSE item END AS rec,
       json_extract_string(item, '$.stage') IS NOT NULL AS has_stage,
       CASE WHEN json_type(item) <> 'OBJECT' THEN 'not a lead object'
            WHEN lead_id IS NULL THEN 'lead id not asked for in this request'
            ELSE {_wrong_types_sql()} END AS problem
FROM resolved
"""

_stage = f"coalesce({_text('$.stage')}, listed_status)"
_status = _code("$.status")
_reason = _code("$.reason")
_trash = ", ".join(str(c) for c in sorted(TRASH_REASONS))

LEAD_STATUSES = TableSpec(
    table="cpamoe_leads",
    source=LEADS_SOURCE,
    key=("lead_id",),
    status_path="$.stage",  # falls back to listed_status = the last known stage
    created_field=None,
    records_sql="SELECT * FROM cpamoe_items WHERE problem IS NULL",
    fields=(
        Field("lead_id", sql="matched_id"),
        Field("uid", sql=f"coalesce({_text('$.uid')}, prev_uid)"),
        Field("src", sql=_text("$.src")),
        Field("stage", sql=_stage),
        Field("stage_name", sql=_case(_stage, STAGE_NAMES)),
        Field("status_code", sql=_status),
        Field("status_name", sql=_case(_status, STATUS_NAMES)),
        Field("reason_code", sql=_reason),
        Field("reason_name", sql=_case(_reason, REASON_NAMES)),
        Field("is_trash", sql=f"(coalesce({_stage} = 'trash', false) OR coalesce({_reason} IN ({_trash}), false))"),
        Field("item_count", sql=_code("$.count")),
        Field("comment", sql=_text("$.comment")),
    ),
    # found / not_found_at / last_checked_at: written by the poll's step "record found / not found"
    step_columns=("found", "not_found_at", "last_checked_at"),
    # offer_id, submitted_at and registered_from belong to the register: never overwritten here
    update_columns=(
        "uid", "src", "stage", "stage_name", "status_code", "status_name", "reason_code",
        "reason_name", "is_trash", "item_count", "comment",
    ),
)

FOUND_SQL = """
UPDATE wh.main.cpamoe_leads AS t
SET found = s.found,
    not_found_at = CASE WHEN s.found THEN NULL ELSE coalesce(t.not_found_at, $now) END,
    synced_at = CASE WHEN t.found IS DISTINCT FROM s.found THEN $now ELSE t.synced_at END,
    run_id = CASE WHEN t.found IS DISTINCT FROM s.found THEN $run ELSE t.run_id END,
    last_checked_at = $now
FROM (SELECT p.lead_id, p.lead_id IN (SELECT matched_id FROM cpamoe_items WHERE matched_id IS NOT NULL) AS found
      FROM polled AS p) AS s
WHERE t.lead_id = s.lead_id
"""

# Records that cannot become a row (not a lead object, an id not asked for, a wrong JSON type).
QUARANTINE_ROWS_SQL = """
SELECT md5(CAST(rec AS VARCHAR)) AS row_hash, returned_id AS entity_id, problem AS reason, rec AS raw
FROM cpamoe_items WHERE problem IS NOT NULL
"""

SUMMARY_SQL = f"""
SELECT (SELECT count(*) FROM polled) AS leads_polled,
       count(*) FILTER (WHERE found = false) AS leads_not_found,
       count(*) FILTER (WHERE NOT {is_final_sql()}) AS leads_open,
       count(*) FILTER (WHERE status = 'completed') AS leads_approved,
       (SELECT count(*) FROM cpamoe_items WHERE problem IS NOT NULL) AS records_quarantined
FROM wh.main.cpamoe_leads
"""


def poll_steps(run_id: str, quarantined: int) -> list[CommitStep]:
    """The poll's own writes, in the commit's transaction after the merge."""

    def record_found(con: duckdb.DuckDBPyConnection, now: datetime) -> None:
        con.execute(FOUND_SQL, {"now": now, "run": run_id})

    def quarantine_unmatched(con: duckdb.DuckDBPyConnection, now: datetime) -> StepResult:
        merge_quarantine(con, LEADS_STREAM, QUARANTINE_ROWS_SQL, now=now, run_id=run_id)
        return StepResult(quarantined=quarantined)  # every such record, repeats included

    return [
        CommitStep("record found / not found and last_checked_at", record_found),
        CommitStep("quarantine records that are not leads we asked for", quarantine_unmatched),
        summary_step(SUMMARY_SQL),
    ]


class IdBatches:
    """Hands out the snapshot's lead ids, ``size`` at a time, to concurrent fetchers.

    Ids stream from a DuckDB cursor on the staging database: memory does not grow with the
    number of leads to poll.
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, query: str, size: int) -> None:
        self._cursor = con.cursor()
        self._cursor.execute(query)
        self._size = size
        self._lock = threading.Lock()

    def next(self) -> list[str]:
        with self._lock:
            return [row[0] for row in self._cursor.fetchmany(self._size)]

    def close(self) -> None:
        self._cursor.close()


def fetch_statuses(client: ApiClient, auth_id: str, ids: list[str]) -> Page:
    """One list.json request; the whole response is staged as one record for DuckDB to split.

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
    return Page(b"[" + body + b"]", count, label=LEADS_STREAM, records_path="$[*]")


def sync_lead_statuses(
    *,
    warehouse: Warehouse,
    client: ApiClient,
    auth_id: str,
    run_id: str,
    full_refresh: bool = False,
    max_workers: int = 4,
    log: LogFn = lambda _m: None,
    on_progress: Callable[[str, int], None] | None = None,
) -> SyncReport:
    """Poll the statuses of our leads that are not final (all leads with ``full_refresh``)."""
    mode = "full" if full_refresh else "incremental"

    def fetch(load: StreamLoad) -> Fetched:
        assert load.con is not None
        load.read_state({"polled": polled_snapshot_sql(full_refresh)})
        total = load.query("SELECT count(*) FROM polled")[0][0]
        requests = -(-total // MAX_IDS_PER_REQUEST)
        log(f"cpamoe_leads: polling {total} lead(s) in {requests} request(s) of at most {MAX_IDS_PER_REQUEST} ids")
        batches = IdBatches(load.con, "SELECT lead_id FROM polled ORDER BY lead_id", MAX_IDS_PER_REQUEST)

        def fetcher(emit: Emit[Page]) -> None:
            while ids := batches.next():
                emit(fetch_statuses(client, auth_id, ids))

        try:
            workers = max(1, min(max_workers, requests))
            run_producers([fetcher] * min(workers, requests), load.add, max_workers=workers)
        finally:
            batches.close()
        load.flush()
        quarantined = load.con.execute("SELECT count(*) FROM cpamoe_items WHERE problem IS NOT NULL").fetchone()[0]
        return Fetched(
            cursor={"leads_polled": total},
            mode=mode,
            warnings=_poll_warnings(load.con),
            full_walk=full_refresh,
            steps=poll_steps(run_id, quarantined),
        )

    return run_stream(
        warehouse=warehouse,
        stream=LEADS_STREAM,
        specs=[LEAD_STATUSES],
        run_id=run_id,
        fetch=fetch,
        client=client,
        log=log,
        batch_tables={"cpamoe_items": ITEMS_SQL},
        # small records (a lead's status): larger batches, so fewer joins with ``polled``
        batch_records=5000,
        batch_pages=100,
        on_progress=on_progress,
    )


def _poll_warnings(con: duckdb.DuckDBPyConnection) -> list[str]:
    warnings = []
    newly_missing = con.execute(
        "SELECT count(*), string_agg(lead_id, ', ' ORDER BY lead_id) FILTER (WHERE n <= 5) FROM "
        "(SELECT lead_id, row_number() OVER (ORDER BY lead_id) AS n FROM polled "
        " WHERE found IS DISTINCT FROM false "
        "   AND lead_id NOT IN (SELECT matched_id FROM cpamoe_items WHERE matched_id IS NOT NULL))"
    ).fetchone()
    if newly_missing[0]:
        warnings.append(
            f"cpamoe_leads: {newly_missing[0]} lead(s) not returned by list.json (e.g. {newly_missing[1]}); "
            "recorded as not found (found = false) and still polled"
        )
    for problem, count, sample in con.execute(
        "SELECT problem, count(*), string_agg(DISTINCT returned_id, ', ') FROM cpamoe_items "
        "WHERE problem IS NOT NULL GROUP BY problem ORDER BY problem"
    ).fetchall():
        warnings.append(f"cpamoe_leads: {count} record(s) quarantined ({problem}), ids: {(sample or '')[:200]}")
    no_stage = con.execute(
        "SELECT count(*) FROM cpamoe_items WHERE problem IS NULL AND NOT has_stage"
    ).fetchone()[0]
    if no_stage:
        warnings.append(f"cpamoe_leads: {no_stage} record(s) without a stage; the last known stage was kept")
    return warnings


def unknown_codes_sql() -> str:
    """Values of stage-adjacent codes the docs do not list, per field (for the asset check)."""
    status_codes = ", ".join(_lit(str(c)) for c in STATUS_NAMES)
    reason_codes = ", ".join(_lit(str(c)) for c in REASON_NAMES)
    return f"""
    SELECT field, value, count(*) AS n FROM (
        SELECT 'status' AS field, json_extract_string(raw, '$.status') AS value
        FROM cpamoe_leads WHERE status_name IS NULL AND json_extract_string(raw, '$.status') IS NOT NULL
        UNION ALL
        SELECT 'reason', json_extract_string(raw, '$.reason')
        FROM cpamoe_leads WHERE reason_name IS NULL AND json_extract_string(raw, '$.reason') IS NOT NULL
    ) WHERE NOT (field = 'status' AND value IN ({status_codes}))
        AND NOT (field = 'reason' AND value IN ({reason_codes}))
    GROUP BY ALL ORDER BY n DESC
    """


# -- submitting a lead -----------------------------------------------------------------------


@dataclass(frozen=True)
class SubmittedLead:
    lead_id: str  # our id: what list.json is asked with (add.json ``uid``)
    uid: str | None  # cpa.moe's internal id (add.json ``id``)
    offer_id: int | None
    submitted_at: datetime
    note: str | None = None


def submit_lead(
    cpamoe: CpamoeResource,
    warehouse: Warehouse,
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
    run_id: str | None = None,
) -> SubmittedLead:
    """Post a lead to add.json and register it in ``cpamoe_leads`` (never its customer data).

    Raises :class:`CpamoeError` naming cpa.moe's error code (``duplicate``, ``offer``...),
    ``AuthError`` for ``security``, ``ValueError`` for input add.json cannot take. add.json is
    not idempotent (with ``auto`` a retry would create a second lead), so it is never retried
    automatically: resubmit with the same explicit id, and ``duplicate`` tells it arrived.
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

    with cpamoe.client() as client:
        client.retry = replace(client.retry, max_attempts=1)
        response = client.post(ADD_PATH, params={"id": cpamoe.auth_id}, data=fields)
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
    submitted_at = utc_now()
    register_submitted_lead(
        warehouse,
        lead_id=ours,
        uid=theirs,
        offer_id=offer_id,
        submitted_at=submitted_at,
        run_id=run_id or f"submit-{uuid.uuid4()}",
    )
    return SubmittedLead(ours, theirs, offer_id, submitted_at, note)
