"""Metapic API v2: campaigns (offers), their participants, and participants' daily statistics.

Docs: ``shared/api-docs/metapic-api-v2.md``. What matters for correctness:

- ``GET /v2/offers`` requires ``created_by`` (``METAPIC_USER_ID``; Laravel 422 without it) and lists
  only *active* offers unless ``statuses[]`` is given, so every status is listed explicitly.
  ``include[]=trafficSourcesCosts&include[]=store`` brings ``store_name``, ``currency`` and the
  costs into the list: no per-offer detail request. ``size`` is at most 100.
- Lists are Laravel pages (``data``, ``links``, ``meta.current_page/last_page/total``);
  :func:`walk_pages` follows ``meta.last_page`` whatever page size the server really uses.
- Errors: 401 ``{"message": "Unauthenticated."}`` (the client raises :class:`AuthError`), 422
  ``{"message", "errors"}``, and a 200 body with a ``message`` but no ``data`` is an error
  (:func:`metapic_envelope`), never an empty page.
- ``traffic_sources_costs[].cpc`` is in minor units (the docs: ``cpc: 1`` = ``cpc_v2.amount "0.01"``):
  ``cpc_v2.amount`` is used when present, else ``cpc / 100``.
- Participants can have no ``id`` (every docs example has ``"id": null``): they are keyed by
  :data:`PARTICIPANT_KEY_SQL`. E-mail addresses (``pre_registered_email``, a ``display_name`` or
  identifier that is an address, any top-level field named like ``*email*``) are removed from
  ``raw``; a participant known only by e-mail is keyed by the SHA-256 of the lower-cased address.
- The API allows 300 requests per window (``x-ratelimit-*``): the client's rate limiter is shared
  by every client of the process (``RateLimiter.shared``, built by ``MetapicResource``).

Assumptions where the docs are silent:

- ``cpa`` is stored as given (it looks like a commission rate: 0.04 next to a 0.01 CPC).
- The offer's ``cpc``/``cpa`` are those of the "General" traffic source (``source`` 0), else of
  the first one listed.
- With ``include[]=store`` the list carries the detail's flat ``store_name``/``currency`` (a nested
  ``store`` object is read too).
- ``valid_from``/``valid_until`` (not in the documented responses) are read when present, as UTC.
- A participant without ``id``/``user_id`` shows its pre-registered identifier (or e-mail) as
  ``display_name`` in participants-stats, which carries no ``pre_registered_*`` fields; so the key
  falls back to ``display_name`` with the same prefixes. A participant with none of these is
  quarantined (no stable key exists).
- Omitting ``active`` on participants-stats returns every participant; days are UTC days.
- A 200 body with only a ``message`` is transient (e.g. "Too Many Attempts."): retried, bounded.
- A campaign's participants no longer change once it has ended or been deleted: after one complete
  read made once it is terminal, its list is never asked for again (``ended`` -> ``deleted`` too).
- A pre-registered participant who signs up keeps serving its pre-registered identifier or e-mail
  (the docs show no sign-up): that stays its key, so the sign-up updates its one row.
- Snapshot rule: a complete read of a campaign's participant list (every page, the total never
  moving between pages) is the whole truth for it; a participant it does not list is removed and
  its history interval closed. An incomplete read removes nothing. One listed again continues its
  history.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import duckdb
import orjson

from models.status import STATUS_MAPPINGS, status_case_sql, terminal_raw_statuses
from pipelines.sources.fetch import Emit, run_producers
from pipelines.sources.http import ApiClient, ApiError, AuthError
from pipelines.feeds.run import Fetched, SyncReport, run_stream
from pipelines.page import Page
from pipelines.warehouse.loader import (
    CommitStep,
    LoadResult,
    StepResult,
    StreamLoad,
    TableResult,
    merge_quarantine,
    summary_step,
)
from pipelines.warehouse.staging import Field, TableSpec
from pipelines.warehouse import Warehouse

OFFERS_PATH = "/v2/offers"
OFFER_STATUSES = tuple(STATUS_MAPPINGS["metapic_offer"])  # every status, to list every offer
TERMINAL_OFFER_STATUSES = terminal_raw_statuses("metapic_offer")
OFFER_INCLUDES = ("trafficSourcesCosts", "store")
MAX_PAGE_SIZE = 100
MAX_PAGES = 10_000  # a list that never ends is a server bug, not data

LogFn = Callable[[str], None]

# -- envelope --------------------------------------------------------------------------------------


def metapic_envelope(data: Any, http_status: int) -> None:
    """Raise for an error reported in a (2xx) Laravel body; accept only an object with ``data``."""
    if not isinstance(data, dict):
        raise ApiError(f"expected a JSON object, got {type(data).__name__}", retryable=True)
    if "data" in data:
        return
    message = str(data.get("message") or "").strip()
    errors = data.get("errors")
    if isinstance(errors, dict) and errors:
        fields = ", ".join(sorted(str(k) for k in errors)[:10])
        raise ApiError(f"validation failed on {fields}: {message[:200]}", status_code=422)
    if message == "Unauthenticated.":
        raise AuthError(f"HTTP {http_status} body says {message!r}", status_code=401)
    if message:
        raise ApiError(f"error in HTTP {http_status} body: {message[:200]}", retryable=True)
    raise ApiError(f"HTTP {http_status} body has neither 'data' nor 'message'", retryable=True)


# -- Laravel pages -----------------------------------------------------------------------------------


@dataclass
class ListWalk:
    """What one walk of a paginated list saw."""

    label: str
    records: int = 0
    pages: int = 0
    total: int | None = None
    complete: bool = False  # every page read, at least ``meta.total`` records, and the total never moved
    moved: bool = False  # ``meta.total`` changed between pages: the list shifted while it was read
    not_found: bool = False  # HTTP 404: the list's parent (an offer) no longer exists
    warnings: list[str] = field(default_factory=list)


def walk_pages(
    client: ApiClient,
    path: str,
    params: dict[str, Any],
    emit: Emit[Page],
    *,
    label: str,
    size: int,
    allow_not_found: bool = False,
) -> ListWalk:
    """Emit every page of a Laravel-paginated list, following ``meta.last_page``.

    A page that repeats the previous one, or comes back empty before the last page, is asked for
    once more before the walk gives up on the list (not complete, with a warning). A total that
    changes between pages means records were added or removed while the list was read, so a record
    may have shifted onto a page already read: the walk is reported and never counts as complete,
    even when the number of records received matches the last total.
    """
    walk = ListWalk(label)
    page = 1
    previous_hash: int | None = None
    first_total: int | None = None
    asked_again: str | None = None  # what was wrong with the page asked for once more
    while True:
        try:
            response = client.get(path, params={**params, "size": size, "page": page})
        except ApiError as err:
            if allow_not_found and err.status_code == 404 and not isinstance(err, AuthError):
                walk.not_found = True
                walk.warnings.append(f"{label}: HTTP 404, kept as last seen")
                return walk
            raise
        body = response.data
        records = body["data"]
        if not isinstance(records, list):
            raise ApiError(f"{label}: 'data' is a {type(records).__name__}, not a list")
        meta = body.get("meta") if isinstance(body.get("meta"), dict) else {}
        links = body.get("links") if isinstance(body.get("links"), dict) else {}
        total, last_page, current = (_int(meta.get(k)) for k in ("total", "last_page", "current_page"))
        more = page < last_page if last_page is not None else bool(links.get("next"))
        page_hash = hash(orjson.dumps(records)) if records else None
        repeated = page_hash is not None and page_hash == previous_hash
        # empty, although more pages follow or the total says records are still to come
        hollow = not records and (more or (total is not None and walk.records < total))
        if (repeated or hollow) and asked_again is None:
            # a glitch or a lie: ask for the same page once more
            asked_again = "repeated the previous page" if repeated else "came back empty"
            continue
        if asked_again is not None and not repeated and records:
            walk.warnings.append(f"{label}: page {page} {asked_again} once; read again")
        if repeated:
            walk.warnings.append(f"{label}: page {page} repeated the previous page; list not complete")
            return walk
        asked_again = None
        previous_hash = page_hash
        emit(Page(response.content, len(records), label=label))
        walk.records += len(records)
        walk.pages += 1
        if total is not None:
            if first_total is None:
                first_total = total
            elif total != first_total and not walk.moved:
                walk.moved = True
                walk.warnings.append(
                    f"{label}: total changed from {first_total} to {total} between pages "
                    "(the list moved while it was read); list not complete"
                )
            walk.total = total
        if current is not None and current != page:
            walk.warnings.append(f"{label}: asked for page {page}, got page {current}; list not complete")
            return walk
        if more and not records:
            walk.warnings.append(f"{label}: page {page} is empty before the last page; list not complete")
            return walk
        if not more:
            walk.complete = (walk.total is None or walk.records >= walk.total) and not walk.moved
            if not walk.complete and not walk.moved:
                walk.warnings.append(f"{label}: received {walk.records} of {walk.total} records")
            return walk
        if page >= MAX_PAGES:
            walk.warnings.append(f"{label}: stopped after {MAX_PAGES} pages; list not complete")
            return walk
        page += 1


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# -- SQL over staged records -----------------------------------------------------------------------

_EMAIL = r"[^@\s]+@[^@\s]+\.[^@\s]+"


def _s(path: str, rec: str = "rec") -> str:
    return f"nullif(trim(json_extract_string({rec}, '{path}')), '')"


def _is_email(expr: str) -> str:
    return f"regexp_matches({expr}, '{_EMAIL}')"


def _email_key(expr: str) -> str:
    return f"'email:' || sha256(lower(trim({expr})))"


def _pre_key(expr: str) -> str:
    return f"CASE WHEN {_is_email(expr)} THEN {_email_key(expr)} ELSE 'pre:' || {expr} END"


# The version of PARTICIPANT_KEY_SQL, kept in the participants stream's cursor (absent: the rule
# before 2, ``id:`` first). A warehouse written under an older one re-reads every list once.
PARTICIPANT_KEY_VERSION = 2

# The participant's key, over the record as the API sent it (before scrubbing). A pre-registered
# participant who signs up gains an ``id`` and a ``user_id`` but keeps serving its pre-registered
# identifier (or e-mail): that is its key while it carries one, so a sign-up updates the same row
# instead of adding a second participant. Then ``id``, then ``user_id``, then ``display_name`` (which
# repeats the identifier or e-mail of a pre-registered participant in participants-stats).
PARTICIPANT_KEY_SQL = f"""CASE
    WHEN {_s('$.pre_registered_identifier')} IS NOT NULL THEN {_pre_key(_s('$.pre_registered_identifier'))}
    WHEN {_s('$.pre_registered_email')} IS NOT NULL THEN {_email_key(_s('$.pre_registered_email'))}
    WHEN {_s('$.id')} IS NOT NULL THEN 'id:' || {_s('$.id')}
    WHEN {_s('$.user_id')} IS NOT NULL THEN 'user:' || {_s('$.user_id')}
    WHEN {_s('$.display_name')} IS NOT NULL THEN {_pre_key(_s('$.display_name'))}
