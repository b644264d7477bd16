"""Asset checks: the warehouse's data-quality contract, visible in the UI.

Each check is a :class:`WarehouseCheck` (its asset, its name and a function of a read-only
connection). The asset that writes a table declares its checks (:func:`check_specs`) and
evaluates them at the end of its own step (:func:`evaluate_checks`): thirty checks as thirty steps
would each pay a process and a database open. A failing check names the offending keys or values in
its description and metadata, so the UI says *what* is wrong, not only that something is.
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import dagster as dg
import duckdb


SAMPLE = 20


@dataclass(frozen=True)
class Outcome:
    passed: bool
    description: str
    metadata: dict = field(default_factory=dict)
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR


Evaluate = Callable[[duckdb.DuckDBPyConnection], Outcome]


@dataclass(frozen=True)
class WarehouseCheck:
    asset: dg.AssetKey
    name: str
    description: str
    evaluate: Evaluate

    @property
    def key(self) -> dg.AssetCheckKey:
        return dg.AssetCheckKey(self.asset, self.name)


def _key(asset: dg.AssetsDefinition | dg.AssetKey | str) -> dg.AssetKey:
    if isinstance(asset, dg.AssetsDefinition):
        return asset.key
    return asset if isinstance(asset, dg.AssetKey) else dg.AssetKey(asset)


def check(asset, name: str, description: str) -> Callable[[Evaluate], WarehouseCheck]:
    """Decorator: ``@check(asset, name, description)`` over ``def evaluate(con) -> Outcome``."""

    def wrap(evaluate: Evaluate) -> WarehouseCheck:
        return WarehouseCheck(_key(asset), name, description, evaluate)

    return wrap


def check_specs(checks: Sequence[WarehouseCheck]) -> list[dg.AssetCheckSpec]:
    """The Dagster specs of ``checks``, declared on the asset whose step evaluates them."""
    if len({c.key for c in checks}) != len(checks):
        raise ValueError("two checks share an asset and a name")
    return [dg.AssetCheckSpec(c.name, asset=c.asset, description=c.description) for c in checks]


def evaluate_checks(warehouse, checks: Sequence[WarehouseCheck], log=None) -> Iterator[dg.AssetCheckResult]:
    """Evaluate ``checks`` on one read-only connection, inside the step of the asset they check.

    Why in that step: a step of its own per table would cost a process each, and one step for
    every table would be skipped as a whole when any one feed failed, leaving the tables that
    did commit unchecked.
    """
    if not checks:
        return
    on_wait = log.info if log is not None else None
    with warehouse.open(on_wait=on_wait).connect(read_only=True) as con:
        outcomes = [(c, c.evaluate(con)) for c in checks]
    for c, outcome in outcomes:
        yield dg.AssetCheckResult(
            asset_key=c.asset,
            check_name=c.name,
            passed=outcome.passed,
            description=outcome.description,
            metadata=outcome.metadata,
            severity=outcome.severity,
        )


# -- the checks every feed uses ------------------------------------------------------------------


def known_status_check(asset, table: str) -> WarehouseCheck:
    """Fails when a row carries a raw status the mapping does not know (``status`` NULL)."""

    @check(
        asset,
        f"{table}_known_statuses",
        f"Every {table}.source_status maps to a lifecycle_status (unknown values are kept with "
        "status NULL and named here).",
    )
    def evaluate(con) -> Outcome:
        rows = con.execute(
            f"SELECT source_status, count(*) FROM {table} "
            "WHERE status IS NULL AND source_status IS NOT NULL GROUP BY ALL ORDER BY 2 DESC"
        ).fetchall()
        unknown = {str(value): count for value, count in rows}
        if not unknown:
            return Outcome(True, "every status is known")
        return Outcome(
            False,
            f"unknown status value(s): {', '.join(sorted(unknown))}",
            {"unknown_values": dg.MetadataValue.json(unknown), "rows": sum(unknown.values())},
        )

    return evaluate


def unique_key_check(asset, table: str, key: Sequence[str]) -> WarehouseCheck:
    """Fails when a key appears more than once, naming the duplicated keys."""
    cols = ", ".join(key)

    @check(asset, f"{table}_unique_keys", f"({cols}) is unique in {table}.")
    def evaluate(con) -> Outcome:
        rows = con.execute(
            f"SELECT concat_ws(':', {cols}) AS k, count(*) FROM {table} GROUP BY ALL "
            f"HAVING count(*) > 1 ORDER BY 2 DESC LIMIT {SAMPLE}"
        ).fetchall()
        if not rows:
            return Outcome(True, "keys are unique")
        return Outcome(
            False,
            f"{len(rows)}{'+' if len(rows) == SAMPLE else ''} duplicated key(s), e.g. {rows[0][0]}",
            {"duplicated_keys": dg.MetadataValue.json({k: n for k, n in rows})},
        )

    return evaluate


def standard_checks(asset, table: str, key: Sequence[str], *, has_status: bool = True) -> list[WarehouseCheck]:
    """The checks every entity table gets."""
    checks = [unique_key_check(asset, table, key)]
    if has_status:
        checks.append(known_status_check(asset, table))
    return checks


def history_intervals_check(asset, source: str, entities_sql: str | None = None) -> WarehouseCheck:
    """status_history of one source: per entity, intervals neither overlap nor leave gaps, none
    ends before it starts, and exactly one is current (valid_to NULL).

    ``entities_sql`` (the entity ids that still have a row) is for a source whose entities can be
    removed (Metapic participants no longer listed): a removed entity has no current interval, and
    an entity still in its table must have one, while an entity with a current interval but no row
    is an error. Without it every entity must have a current interval.
    """

    @check(
        asset,
        f"status_history_{source}_intervals",
        f"status_history for source '{source}': contiguous intervals, exactly one current per entity.",
    )
    def evaluate(con) -> Outcome:
        keep, rowless = "true", ""
        if entities_sql is not None:
            keep = f"problem <> 'no current interval' OR entity_id IN ({entities_sql})"
            rowless = (
                "UNION ALL SELECT 'current interval without a row', entity_id FROM status_history "
                f"WHERE source = '{source}' AND valid_to IS NULL AND entity_id NOT IN ({entities_sql})"
            )
        rows = con.execute(
            f"""
            WITH h AS (
                SELECT entity_id, valid_from, valid_to,
                       lead(valid_from) OVER w AS next_from,
                       row_number() OVER w AS n,
                       count(*) OVER (PARTITION BY entity_id) AS intervals
                FROM status_history WHERE source = '{source}'
                WINDOW w AS (PARTITION BY entity_id ORDER BY valid_from, valid_to NULLS LAST)
            ),
            problems AS (
                SELECT entity_id, 'ends before it starts' AS problem FROM h WHERE valid_to < valid_from
                UNION ALL
                SELECT entity_id, 'gap or overlap' FROM h
                WHERE next_from IS NOT NULL AND valid_to IS DISTINCT FROM next_from
                UNION ALL
                SELECT entity_id, 'no current interval' FROM h
                WHERE n = intervals AND valid_to IS NOT NULL
                UNION ALL
                SELECT entity_id, 'more than one current interval' FROM h
                WHERE valid_to IS NULL AND n < intervals
            )
            SELECT problem, entity_id FROM problems WHERE {keep}
            {rowless}
            ORDER BY ALL LIMIT {SAMPLE}
            """
        ).fetchall()
        if not rows:
            return Outcome(True, "history intervals are contiguous with one current row per entity")
        offending: dict[str, list[str]] = {}
        for problem, entity in rows:
            offending.setdefault(problem, []).append(entity)
        return Outcome(
            False,
            "; ".join(f"{p}: {', '.join(e[:5])}" for p, e in offending.items()),
            {"offending_entities": dg.MetadataValue.json(offending)},
        )

    return evaluate


def sql_check(asset, name: str, description: str, offending_sql: str) -> WarehouseCheck:
    """Passes when ``offending_sql`` (returning ``key, detail``) returns no row."""

    @check(asset, name, description)
    def evaluate(con) -> Outcome:
        rows = con.execute(f"SELECT * FROM ({offending_sql}) LIMIT {SAMPLE}").fetchall()
        if not rows:
            return Outcome(True, "no offending rows")
        return Outcome(
            False,
            f"{len(rows)}{'+' if len(rows) == SAMPLE else ''} offending row(s), e.g. {rows[0][0]}: {rows[0][1]}",
            {"offending": dg.MetadataValue.json({str(k): str(v) for k, v in rows})},
        )

    return evaluate
