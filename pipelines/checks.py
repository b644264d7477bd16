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
    with warehouse.open().connect() as con:
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