END"""

# The record without e-mail addresses: every top-level field named like *email* is dropped, and
# display_name / pre_registered_identifier are dropped when they hold an address.
SCRUBBED_REC_SQL = f"""json_merge_patch(json_merge_patch(json_merge_patch(rec,
    coalesce(to_json(map_from_entries(list_transform(
        list_filter(json_keys(rec), lambda k: k ILIKE '%mail%'),
        lambda k: {{'k': k, 'v': NULL::JSON}}))), '{{}}')),
    CASE WHEN {_is_email(_s('$.display_name'))} THEN '{{"display_name": null}}' ELSE '{{}}' END),
    CASE WHEN {_is_email(_s('$.pre_registered_identifier'))} THEN '{{"pre_registered_identifier": null}}' ELSE '{{}}' END)"""


def _keyed_records_sql(extra: str = "") -> str:
    """Participant-like records: scrubbed, keyed, with the offer id (and day) from the page label."""
    return f"""
        SELECT seq, pos, listed_status, {SCRUBBED_REC_SQL} AS rec,
               TRY_CAST(split_part(label, ':', 2) AS BIGINT) AS label_offer_id,
               {PARTICIPANT_KEY_SQL} AS participant_key {extra}
        FROM recs WHERE ({PARTICIPANT_KEY_SQL}) IS NOT NULL"""


# participants-stats records carry no pre_registered_* fields: a signed-up participant's stats are
# keyed ``id:``/``user:`` by the rule above. When the participants table already knows that id or
# user_id under another key (its pre-registered one, kept after sign-up) for the same offer, the
# stats take that key, so both tables name one participant alike. Built from the warehouse in
# ``read_state`` (snapshot ``participant_aliases``).
PARTICIPANT_ALIASES_SQL = """
    SELECT offer_id, alias, any_value(participant_key) AS participant_key
    FROM (SELECT offer_id, 'id:' || participant_id AS alias, participant_key
          FROM wh.main.metapic_participants WHERE participant_id IS NOT NULL
          UNION ALL
          SELECT offer_id, 'user:' || user_id AS alias, participant_key
          FROM wh.main.metapic_participants WHERE user_id IS NOT NULL)
    WHERE alias <> participant_key
    GROUP BY offer_id, alias
    HAVING count(DISTINCT participant_key) = 1"""

STATS_RECORDS_SQL = f"""
    SELECT k.* REPLACE (coalesce(a.participant_key, k.participant_key) AS participant_key)
    FROM ({_keyed_records_sql(", TRY_CAST(split_part(label, ':', 3) AS DATE) AS label_date")}) AS k
    LEFT JOIN participant_aliases AS a ON a.offer_id = k.label_offer_id AND a.alias = k.participant_key"""


KEYLESS_REASON = (
    "participant has no id, user_id, pre_registered_identifier, pre_registered_email or display_name to key it by"
)


def quarantine_keyless(table: str, run_id: str) -> CommitStep:
    """Staged records with nothing to key them by go to ``quarantine`` (scrubbed), not the table."""
    rows = f"""
        SELECT md5(CAST(rec AS VARCHAR)) AS row_hash, 'offer ' || split_part(label, ':', 2) AS entity_id,
               $reason AS reason, rec AS raw
        FROM (SELECT {SCRUBBED_REC_SQL} AS rec, label FROM recs WHERE ({PARTICIPANT_KEY_SQL}) IS NULL)"""

    def run(con: duckdb.DuckDBPyConnection, now: datetime) -> StepResult:
        count = merge_quarantine(con, table, rows, now=now, run_id=run_id, params={"reason": KEYLESS_REASON})
        return StepResult(quarantined=count)

    return CommitStep("quarantine participants without a key", run)


def _general_cost(key: str) -> str:
    """A field of the offer's "General" traffic source (source 0), else of the first one."""
    costs = "json_extract(rec, '$.traffic_sources_costs[*]')"
    general = f"coalesce(list_filter({costs}, lambda c: json_extract_string(c, '$.source') = '0')[1], {costs}[1])"
    return f"json_extract_string({general}, '{key}')"


