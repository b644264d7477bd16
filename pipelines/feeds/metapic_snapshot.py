"""The Metapic participants' own warehouse writes, in the participants commit's transaction:
re-keying, participants listed again, and the snapshot rule.

- Snapshot rule: a complete read of a campaign's participant list (every page, the total never
  moving between pages) is the whole truth for it; a participant it does not list is removed and
  its history interval closed (:func:`remove_unlisted`). An incomplete read removes nothing. One
  listed again continues its history (:func:`find_relisted`, :func:`continue_relisted`).
- A warehouse written under an earlier key rule is re-keyed (:func:`rekey_signed_up`), so a
  participant keeps one row (the rule: :mod:`pipelines.feeds.metapic_keys`).

The order they run in: :func:`pipelines.feeds.metapic_participants.participant_steps`.
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from pipelines.feeds.metapic_specs import PARTICIPANTS

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
