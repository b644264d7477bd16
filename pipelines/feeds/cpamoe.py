"""The cpa.moe lead feed: which leads to poll, and how list.json records become ``cpamoe_leads`` rows.

The API client (endpoints, ``id={user}-{key}`` auth, the error envelope, one batch of ids -> one
page, add.json) is :mod:`pipelines.sources.cpamoe`; the register of our leads (CSV files, leads
we submit) is :mod:`pipelines.feeds.cpamoe_register`. What matters for correctness here:

- The API only answers for ids we send: the poll asks for the leads of the register that are not
  final (stage cancel/trash, or status 10/11/12), at most 50 ids a request, several requests at once.
- A list.json success is an object keyed by our id or a list of lead objects (the docs' example
  is neither valid JSON nor clear); an empty result may be ``[]``. DuckDB splits either form (no
  per-record Python); the object key is kept, so a lead whose record lacks ``id`` is still
  matched (the key wins when both are present).
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

import threading
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

import duckdb

from models.status import final_raw_statuses
from pipelines.feeds.cpamoe_register import register_submitted_lead
from pipelines.feeds.run import Fetched, SyncReport, run_stream
from pipelines.page import Page
from pipelines.sources.cpamoe import (
    MAX_IDS_PER_REQUEST,
    PERSONAL_FIELDS,
    REASON_NAMES,
    STAGE_NAMES,
    STATUS_NAMES,
    TRASH_REASONS,
    SubmittedLead,
    add_form,
    add_lead,
    fetch_statuses,
)
from pipelines.sources.fetch import Emit, run_producers
from pipelines.sources.http import ApiClient
from pipelines.warehouse import Warehouse
from pipelines.warehouse.loader import CommitStep, StepResult, StreamLoad, merge_quarantine, summary_step
from pipelines.warehouse.staging import Field, TableSpec

if TYPE_CHECKING:
    from pipelines.defs.cpamoe.resources import CpamoeResource

LEADS_STREAM = "cpamoe_leads"
LEADS_SOURCE = "cpamoe"  # status_history.source and STATUS_MAPPINGS key

LogFn = Callable[[str], None]

# -- what is final: never polled again -------------------------------------------------------

FINAL_STAGES = final_raw_statuses(LEADS_SOURCE)  # cancel, trash (approve still moves: models.status)
FINAL_STATUS_CODES = (10, 11, 12)


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


# -- the status poll ---------------------------------------------------------------------------

def polled_snapshot_sql(full_refresh: bool) -> str:
    """The leads to ask about (not final; all with ``full_refresh``), copied when the poll starts."""
    where = "" if full_refresh else f"WHERE NOT {is_final_sql()}"
    # in lead_id order, the order ids are polled in: each batch's join reads a narrow range of it
    return f"SELECT lead_id, stage, uid, found FROM wh.main.cpamoe_leads {where} ORDER BY lead_id"


_NULL_PERSONAL = "{" + ", ".join(f'"{f}": null' for f in PERSONAL_FIELDS) + "}"


# The fields of a lead record the poll reads, parsed once per record into JSON leaves.
_ITEM_FIELDS = ("id", "uid", "src", "stage", "status", "reason", "count", "comment")
_ITEM_FIELDS_TYPE = "{" + ", ".join(f'"{name}": "JSON"' for name in _ITEM_FIELDS) + "}"


# The fields the type rules check: every parsed field but ``id``, which finds the lead.
_CHECKED_FIELDS = tuple(name for name in _ITEM_FIELDS if name != "id")


def _leaf_types_sql(fields: str = "f") -> str:
    """Each checked field's JSON type (``_t_<name>``) and text (``_s_<name>``), read once per
    record from its parsed fields (:data:`_ITEM_FIELDS`; NULL when absent, as json_extract
    gives). The rules of :func:`_wrong_types_sql` read these columns several times each: written
    as function calls there, DuckDB evaluated them again for every use. With ``items``
    materialized, the whole items statement went 168 -> 133 ms per 20,000 leads on one thread
    (the large bench's first 400 pages; identical rows)."""
    return ", ".join(
        f"json_type({fields}.\"{name}\") AS _t_{name}, json_extract_string({fields}.\"{name}\", '$') AS _s_{name}"
        for name in _CHECKED_FIELDS
    )


def _wrong_types_sql() -> str:
    """Why a lead record has a field of the wrong JSON type (NULL when none has): such a record
    is quarantined, never read leniently into NULLs. Codes may be numbers or numeric strings.

    Reads the columns of :func:`_leaf_types_sql`: each rule reads a leaf of a few bytes, parsed
    once, not the record again."""

    def jt(path: str) -> str:
        return f"_t_{path.removeprefix('$.')}"

    def js(path: str) -> str:
        return f"_s_{path.removeprefix('$.')}"

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
    assert tuple(rules) == _CHECKED_FIELDS
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
# A page's JSON type is read once per page, not once per lead (a json_type of the whole page for
# each of its 50 leads was a third of this statement), and a lead's from json_each. ``items`` is
# materialized: read by the lookups and the output, DuckDB otherwise inlined its JSON work into
# each (164 -> 132 ms per 20,000 leads).
ITEMS_SQL = f"""
WITH items AS MATERIALIZED (
    SELECT seq, pos, obj_key, item, item_type, f, json_extract_string(f.id, '$') AS rec_id
    FROM (SELECT r.seq, CAST(j.id AS BIGINT) AS pos,
                 CASE WHEN r.page_type = 'OBJECT' THEN j.key END AS obj_key, j.value AS item, j.type AS item_type,
                 json_transform(j.value, '{_ITEM_FIELDS_TYPE}') AS f
          FROM (SELECT seq, rec, json_type(rec) AS page_type FROM recs) AS r, json_each(r.rec) AS j)
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
       CASE WHEN item_type = 'OBJECT' THEN json_merge_patch(item, '{_NULL_PERSONAL}') ELSE item END AS rec,
       json_extract_string(f.stage, '$') IS NOT NULL AS has_stage,
       CASE WHEN item_type <> 'OBJECT' THEN 'not a lead object'
            WHEN lead_id IS NULL THEN 'lead id not asked for in this request'
            ELSE {_wrong_types_sql()} END AS problem
FROM (SELECT *, {_leaf_types_sql()} FROM resolved)
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
                emit(fetch_statuses(client, auth_id, ids, label=LEADS_STREAM))

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
        # small records (a lead's status): larger chunks, so fewer joins with ``polled`` (a
        # chunk's JSON memory is per vector, not per chunk: TYPING_THREADS in the loader)
        batch_records=20_000,
        batch_pages=400,
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

    Raises :class:`~pipelines.sources.cpamoe.CpamoeError` naming cpa.moe's error code
    (``duplicate``, ``offer``...), ``AuthError`` for ``security``, ``ValueError`` for input add.json
    cannot take. add.json is not idempotent (with ``auto`` a retry would create a second lead), so
    it is never retried automatically: resubmit with the same explicit id, and ``duplicate`` tells
    it arrived.
    """
    form = add_form(
        offer=offer, phone=phone, ip=ip, lead_id=lead_id, name=name, email=email, country=country,
        wm=wm, ua=ua, comment=comment,
    )
    with cpamoe.client() as client:
        lead = add_lead(client, cpamoe.auth_id, form)
    register_submitted_lead(
        warehouse,
        lead_id=lead.lead_id,
        uid=lead.uid,
        offer_id=lead.offer_id,
        submitted_at=lead.submitted_at,
        run_id=run_id or f"submit-{uuid.uuid4()}",
    )
    return lead