def _decimal(expr: str) -> str:
    return f"TRY_CAST({expr} AS DECIMAL(18,6))"


OFFER_CPC_SQL = f"coalesce({_decimal(_general_cost('$.cpc_v2.amount'))}, {_decimal(_general_cost('$.cpc'))} / 100)"

# -- table specs -----------------------------------------------------------------------------------

OFFERS = TableSpec(
    table="metapic_offers",
    source="metapic_offer",
    key=("offer_id",),
    created_field=None,
    # written by the participants feed's step "mark terminal offers' participants as read once more"
    step_columns=("participants_final_read_at",),
    fields=(
        Field("offer_id", "$.id", "integer", required=True),
        Field("campaign_title", "$.campaign_title", "string"),
        Field("store_id", "$.store_id", "integer"),
        Field("store_name", sql=f"coalesce({_s('$.store_name')}, {_s('$.store.name')})"),
        Field(
            "currency",
            sql=f"coalesce({_s('$.currency')}, {_s('$.store.currency')}, "
            f"{_general_cost('$.cpc_v2.currency')}, {_general_cost('$.currency')})",
        ),
        Field("type", "$.type", "string"),
        Field("token", "$.token", "string"),
        Field("has_product_seeding", "$.has_product_seeding", "boolean"),
        Field("has_onetime_payment", "$.has_onetime_payment", "boolean"),
        Field("cpc", sql=OFFER_CPC_SQL),
        Field("cpa", sql=_decimal(_general_cost("$.cpa"))),
        Field("valid_from", "$.valid_from", "timestamp"),
        Field("valid_until", "$.valid_until", "timestamp"),
    ),
)

