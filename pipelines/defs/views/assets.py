"""One asset per SQL view in ``sql/``: ``CREATE OR REPLACE VIEW <file name> AS <file>``.

Each view's upstream assets are the tables and views its SQL names, found by reading the file,
so the Dagster lineage graph follows the SQL without a second list to keep in step. The assets
writing each table are found in the other defs modules (:func:`table_producers`): the asset named
after the table, and those a module lists in its ``WRITES``.
"""


import re

import dagster as dg

from models import metadata
from pipelines.checks import check_specs, evaluate_checks, sql_check
from pipelines.clock import utc_now
from pipelines.defs.feed_asset import FEED_TAG, defined_assets, defs_modules
from pipelines.defs.marts.assets import SNAPSHOT_DEPS, SNAPSHOT_DESCRIPTION, SNAPSHOTS, take_snapshot
from pipelines.defs.table_metadata import table_metadata, view_files, view_sql
from pipelines.defs.views.figures import view_figures
from pipelines.resources import WRITER_POOL, WarehouseResource


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


def _description(name: str) -> str:
    """The view's own explanation: the first comment line of its SQL file."""
    first = view_sql(name).splitlines()[0] if view_sql(name) else ""
    return first.lstrip("- ").strip() or name


def _creation_order(upstream: dict[str, set[dg.AssetKey]]) -> list[str]:
    """Views after the views they read."""
    order: list[str] = []
    pending = dict(upstream)
    while pending:
        ready = sorted(n for n, deps in pending.items() if not {d.path[-1] for d in deps} & set(pending))
        if not ready:
            raise ValueError(f"views depend on each other in a cycle: {sorted(pending)}")
        order += ready
        for n in ready:
            del pending[n]
    return order


def _views_asset(upstream: dict[str, set[dg.AssetKey]]) -> dg.AssetsDefinition:
    """Every view, and the daily snapshot of order totals that sits between them (it reads
    v_earnings and v_fill_rate, v_earnings_daily reads it), as ONE multi-asset: one step and one
    database open for all of them (a step per view, or the snapshot as a step of its own, would
    pay a process each), still one asset per view in the lineage graph."""
    upstream = {**upstream, SNAPSHOTS: {dg.AssetKey(d) for d in SNAPSHOT_DEPS}}
    order = _creation_order(upstream)
    specs = [
        dg.AssetSpec(
            name,
            group_name="views",
            deps=sorted(upstream[name], key=lambda k: k.to_user_string()),
            kinds={"duckdb", "sql"},
            description=_description(name),
            automation_condition=rebuild_when_upstream_changes(),
            metadata={"sql_file": f"sql/{name}.sql", **table_metadata(name)},
        )
        if name != SNAPSHOTS
        else dg.AssetSpec(
            SNAPSHOTS, group_name="marts", deps=sorted(upstream[name], key=lambda k: k.to_user_string()),
            kinds={"duckdb", "sql"}, description=SNAPSHOT_DESCRIPTION, metadata=table_metadata(SNAPSHOTS),
        )
        for name in order
    ]
    checks = [c for c in VIEW_CHECKS if c.asset.path[-1] in upstream]

    @dg.multi_asset(
        name="sql_views", specs=specs, can_subset=True, pool=WRITER_POOL, check_specs=check_specs(checks),
        op_tags={"affwh/load": "cpu"},
    )
    def sql_views(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
        selected = {key.path[-1] for key in context.selected_asset_keys}
        metadata: dict[str, dict] = {}
        today = utc_now().date()  # the warehouse clock's day, as the snapshot's
        with warehouse.open(on_wait=context.log.info).connect() as con:
            existing = {row[0] for row in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
            for name in order:
                if name not in selected:
                    # a selected view may read it: on a warehouse that never had it (the first run
                    # after one feed was materialized alone), create it without reporting it
                    if name != SNAPSHOTS and name not in existing:
                        create_view(con, name)
                    continue
                if name == SNAPSHOTS:
                    metadata[name] = take_snapshot(con)
                else:
                    create_view(con, name)
                    metadata[name] = view_figures(con, name, today)
        for name, meta in metadata.items():
            yield dg.MaterializeResult(asset_key=name, metadata=meta)
        wanted = context.selected_asset_check_keys
        yield from evaluate_checks(warehouse, [c for c in checks if c.key in wanted], log=context.log)

    return sql_views


SHARED_TABLES = {"status_history", "sync_state", "sync_runs", "quarantine"}

VIEW_CHECKS = [
    sql_check(
        "v_fill_rate",
        "v_fill_rate_not_negative",
        "No fill rate is negative.",
        "SELECT source || ':' || order_id || coalesce(':' || side, ''), fill_rate "
        "FROM v_fill_rate WHERE fill_rate < 0",
    )
]


def table_producers() -> dict[str, list[dg.AssetKey]]:
    """Which assets write each table: the asset named after it, those a module's ``WRITES``
    lists, and for the tables every feed writes (status_history, ...) every current-state feed."""
    producers: dict[str, list[dg.AssetKey]] = {}
    feeds: list[dg.AssetKey] = []
    writes: dict[str, tuple[str, ...]] = {}
    for module in defs_modules(exclude=__package__):
        writes.update(getattr(module, "WRITES", {}))
    for asset in defined_assets(exclude=__package__):
        for spec in asset.specs:
            producers.setdefault(spec.key.path[-1], []).append(spec.key)
            if spec.tags.get(FEED_TAG) == "current":
                feeds.append(spec.key)
    for writer, tables in writes.items():
        for table in tables:
            producers.setdefault(table, []).append(dg.AssetKey(writer))
    for table in SHARED_TABLES:
        producers[table] = feeds
    producers[SNAPSHOTS] = [dg.AssetKey(SNAPSHOTS)]  # written in the views' own step
    return {t: sorted(set(keys), key=lambda k: k.to_user_string()) for t, keys in producers.items()}


def build_view_assets(producers: dict[str, list[dg.AssetKey]]) -> list[dg.AssetsDefinition]:
    """The views of ``sql/v_*.sql``; each view's upstream assets are the producers of the tables
    and views its SQL names (``producers``: table name -> asset keys writing it; tables every feed
    writes, like status_history, map to all ingestion assets)."""
    views = set(view_files())
    upstream: dict[str, set[dg.AssetKey]] = {}
    for name in sorted(views):
        deps: set[dg.AssetKey] = set()
        for ref in referenced(view_sql(name), (set(metadata.tables) | views) - {name}):
            if ref in views:
                deps.add(dg.AssetKey(ref))
            else:
                deps.update(producers.get(ref, []))
        upstream[name] = deps
    return [_views_asset(upstream)]


@dg.definitions
def defs() -> dg.Definitions:
    """Built when the definitions load: the views' upstream is whatever the other modules define."""
    return dg.Definitions(assets=build_view_assets(table_producers()))
