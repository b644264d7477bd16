"""Metapic participants' keys, and no e-mail address in the warehouse: SQL over staged records.

- Participants can have no ``id`` (every docs example has ``"id": null``): they are keyed by
  :data:`PARTICIPANT_KEY_SQL`. E-mail addresses (``pre_registered_email``, a ``display_name`` or
  identifier that is an address, any top-level field named like ``*email*``) are removed from
  ``raw`` (:data:`SCRUBBED_REC_SQL`); a participant known only by e-mail is keyed by the SHA-256 of
  the lower-cased address.

Assumptions where the docs are silent:

- A participant without ``id``/``user_id`` shows its pre-registered identifier (or e-mail) as
  ``display_name`` in participants-stats, which carries no ``pre_registered_*`` fields; so the key
  falls back to ``display_name`` with the same prefixes. A participant with none of these is
  quarantined (:func:`quarantine_keyless`: no stable key exists).
- A pre-registered participant who signs up keeps serving its pre-registered identifier or e-mail
  (the docs show no sign-up): that stays its key, so the sign-up updates its one row.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from pipelines.warehouse.loader import CommitStep, StepResult, merge_quarantine

_EMAIL = r"[^@\s]+@[^@\s]+\.[^@\s]+"


def json_text(path: str, rec: str = "rec") -> str:
    """A JSON field of the staged record as trimmed text, NULL when absent or blank."""
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
    WHEN {json_text('$.pre_registered_identifier')} IS NOT NULL THEN {_pre_key(json_text('$.pre_registered_identifier'))}
    WHEN {json_text('$.pre_registered_email')} IS NOT NULL THEN {_email_key(json_text('$.pre_registered_email'))}
    WHEN {json_text('$.id')} IS NOT NULL THEN 'id:' || {json_text('$.id')}
    WHEN {json_text('$.user_id')} IS NOT NULL THEN 'user:' || {json_text('$.user_id')}
    WHEN {json_text('$.display_name')} IS NOT NULL THEN {_pre_key(json_text('$.display_name'))}
END"""

# The record without e-mail addresses: every top-level field named like *email* is dropped, and
# display_name / pre_registered_identifier are dropped when they hold an address.
SCRUBBED_REC_SQL = f"""json_merge_patch(json_merge_patch(json_merge_patch(rec,
    coalesce(to_json(map_from_entries(list_transform(
        list_filter(json_keys(rec), lambda k: k ILIKE '%mail%'),
        lambda k: {{'k': k, 'v': NULL::JSON}}))), '{{}}')),
    CASE WHEN {_is_email(json_text('$.display_name'))} THEN '{{"display_name": null}}' ELSE '{{}}' END),
    CASE WHEN {_is_email(json_text('$.pre_registered_identifier'))} THEN '{{"pre_registered_identifier": null}}' ELSE '{{}}' END)"""


def keyed_records_sql(extra: str = "") -> str:
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