PARTICIPANTS = TableSpec(
    table="metapic_participants",
    source="metapic_participant",
    key=("offer_id", "participant_key"),
    created_field=None,
    records_sql=_keyed_records_sql(),
    fields=(
        Field("offer_id", sql="label_offer_id"),  # the offer whose list it came from
        Field("participant_key", sql="participant_key"),
        Field("participant_id", "$.id", "integer"),
        Field("user_id", "$.user_id", "integer"),
        Field("display_name", "$.display_name", "string"),
        Field("pre_registered_identifier", "$.pre_registered_identifier", "string"),
        Field("clicks", "$.clicks", "integer"),
        Field("payment_amount", "$.payment_amount", "decimal_text"),
    ),
)

_PARTICIPANT_STATUS = "json_extract_string(rec, '$.status')"

DAILY_STATS = TableSpec(
    table="metapic_participant_daily_stats",
    source=None,  # no history: the participant's status is kept as columns only
    key=("offer_id", "participant_key", "date"),
    created_field=None,
    records_sql=STATS_RECORDS_SQL,
    fields=(
        Field("offer_id", sql="label_offer_id"),
        Field("participant_key", sql="participant_key"),
        Field("date", sql="label_date"),
        Field("participant_id", "$.id", "integer"),
        Field("user_id", "$.user_id", "integer"),
        Field("display_name", "$.display_name", "string"),
        Field("clicks", "$.clicks", "integer"),
        Field("links_created", "$.links_created", "integer"),
        Field("estimated_gp", "$.estimated_gp", "decimal_text"),
        Field("estimated_earning_to_cost_ratio", "$.estimated_earning_to_cost_ratio", "decimal_text"),
        Field("source_status", sql=_PARTICIPANT_STATUS),
        Field("status", sql=f"CAST({status_case_sql('metapic_participant', _PARTICIPANT_STATUS)} AS VARCHAR)"),
    ),
)

OFFERS_SUMMARY_SQL = """
SELECT count(*) AS offers,
       count(*) FILTER (WHERE status = 'active') AS live_offers,
       count(*) FILTER (WHERE status IN ('pending', 'paused')) AS upcoming_or_paused_offers,
       count(*) FILTER (WHERE status IS NULL) AS offers_with_unknown_status
FROM wh.main.metapic_offers
"""

PARTICIPANTS_SUMMARY_SQL = """
SELECT count(*) AS participants,
       count(*) FILTER (WHERE p.status = 'active') AS participants_active,
       sum(p.clicks) AS participant_clicks,
       sum(p.clicks) FILTER (WHERE o.status = 'active') AS participant_clicks_live_offers,
       count(*) FILTER (WHERE p.payment_amount > 0) AS participants_paid,
       count(DISTINCT o.currency) FILTER (WHERE p.payment_amount > 0) AS payment_currencies
FROM wh.main.metapic_participants AS p LEFT JOIN wh.main.metapic_offers AS o USING (offer_id)
"""

# -- syncs -----------------------------------------------------------------------------------------


@dataclass
class Fetcher:
    """What every Metapic sync needs besides the warehouse."""

    client: ApiClient
    user_id: str
    page_size: int = MAX_PAGE_SIZE
    max_workers: int = 4
    log: LogFn = lambda _m: None
    on_progress: Callable[[str, int], None] | None = None

    @property
    def size(self) -> int:
        return max(1, min(self.page_size or MAX_PAGE_SIZE, MAX_PAGE_SIZE))

    def progress(self, label: str, records: int) -> None:
        """Progress per list kind (``participants``), not per offer."""
        if self.on_progress:
            self.on_progress(label.split(":", 1)[0], records)


