"""One asset per SQL view in ``sql/``: ``CREATE OR REPLACE VIEW <file name> AS <file>``.

Each view's upstream assets are the tables and views its SQL names, found by reading the file,
so the Dagster lineage graph follows the SQL without a second list to keep in step.
"""


import re
from pathlib import Path

import dagster as dg

from models import metadata
from pipelines.resources import WRITER_POOL, WarehouseResource

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"


def view_files() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SQL_DIR.glob("v_*.sql"))}


def view_sql(name: str) -> str:
    return view_files()[name].read_text()


def _strip_comments(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)


def referenced(sql: str, names: set[str]) -> list[str]:
    """Which of ``names`` the SQL refers to (as whole identifiers)."""
    words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", _strip_comments(sql)))
    return sorted(words & names)


def create_view(con, name: str) -> None:
    con.execute(f'CREATE OR REPLACE VIEW "{name}" AS\n{view_sql(name)}')


def rebuild_when_upstream_changes() -> dg.AutomationCondition:
    """Re-create a view after any table it reads was written outside a run that also rebuilt the
    view (e.g. a backfill from the UI); ``sync_all`` rebuilds its views itself, so that never
    triggers a second run.

    This is ``eager()`` without its "no dependency missing" guard: views depend on daily-partitioned
    assets whose past days are mostly never materialized, which would otherwise hold them forever.
    A view over a table still empty is valid (the schema is created before any asset writes).
    """
    return (
        dg.AutomationCondition.eager()
        .without(~dg.AutomationCondition.any_deps_missing())
        .with_label("eager (upstream partitions may be missing)")
    )


def _view_asset(name: str, upstream: list[dg.AssetKey]) -> dg.AssetsDefinition:
    description = (_strip_comments(view_sql(name)) and view_sql(name).splitlines()[0].lstrip("- ")) or name

    @dg.asset(
        name=name,
        group_name="views",
        deps=upstream,
        pool=WRITER_POOL,
        kinds={"duckdb", "sql"},
        description=description,
        automation_condition=rebuild_when_upstream_changes(),
    )
    def _view(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        with warehouse.open(on_wait=context.log.warning).connect() as con:
            create_view(con, name)
            rows = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
        return dg.MaterializeResult(metadata={"rows": rows, "sql_file": f"sql/{name}.sql"})

    return _view


SHARED_TABLES = {"status_history", "sync_state", "sync_runs", "quarantine"}


def build_view_assets(producers: dict[str, list[dg.AssetKey]]) -> list[dg.AssetsDefinition]:
    """One asset per ``sql/v_*.sql``; its upstream assets are the producers of the tables and
    views its SQL names (``producers``: table name -> asset keys writing it; tables every feed
    writes, like status_history, map to all ingestion assets)."""
    views = set(view_files())
    assets = []
    for name in sorted(views):
        upstream: set[dg.AssetKey] = set()
        for ref in referenced(view_sql(name), (set(metadata.tables) | views) - {name}):
            if ref in views:
                upstream.add(dg.AssetKey(ref))
            else:
                upstream.update(producers.get(ref, []))
        assets.append(_view_asset(name, sorted(upstream, key=lambda k: k.to_user_string())))
    return assets
