"""Asset checks shared by every feed: the warehouse's data-quality contract, visible in the UI.

A failing check names the offending keys or values in its metadata, so the UI says *what* is
wrong, not only that something is.
"""

from collections.abc import Sequence

import dagster as dg

from pipelines.resources import WRITER_POOL, WarehouseResource

SAMPLE = 20


def _result(passed: bool, description: str, **metadata) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(passed=passed, description=description, metadata=metadata)


def run_check_query(warehouse: WarehouseResource, sql: str) -> list[tuple]:
    with warehouse.open().connect(read_only=True) as con:
        return con.execute(sql).fetchall()


def known_status_check(asset: dg.AssetsDefinition | str, table: str) -> dg.AssetChecksDefinition:
    """Fails when a row carries a raw status the mapping does not know (``status`` NULL)."""

    @dg.asset_check(
        asset=asset,
        name=f"{table}_known_statuses",
        pool=WRITER_POOL,
        description=f"Every {table}.source_status maps to a lifecycle_status (unknown values are kept "
        "with status NULL and named here).",
    )
    def _check(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        rows = run_check_query(
            warehouse,
            f"SELECT source_status, count(*) FROM {table} "
            "WHERE status IS NULL AND source_status IS NOT NULL GROUP BY ALL ORDER BY 2 DESC",
        )
        unknown = {str(value): count for value, count in rows}
        if not unknown:
            return _result(True, "every status is known")
        return _result(
            False,
            f"unknown status value(s): {', '.join(sorted(unknown))}",
            unknown_values=dg.MetadataValue.json(unknown),
            rows=sum(unknown.values()),
        )

    return _check


def unique_key_check(
    asset: dg.AssetsDefinition | str, table: str, key: Sequence[str]
) -> dg.AssetChecksDefinition:
    """Fails when a key appears more than once, naming the duplicated keys."""
    cols = ", ".join(key)

    @dg.asset_check(
        asset=asset,
        name=f"{table}_unique_keys",
        pool=WRITER_POOL,
        description=f"({cols}) is unique in {table}.",
    )
    def _check(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        rows = run_check_query(
            warehouse,
            f"SELECT concat_ws(':', {cols}) AS k, count(*) FROM {table} GROUP BY ALL "
            f"HAVING count(*) > 1 ORDER BY 2 DESC LIMIT {SAMPLE}",
        )
        if not rows:
            return _result(True, "keys are unique")
        return _result(
            False,
            f"{len(rows)}+ duplicated key(s), e.g. {rows[0][0]}",
            duplicated_keys=dg.MetadataValue.json({k: n for k, n in rows}),
        )

    return _check


def standard_checks(asset: dg.AssetsDefinition | str, table: str, key: Sequence[str], *, has_status: bool = True):
    """The checks every entity table gets."""
    checks = [unique_key_check(asset, table, key)]
    if has_status:
        checks.append(known_status_check(asset, table))
    return checks


def history_intervals_check(asset: dg.AssetsDefinition | str, source: str) -> dg.AssetChecksDefinition:
    """status_history of one source: per entity, intervals neither overlap nor leave gaps, none
    ends before it starts, and exactly one is current (valid_to NULL)."""

    @dg.asset_check(
        asset=asset,
        name=f"status_history_{source}_intervals",
        pool=WRITER_POOL,
        description=f"status_history for source '{source}': contiguous intervals, exactly one current per entity.",
    )
    def _check(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        rows = run_check_query(
            warehouse,
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
            SELECT problem, entity_id FROM problems ORDER BY ALL LIMIT {SAMPLE}
            """,
        )
        if not rows:
            return _result(True, "history intervals are contiguous with one current row per entity")
        offending: dict[str, list[str]] = {}
        for problem, entity in rows:
            offending.setdefault(problem, []).append(entity)
        return _result(
            False,
            "; ".join(f"{p}: {', '.join(e[:5])}" for p, e in offending.items()),
            offending_entities=dg.MetadataValue.json(offending),
        )

    return _check


def sql_check(
    asset: dg.AssetsDefinition | str,
    name: str,
    description: str,
    offending_sql: str,
) -> dg.AssetChecksDefinition:
    """A check that passes when ``offending_sql`` (returning ``key, detail``) returns no row."""

    @dg.asset_check(asset=asset, name=name, pool=WRITER_POOL, description=description)
    def _check(warehouse: WarehouseResource) -> dg.AssetCheckResult:
        rows = run_check_query(warehouse, f"SELECT * FROM ({offending_sql}) LIMIT {SAMPLE}")
        if not rows:
            return _result(True, "no offending rows")
        return _result(
            False,
            f"{len(rows)}{'+' if len(rows) == SAMPLE else ''} offending row(s), e.g. {rows[0][0]}: {rows[0][1]}",
            offending=dg.MetadataValue.json({str(k): str(v) for k, v in rows}),
        )

    return _check