def sync_offers(*, warehouse: Warehouse, fetcher: Fetcher, run_id: str) -> SyncReport:
    """Read the whole campaign list (every status) and merge it: the list is small."""
    client = fetcher.client
    params = {
        "created_by": fetcher.user_id,
        "statuses[]": list(OFFER_STATUSES),
        "include[]": list(OFFER_INCLUDES),
        "sort_by": "id:asc",  # stable pages: new offers arrive at the end
    }

    def fetch(load: StreamLoad) -> Fetched:
        load.read_state({"prior_offers": "SELECT offer_id FROM wh.main.metapic_offers"})
        walk = walk_pages(client, OFFERS_PATH, params, load.add, label="offers", size=fetcher.size)
        warnings = list(walk.warnings)
        missing = load.query(
            "SELECT count(*) FROM prior_offers AS p WHERE NOT EXISTS (SELECT 1 FROM recs "
            "WHERE TRY_CAST(json_extract_string(rec, '$.id') AS BIGINT) = p.offer_id)"
        )[0][0]
        if missing and walk.complete:
            warnings.append(f"metapic_offers: {missing} offer(s) no longer listed under any status; kept as last seen")
        return Fetched(
            cursor={"offers_listed": walk.records},
            mode="full",
            warnings=warnings,
            full_walk=walk.complete,
            steps=[summary_step(OFFERS_SUMMARY_SQL)],
        )

    return run_stream(
        warehouse=warehouse, stream=OFFERS.table, specs=[OFFERS], run_id=run_id, fetch=fetch, client=client,
        on_progress=fetcher.progress,
    )


def participants_path(offer_id: int) -> str:
    return f"{OFFERS_PATH}/{offer_id}/participants"


def _offers_to_read_sql() -> str:
    """Every known offer: is it terminal, and were its participants read since it became so?

    "Since" is measured against the offer's last non-terminal status: the final read counts unless
    the offer was in a non-terminal status after it (reopened, then ended again: another final
    read). Moving from one terminal status to another (``ended`` -> ``deleted``) changes nothing
    a participant list can show, so it asks for no request.
    """
    terminal = ", ".join(f"'{s}'" for s in TERMINAL_OFFER_STATUSES)
    return f"""
        SELECT o.offer_id,
               coalesce(o.source_status IN ({terminal}), false) AS terminal,
               o.participants_final_read_at IS NOT NULL AND NOT EXISTS (
                   SELECT 1 FROM wh.main.status_history AS h
                   WHERE h.source = '{OFFERS.source}' AND h.entity_id = CAST(o.offer_id AS VARCHAR)
                     AND coalesce(h.source_status NOT IN ({terminal}), true)
                     AND (h.valid_to IS NULL OR h.valid_to > o.participants_final_read_at)) AS final_read
        FROM wh.main.metapic_offers AS o"""


_PARTICIPANT_ENTITY = PARTICIPANTS.entity_id_sql("{a}")
_HISTORY = "wh.main.status_history"


def rekey_signed_up(con: duckdb.DuckDBPyConnection, now: datetime) -> int:
    """Warehouse rows keyed ``id:``/``user:`` by an earlier version for a participant this run
    keys by its pre-registered identifier or e-mail (same offer, same id or user_id): the row and
    its history take the new key, so the merge updates it instead of adding a second participant.
    When the warehouse already has a row under the new key too (the stale row of the participant
    before it signed up), the old-keyed row is the duplicate: it is removed and its current
    history interval closed. Runs in the commit's transaction, before the merge."""
    table = f"wh.main.{PARTICIPANTS.table}"
    cur = f"cur_{PARTICIPANTS.table}"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE rekey AS
        WITH c AS (  -- the keys an earlier rule gave this run's pre-registered records (equi-joins only)
            SELECT offer_id, participant_key, 'id:' || participant_id AS alias FROM {cur}
            WHERE participant_id IS NOT NULL AND NOT (participant_key LIKE 'id:%' OR participant_key LIKE 'user:%')
            UNION ALL
            SELECT offer_id, participant_key, 'user:' || user_id FROM {cur}
            WHERE user_id IS NOT NULL AND NOT (participant_key LIKE 'id:%' OR participant_key LIKE 'user:%')
        )
        SELECT c.offer_id, c.participant_key AS new_key, t.participant_key AS old_key,
               {_PARTICIPANT_ENTITY.format(a="c")} AS new_entity, {_PARTICIPANT_ENTITY.format(a="t")} AS old_entity,
               row_number() OVER (PARTITION BY c.offer_id, c.participant_key
                                  ORDER BY t.synced_at DESC, t.participant_key) = 1
               AND NOT EXISTS (SELECT 1 FROM {table} AS e
                               WHERE e.offer_id = c.offer_id AND e.participant_key = c.participant_key) AS rename
        FROM c
        JOIN {table} AS t ON t.offer_id = c.offer_id AND t.participant_key = c.alias
        WHERE NOT EXISTS (SELECT 1 FROM {cur} AS o
                          WHERE o.offer_id = t.offer_id AND o.participant_key = t.participant_key)
        QUALIFY count(*) OVER (PARTITION BY t.offer_id, t.participant_key) = 1
        """
    )
    count = con.execute("SELECT count(*) FROM rekey").fetchone()[0]
    if not count:
        return 0
    source = {"src": PARTICIPANTS.source}
    con.execute(
        f"UPDATE {_HISTORY} SET valid_to = greatest($now, valid_from) FROM rekey AS r "
        f"WHERE NOT r.rename AND {_HISTORY}.source = $src AND {_HISTORY}.entity_id = r.old_entity "
        f"AND {_HISTORY}.valid_to IS NULL",
        {**source, "now": now},
    )
    con.execute(
        f"UPDATE {_HISTORY} SET entity_id = r.new_entity FROM rekey AS r "
        f"WHERE r.rename AND {_HISTORY}.source = $src AND {_HISTORY}.entity_id = r.old_entity",
        source,
    )
    con.execute(
        f"INSERT INTO {table} SELECT t.* REPLACE (r.new_key AS participant_key) FROM {table} AS t "
        "JOIN rekey AS r ON r.offer_id = t.offer_id AND r.old_key = t.participant_key WHERE r.rename"
    )
    con.execute(
        f"DELETE FROM {table} AS t USING rekey AS r WHERE r.offer_id = t.offer_id AND r.old_key = t.participant_key"
    )
    return count


def find_relisted(con: duckdb.DuckDBPyConnection) -> int:
    """Participants this run lists that have no row but a closed history: removed by an earlier
    complete read (the snapshot rule) and listed again (re-invited, or a list that moved by as many
    additions as removals while it was read, which no total shows). Their last interval is kept in
    the temp table ``relisted`` for :func:`continue_relisted`. Runs before the merge, after
    :func:`rekey_signed_up`."""
    table = f"wh.main.{PARTICIPANTS.table}"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE relisted AS
        SELECT h.entity_id, h.valid_from, h.valid_to, h.source_status
        FROM (SELECT DISTINCT {_PARTICIPANT_ENTITY.format(a="c")} AS entity_id
              FROM cur_{PARTICIPANTS.table} AS c
              WHERE NOT EXISTS (SELECT 1 FROM {table} AS t
                                WHERE t.offer_id = c.offer_id AND t.participant_key = c.participant_key)) AS n
        JOIN {_HISTORY} AS h ON h.source = $src AND h.entity_id = n.entity_id
        QUALIFY row_number() OVER (PARTITION BY h.entity_id ORDER BY h.valid_from DESC) = 1
            AND h.valid_to IS NOT NULL
        """,
        {"src": PARTICIPANTS.source},
    )
    return con.execute("SELECT count(*) FROM relisted").fetchone()[0]


