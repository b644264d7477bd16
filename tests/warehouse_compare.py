"""Compare two warehouses row for row: what "the warehouse ends identical" means in the tests.

A dump holds every base table of a DuckDB warehouse in a canonical order, minus what may honestly
differ between two syncs of the same world:

- ``sync_runs`` (one row per run: a retried or interrupted sync has more runs, and more requests)
  and ``sync_failures`` (one row per failed attempt: a retried step leaves one);
- ``run_id`` / ``last_run_id`` (Dagster's run ids) and ``cpamoe_lead_files.loaded_at`` (wall clock).

Everything else, including ``synced_at``, ``first_seen_at``, ``valid_from``/``valid_to`` and the
cursors, is compared: the tests freeze the warehouse clock (``WAREHOUSE_NOW``) to the sandbox's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb

SKIPPED_TABLES = frozenset({"sync_runs", "sync_failures"})
VOLATILE_COLUMNS = {"*": frozenset({"run_id", "last_run_id"}), "cpamoe_lead_files": frozenset({"loaded_at"})}
ENTITY_KEYS = {
    "cpc_orders": ("order_id",),
    "cpl_orders": ("order_id",),
    "swap_orders": ("order_id",),
    "swap_order_sides": ("order_id", "side"),
    "cpamoe_leads": ("lead_id",),
    "metapic_offers": ("offer_id",),
    "metapic_participants": ("offer_id", "participant_key"),
}
# History sources whose entities can leave their table, with the table and the entity ids (and
# statuses) still in it: Metapic participants a complete read no longer lists are removed (the
# snapshot rule, pipelines/feeds/metapic_snapshot.py). Written here from the documented entity id
# (``<offer_id>:<participant_key>``), not taken from the pipeline's code.
REMOVABLE = {
    "metapic_participant": (
        "metapic_participants",
        "SELECT CAST(offer_id AS VARCHAR) || ':' || participant_key AS entity_id, source_status "
        "FROM metapic_participants",
    ),
}


@dataclass
class Table:
    columns: tuple[str, ...]
    rows: list[tuple]

    def where(self, **equals) -> list[tuple]:
        index = {c: i for i, c in enumerate(self.columns)}
        return [r for r in self.rows if all(r[index[k]] == v for k, v in equals.items())]


Dump = dict[str, Table]


def connect_read_only(path: Path | str) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path), read_only=True)
    con.execute("SET TimeZone = 'UTC'")
    return con


def _hashable(value):
    return repr(value) if isinstance(value, list | dict) else value


def dump(path: Path | str, *, skip: frozenset[str] = SKIPPED_TABLES) -> Dump:
    """Every base table (but ``skip``), volatile columns left out, rows sorted."""
    with connect_read_only(path) as con:
        tables = [
            r[0]
            for r in con.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_type = 'BASE TABLE' AND table_schema = 'main' ORDER BY 1"
            ).fetchall()
        ]
        result: Dump = {}
        for table in tables:
            if table in skip:
                continue
            volatile = VOLATILE_COLUMNS["*"] | VOLATILE_COLUMNS.get(table, frozenset())
            columns = [
                r[0]
                for r in con.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = ? "
                    "ORDER BY ordinal_position",
                    [table],
                ).fetchall()
                if r[0] not in volatile
            ]
            select = ", ".join(f'"{c}"' for c in columns)
            rows = con.execute(f'SELECT {select} FROM "{table}" ORDER BY ALL').fetchall()
            result[table] = Table(tuple(columns), [tuple(map(_hashable, r)) for r in rows])
    return result


def differences(a: Dump, b: Dump, *, tables: list[str] | None = None, sample: int = 3) -> list[str]:
    """What differs between two dumps (empty when they are identical), readable in a failure."""
    problems = []
    names = tables if tables is not None else sorted(set(a) | set(b))
    for name in names:
        if name not in a or name not in b:
            problems.append(f"{name}: only in {'the first' if name in a else 'the second'} warehouse")
            continue
        ta, tb = a[name], b[name]
        if ta.columns != tb.columns:
            problems.append(f"{name}: columns differ {ta.columns} vs {tb.columns}")
            continue
        if ta.rows == tb.rows:
            continue
        rows_a, rows_b = set(ta.rows), set(tb.rows)
        only_a = [r for r in ta.rows if r not in rows_b]
        only_b = [r for r in tb.rows if r not in rows_a]
        problems.append(
            f"{name}: {len(ta.rows)} vs {len(tb.rows)} rows; {len(only_a)} only in the first "
            f"(e.g. {_short(only_a[:sample])}), {len(only_b)} only in the second (e.g. {_short(only_b[:sample])})"
        )
    return problems


def _short(rows: list[tuple], width: int = 160) -> str:
    return "; ".join(repr(r)[:width] for r in rows)


def assert_same(a: Dump, b: Dump, *, tables: list[str] | None = None) -> None:
    problems = differences(a, b, tables=tables)
    assert not problems, "warehouses differ:\n" + "\n".join(problems)


def integrity_problems(path: Path | str) -> list[str]:
    """What a consistent warehouse never has: duplicate keys, history intervals that overlap, leave
    gaps or lack exactly one current row, entities without history, a cursor ahead of what was
    received (rows and quarantined records).

    An entity of a :data:`REMOVABLE` source that left its table (a Metapic participant a complete
    read no longer listed: the snapshot rule) keeps its history with the last interval closed, so
    it is the one case without a current interval; one still in its table must have a current
    interval holding its status, and a current interval without a row is a problem."""
    problems = []
    with connect_read_only(path) as con:
        existing = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        for table, key in ENTITY_KEYS.items():
            if table not in existing:
                continue
            cols = ", ".join(key)
            dupes = con.execute(
                f"SELECT count(*) FROM (SELECT {cols} FROM {table} GROUP BY ALL HAVING count(*) > 1)"
            ).fetchone()[0]
            if dupes:
                problems.append(f"{table}: {dupes} duplicated key(s)")
        removable = {source: sql for source, (table, sql) in REMOVABLE.items() if table in existing}
        kept = " UNION ALL ".join(
            f"SELECT '{source}' AS source, entity_id FROM ({sql})" for source, sql in removable.items()
        )
        removable_sources = ", ".join(f"'{source}'" for source in removable) or "''"
        history = con.execute(
            f"""
            WITH kept AS ({kept or "SELECT NULL::VARCHAR AS source, NULL::VARCHAR AS entity_id WHERE false"}),
            h AS (
                SELECT source, entity_id, valid_from, valid_to,
                       lead(valid_from) OVER w AS next_from,
                       row_number() OVER w AS n, count(*) OVER (PARTITION BY source, entity_id) AS total
                FROM status_history
                WINDOW w AS (PARTITION BY source, entity_id ORDER BY valid_from, valid_to NULLS LAST)
            )
            SELECT source, count(*) FROM h
            WHERE valid_to < valid_from
               OR (next_from IS NOT NULL AND valid_to IS DISTINCT FROM next_from)
               OR (n = total AND valid_to IS NOT NULL
                   AND (source NOT IN ({removable_sources})
                        OR EXISTS (SELECT 1 FROM kept AS k WHERE k.source = h.source AND k.entity_id = h.entity_id)))
               OR (n < total AND valid_to IS NULL)
            GROUP BY ALL
            """
        ).fetchall()
        problems += [f"status_history {source}: {n} interval(s) overlap, leave a gap or are not current" for source, n in history]
        for source, sql in removable.items():
            rowless = con.execute(
                f"SELECT count(*) FROM status_history WHERE source = '{source}' AND valid_to IS NULL "
                f"AND entity_id NOT IN (SELECT entity_id FROM ({sql}))"
            ).fetchone()[0]
            if rowless:
                problems.append(f"status_history {source}: {rowless} current interval(s) of an entity without a row")
            table = REMOVABLE[source][0]
            missing = con.execute(
                f"SELECT count(*) FROM ({sql}) AS t(entity_id, source_status) WHERE source_status IS NOT NULL "
                f"AND NOT EXISTS (SELECT 1 FROM status_history AS h WHERE h.source = '{source}' "
                "AND h.entity_id = t.entity_id AND h.valid_to IS NULL AND h.source_status = t.source_status)"
            ).fetchone()[0]
            if missing:
                problems.append(f"{table}: {missing} row(s) whose status has no current history interval")
        for table, source in (("cpc_orders", "cpc"), ("cpl_orders", "cpl"), ("swap_orders", "swap")):
            if table not in existing:
                continue
            missing = con.execute(
                f"SELECT count(*) FROM {table} AS t WHERE source_status IS NOT NULL AND NOT EXISTS "
                f"(SELECT 1 FROM status_history AS h WHERE h.source = '{source}' AND h.entity_id = t.order_id "
                "AND h.valid_to IS NULL AND h.source_status = t.source_status)"
            ).fetchone()[0]
            if missing:
                problems.append(f"{table}: {missing} row(s) whose status has no current history interval")
            # what was received: the rows, and the records quarantined with their reason
            newest = f"""greatest(
                coalesce((SELECT max(created_at) FROM {table}), TIMESTAMPTZ '-infinity'),
                coalesce((SELECT max(TRY_CAST(json_extract_string(raw, '$.created_at') AS TIMESTAMPTZ))
                          FROM quarantine WHERE stream = '{table}'), TIMESTAMPTZ '-infinity'))"""
            ahead = con.execute(
                f"""SELECT count(*) FROM sync_state
                    WHERE stream = '{table}'
                      AND CAST(json_extract_string(cursor, '$.created_watermark') AS TIMESTAMPTZ) > {newest}"""
            ).fetchone()[0]
            if ahead:
                problems.append(f"{table}: the cursor is ahead of the newest committed order")
    return problems