def continue_relisted(con: duckdb.DuckDBPyConnection, now: datetime) -> None:
    """A participant listed again goes on as one entity with contiguous history: its last status
    is taken to have lasted until it was seen again (the merge has just opened an interval at
    ``now``); when that status is the one it is listed with, the two intervals are one. Runs in
    the commit's transaction after the merge."""
    params = {"src": PARTICIPANTS.source, "now": now}
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE relisted_now AS
        SELECT r.entity_id, r.valid_from,
               h.source_status IS NOT DISTINCT FROM r.source_status AS same_status
        FROM relisted AS r
        JOIN {_HISTORY} AS h ON h.source = $src AND h.entity_id = r.entity_id
                           AND h.valid_to IS NULL AND h.valid_from = $now AND r.valid_from < $now
        """,
        params,
    )
    con.execute(
        f"DELETE FROM {_HISTORY} AS h USING relisted_now AS r WHERE h.source = $src AND h.entity_id = r.entity_id "
        "AND r.same_status AND h.valid_to IS NULL AND h.valid_from = $now",
        params,
    )
    con.execute(
        f"UPDATE {_HISTORY} SET valid_to = CASE WHEN r.same_status THEN NULL ELSE $now END FROM relisted_now AS r "
        f"WHERE {_HISTORY}.source = $src AND {_HISTORY}.entity_id = r.entity_id AND {_HISTORY}.valid_from = r.valid_from",
        params,
    )


def remove_unlisted(con: duckdb.DuckDBPyConnection, now: datetime, offer_ids: list[int]) -> int:
    """The snapshot rule: a complete read of an offer's participant list is the whole truth for
    that offer. A participant of those offers that this run's read did not list (under any key it
    could have: a record quarantined for a wrong type still counts as listed) leaves the table and
    its current history interval is closed, so it no longer counts anywhere. Offers read
    incompletely (error, 404, a page lie, a list that moved while read) are not passed here."""
    if not offer_ids:
        return 0
    table = f"wh.main.{PARTICIPANTS.table}"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE unlisted AS
        SELECT t.offer_id, t.participant_key, {_PARTICIPANT_ENTITY.format(a="t")} AS entity_id
        FROM {table} AS t
        WHERE list_contains($ids, t.offer_id)
          AND NOT EXISTS (SELECT 1 FROM typed_{PARTICIPANTS.table} AS c
                          WHERE c.offer_id = t.offer_id AND c.participant_key = t.participant_key)
        """,
        {"ids": offer_ids},
    )
    count = con.execute("SELECT count(*) FROM unlisted").fetchone()[0]
    if count:
        con.execute(
            f"UPDATE {_HISTORY} SET valid_to = greatest($now, valid_from) FROM unlisted AS u "
            f"WHERE {_HISTORY}.source = $src AND {_HISTORY}.entity_id = u.entity_id AND {_HISTORY}.valid_to IS NULL",
            {"now": now, "src": PARTICIPANTS.source},
        )
        con.execute(
            f"DELETE FROM {table} AS t USING unlisted AS u "
            "WHERE u.offer_id = t.offer_id AND u.participant_key = t.participant_key"
        )
    return count


# The participants that still exist: an entity of the participants' history without a row here
# was removed (snapshot rule) and has no current interval (pipelines.checks).
PARTICIPANT_ENTITIES_SQL = f"SELECT {PARTICIPANTS.entity_id_sql()} FROM {PARTICIPANTS.table}"


def sync_participants(*, warehouse: Warehouse, fetcher: Fetcher, run_id: str, full_refresh: bool = False) -> SyncReport:
    """Read the participants of every offer that can still change, and once more of every offer
    that became terminal since its participants were last read; concurrently, one list per offer.

    The "read once more" mark (``metapic_offers.participants_final_read_at``) is written in the
    same transaction as those participants, and only when the list was read completely.
    """
    client = fetcher.client
    mode = "full" if full_refresh else "incremental"

    def fetch(load: StreamLoad) -> Fetched:
        state = load.read_state({"offers": _offers_to_read_sql()})
        # a warehouse whose participants an earlier key rule wrote reads every list once more
        # (terminal offers included), so rows keyed the old way are re-keyed everywhere
        upgrade = bool(state) and state.get("key_version") != PARTICIPANT_KEY_VERSION
        chosen = load.query(
            "SELECT offer_id, terminal FROM offers WHERE ? OR NOT terminal OR NOT final_read ORDER BY offer_id",
            [full_refresh or upgrade],
        )
        if not chosen:
            fetcher.log("metapic_participants: no offers in the warehouse to read participants of")
        if upgrade:
            fetcher.log("metapic_participants: participants keyed by an earlier rule: every offer's list is read once")
        fetcher.log(
            f"metapic_participants: reading {len(chosen)} offer(s), "
            f"{sum(1 for _, t in chosen if t)} of them terminal (final read)"
        )

        def reader(offer_id: int):
            def produce(emit: Emit[Page]) -> ListWalk:
                return walk_pages(
                    client, participants_path(offer_id), {}, emit,
                    label=f"participants:{offer_id}", size=fetcher.size, allow_not_found=True,
                )

            return produce

        walks = run_producers([reader(o) for o, _ in chosen], load.add, max_workers=fetcher.max_workers)
        warnings = [w for walk in walks for w in walk.warnings]  # type: ignore[union-attr]
        final = [
            offer_id
            for (offer_id, is_terminal), walk in zip(chosen, walks, strict=True)
            if is_terminal and (walk.complete or walk.not_found)  # type: ignore[union-attr]
        ]
        # the offers whose list this run read whole: the snapshot rule applies to them only
        complete = [offer_id for (offer_id, _), walk in zip(chosen, walks, strict=True) if walk.complete]  # type: ignore[union-attr]
        return Fetched(
            # the stream's position is per campaign (participants_final_read_at, written in this
            # transaction); how many lists this run read is in the log and sync_runs.requests
            cursor={"position": "metapic_offers.participants_final_read_at", "key_version": PARTICIPANT_KEY_VERSION},
            mode=mode,
            warnings=warnings,
            full_walk=full_refresh,
            steps=participant_steps(run_id, complete, final, fetcher.log),
        )

    return run_stream(
        warehouse=warehouse, stream=PARTICIPANTS.table, specs=[PARTICIPANTS], run_id=run_id, fetch=fetch,
        client=client, on_progress=fetcher.progress,
    )


def participant_steps(run_id: str, complete: list[int], final: list[int], log: LogFn) -> list[CommitStep]:
    """The participants' own writes in the commit's transaction, in order: re-key rows an earlier
    key rule wrote and find participants listed again (before the merge); then quarantine keyless
    records, join relisted participants' history, apply the snapshot rule to the lists read whole,
    and mark the terminal offers read once more (after it)."""
    counts: dict[str, int] = {}

    def rekey(con: duckdb.DuckDBPyConnection, now: datetime) -> StepResult:
        counts["rekeyed"] = rekey_signed_up(con, now)
        return StepResult(metrics={"participants_rekeyed": float(counts["rekeyed"])})

    def relisted(con: duckdb.DuckDBPyConnection, now: datetime) -> StepResult:
        counts["relisted"] = find_relisted(con)
        return StepResult(metrics={"participants_relisted": float(counts["relisted"])})

    def continue_history(con: duckdb.DuckDBPyConnection, now: datetime) -> None:
        if counts.get("relisted"):
            continue_relisted(con, now)

    def snapshot_rule(con: duckdb.DuckDBPyConnection, now: datetime) -> StepResult:
        counts["removed"] = remove_unlisted(con, now, complete)
        if counts["removed"] or counts.get("rekeyed") or counts.get("relisted"):
            log(
                f"metapic_participants: {counts['removed']} participant(s) no longer listed removed, "
                f"{counts.get('relisted', 0)} listed again, {counts.get('rekeyed', 0)} row(s) keyed the old way re-keyed"
            )
        return StepResult(metrics={"participants_removed": float(counts["removed"])})

    def mark_final_read(con: duckdb.DuckDBPyConnection, now: datetime) -> None:
        if final:
            con.execute(
                "UPDATE wh.main.metapic_offers SET participants_final_read_at = $now WHERE list_contains($ids, offer_id)",
                {"now": now, "ids": final},
            )

    return [
        CommitStep("re-key participants keyed by an earlier rule", rekey, before_merge=True),
        CommitStep("find participants listed again", relisted, before_merge=True),
        quarantine_keyless(PARTICIPANTS.table, run_id),
        CommitStep("continue the history of participants listed again", continue_history),
        CommitStep("remove participants no longer listed (snapshot rule)", snapshot_rule),
        CommitStep("mark terminal offers' participants as read once more", mark_final_read),
        summary_step(PARTICIPANTS_SUMMARY_SQL),
    ]


def live_offers_sql(day: date) -> str:
    """Offers that may have statistics on ``day``: within their validity dates (when known) and
    not already observed ended/deleted before the day began."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    terminal = ", ".join(f"'{s}'" for s in TERMINAL_OFFER_STATUSES)
    return f"""
        SELECT o.offer_id FROM wh.main.metapic_offers AS o
        WHERE (o.valid_from IS NULL OR o.valid_from < TIMESTAMPTZ '{end.isoformat()}')
          AND (o.valid_until IS NULL OR o.valid_until >= TIMESTAMPTZ '{start.isoformat()}')
          AND NOT EXISTS (
              SELECT 1 FROM wh.main.status_history AS h
              WHERE h.source = '{OFFERS.source}' AND h.entity_id = CAST(o.offer_id AS VARCHAR)
                AND h.valid_to IS NULL AND h.source_status IN ({terminal})
                AND h.valid_from < TIMESTAMPTZ '{start.isoformat()}')
        ORDER BY o.offer_id"""


def sync_daily_stats(*, warehouse: Warehouse, fetcher: Fetcher, run_id: str, day: date) -> SyncReport:
    """One day of participants-stats (``start_date = end_date = day``, one list per live offer),
    as its own stream ``metapic_participant_daily_stats:<day>``.

    Re-running a day replaces that day's rows of every offer read completely: unchanged rows stay
    as they are, rows the API no longer returns for the day are deleted.
    """
    client = fetcher.client
    stream = f"{DAILY_STATS.table}:{day.isoformat()}"
    requests_before, retries_before = client.stats.requests, client.stats.retries

    def fetch(load: StreamLoad) -> Fetched:
        load.read_state({"live_offers": live_offers_sql(day), "participant_aliases": PARTICIPANT_ALIASES_SQL})
        offer_ids = [r[0] for r in load.query("SELECT offer_id FROM live_offers")]
        if not offer_ids:
            fetcher.log(f"{stream}: no offer in the warehouse was live that day (materialize metapic_offers first?)")
        params = {"start_date": day.isoformat(), "end_date": day.isoformat()}

        def reader(offer_id: int):
            def produce(emit: Emit[Page]) -> ListWalk:
                return walk_pages(
                    client, f"{OFFERS_PATH}/{offer_id}/participants-stats", params, emit,
                    label=f"stats:{offer_id}:{day.isoformat()}", size=fetcher.size, allow_not_found=True,
                )

            return produce

        walks = run_producers([reader(o) for o in offer_ids], load.add, max_workers=fetcher.max_workers)
        warnings = [w for walk in walks for w in walk.warnings]  # type: ignore[union-attr]
        complete = [o for o, walk in zip(offer_ids, walks, strict=True) if walk.complete]  # type: ignore[union-attr]

        def replace_day(con: duckdb.DuckDBPyConnection, now: datetime) -> None:
            con.execute(
                f"""
                DELETE FROM wh.main.{DAILY_STATS.table} AS t
                WHERE t.date = $day AND list_contains($ids, t.offer_id)
                  AND NOT EXISTS (SELECT 1 FROM cur_{DAILY_STATS.table} AS c
                                  WHERE c.offer_id = t.offer_id AND c.participant_key = t.participant_key
                                    AND c.date = t.date)
                """,
                {"day": day, "ids": complete},
            )

        return Fetched(
            cursor={"date": day.isoformat(), "offers_read": len(offer_ids), "complete": len(complete)},
            mode="partition",
            warnings=warnings,
            full_walk=len(complete) == len(offer_ids),
            steps=[
                quarantine_keyless(DAILY_STATS.table, run_id),
                CommitStep("delete the day's rows no longer listed by offers read whole", replace_day),
            ],
            requests=client.stats.requests - requests_before,
            retries=client.stats.retries - retries_before,
        )

    return run_stream(
        warehouse=warehouse, stream=stream, specs=[DAILY_STATS], run_id=run_id, fetch=fetch, client=client,
        report_stream=DAILY_STATS.table, on_progress=fetcher.progress,
    )


def combine_reports(stream: str, reports: list[SyncReport]) -> SyncReport:
    """One report for several days of one table (a single-run backfill)."""
    total = TableResult(stream)
    for report in reports:
        if report.result is None:
            continue
        for t in report.result.tables.values():
            for name in ("received", "inserted", "updated", "unchanged", "quarantined", "status_changes"):
                setattr(total, name, getattr(total, name) + getattr(t, name))
    committed = max((r.result.committed_at for r in reports if r.result), default=datetime.now(UTC))
    result = LoadResult(stream, committed, {stream: total}, {"days": float(len(reports))})
    return SyncReport(
        stream=stream,
        mode="partition" if len(reports) == 1 else "partition range",
        result=result,
        requests=sum(r.requests for r in reports),
        retries=sum(r.retries for r in reports),
        seconds=sum(r.seconds for r in reports),
        warnings=[w for r in reports for w in r.warnings],
    )
