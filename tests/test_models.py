"""Each table's columns are declared twice in kind (a SQLAlchemy table in ``models/`` that creates
it, and the ``TableSpec``s that fill it from records): these tests hold the two equal, so a column
added to one and forgotten in the other fails here rather than as a NULL column or a failed merge.
The specs are found by walking the feed modules (no list to keep up to date)."""

import importlib
import pkgutil

import pytest
import sqlalchemy as sa

import models
import pipelines.feeds
import pipelines.sources
from models.columns import entity_columns
from models.status import (
    LIFECYCLE_STATUSES,
    OPEN_STATUSES,
    STATUS_MAPPINGS,
    TERMINAL_STATUSES,
    final_raw_statuses,
    open_raw_statuses,
    terminal_raw_statuses,
)
from pipelines.warehouse.staging import TableSpec

ENTITY_COLUMNS = [c.name for c in entity_columns()]
STATUS_COLUMNS = ["source_status", "status"]

# Field kind -> the SQLAlchemy type its typed column must have in the warehouse.
KIND_TYPES = {
    "string": sa.String,
    "id": sa.String,
    "integer": sa.BigInteger,
    "number": sa.Numeric,
    "decimal_text": sa.Numeric,
    "boolean": sa.Boolean,
    "timestamp": sa.DateTime,
    "epoch": sa.DateTime,
    "date": sa.Date,
    "json": sa.JSON,
}


def all_specs() -> list[TableSpec]:
    specs: dict[int, TableSpec] = {}
    for package in (pipelines.sources, pipelines.feeds):  # specs move to the feeds (issue 13)
        for module in pkgutil.iter_modules(package.__path__, f"{package.__name__}."):
            for value in vars(importlib.import_module(module.name)).values():
                if isinstance(value, TableSpec):
                    specs[id(value)] = value
    return list(specs.values())


def specs_by_table() -> dict[str, list[TableSpec]]:
    tables: dict[str, list[TableSpec]] = {}
    for spec in all_specs():
        tables.setdefault(spec.table, []).append(spec)
    return tables


def test_the_feed_modules_declare_a_spec_for_every_entity_table():
    entity_tables = {t.name for t in models.metadata.sorted_tables if set(ENTITY_COLUMNS) <= set(t.columns.keys())}
    assert entity_tables  # the walk found the models
    assert set(specs_by_table()) == entity_tables


@pytest.mark.parametrize("table", sorted(specs_by_table()))
def test_a_tables_columns_are_its_specs_columns_plus_the_bookkeeping(table):
    specs = specs_by_table()[table]
    model = models.metadata.tables[table]
    declared = {c for spec in specs for c in (*spec.columns, *spec.step_columns)}
    bookkeeping = set(ENTITY_COLUMNS)
    if not any(spec.has_status for spec in specs):
        # no history: a spec may still compute source_status/status as its own fields
        bookkeeping -= set(STATUS_COLUMNS) - declared

    assert set(model.columns.keys()) == declared | bookkeeping, (
        f"{table}: only in models/: {sorted(set(model.columns.keys()) - declared - bookkeeping)}; "
        f"only in the specs: {sorted(declared - set(model.columns.keys()))}"
    )
    # the bookkeeping columns close every entity table, in the order entity_columns() gives them
    assert list(model.columns.keys())[-len(ENTITY_COLUMNS):] == ENTITY_COLUMNS
    for spec in specs:
        assert set(spec.key) <= set(spec.columns)
        assert {c.name for c in model.primary_key.columns} == set(spec.key), f"{table}: key of {spec.table}"
        for name in spec.update_columns or ():
            assert name in spec.columns, f"{table}: update column {name} is not a field of the spec"


@pytest.mark.parametrize("table", sorted(specs_by_table()))
def test_a_typed_fields_kind_matches_its_columns_type(table):
    model = models.metadata.tables[table]
    for spec in specs_by_table()[table]:
        for f in spec.fields:
            if f.sql is not None:
                continue  # computed: its SQL decides the type
            column_type = model.columns[f.name].type
            assert isinstance(column_type, KIND_TYPES[f.kind]), (
                f"{table}.{f.name}: kind {f.kind} but the model says {column_type!r}"
            )


def test_status_sets_derive_from_the_lifecycle_and_every_mapping():
    assert OPEN_STATUSES | TERMINAL_STATUSES == set(LIFECYCLE_STATUSES)
    assert not OPEN_STATUSES & TERMINAL_STATUSES
    for source, mapping in STATUS_MAPPINGS.items():
        assert set(open_raw_statuses(source)) | set(terminal_raw_statuses(source)) == set(mapping)
        assert set(final_raw_statuses(source)) <= set(terminal_raw_statuses(source))
    # what the feeds ask for follows the mappings
    from pipelines.feeds import cpamoe
    from pipelines.sources import metapic, onlytraffic_studio

    assert onlytraffic_studio.OPEN_STATUSES == ("waiting", "accepted")
    assert onlytraffic_studio.TERMINAL_STATUSES == ("rejected", "completed", "cancelled")
    assert metapic.TERMINAL_OFFER_STATUSES == ("ended", "deleted")
    # an approved cpa.moe lead is completed but its delivery status still moves: still polled
    assert cpamoe.FINAL_STAGES == ("cancel", "trash")


def test_an_older_warehouse_gets_the_tables_and_columns_it_lacks_and_keeps_its_rows(tmp_path):
    """``Warehouse.ensure_schema`` runs at the start of every step: on a complete warehouse one
    query over a plain DuckDB connection answers it, on an older one it adds what is missing
    (here a dropped table and a dropped column)."""
    import duckdb

    from pipelines.warehouse import Warehouse

    path = tmp_path / "older.duckdb"
    Warehouse(str(path)).ensure_schema()
    with duckdb.connect(str(path)) as con:
        con.execute("DROP TABLE alert_deliveries")
        con.execute("ALTER TABLE cpc_orders DROP COLUMN raw")
        con.execute("INSERT INTO sync_state (stream, cursor) VALUES ('cpc_orders', '{}')")

    warehouse = Warehouse(str(path))
    Warehouse._ensured.discard(warehouse.key)  # as in a new process: nothing known about this file
    warehouse.ensure_schema()

    with duckdb.connect(str(path), read_only=True) as con:
        found: dict[str, set[str]] = {}
        for table, column in con.execute("SELECT table_name, column_name FROM information_schema.columns").fetchall():
            found.setdefault(table, set()).add(column)
        assert con.execute("SELECT stream FROM sync_state").fetchall() == [("cpc_orders",)]
        # a column added later is created as the models declare it, compression included
        ddl = con.execute("SELECT sql FROM duckdb_tables() WHERE table_name = 'cpc_orders'").fetchone()[0]
        assert "raw JSON USING COMPRESSION ZSTD" in ddl
    for table in models.metadata.sorted_tables:
        assert found.get(table.name) == set(table.columns.keys()), table.name


def test_every_raw_column_is_stored_with_zstd_and_its_rows_are_compressed_that_way(tmp_path):
    """``raw`` (a record's JSON, most of a warehouse's bytes) is declared ``USING COMPRESSION
    zstd`` at creation (``models.columns.raw_json``): DuckDB's own choice for it, DICT_FSST, wrote
    the large preset's swap orders 1.3× slower into a 1.8× larger file. Checked in the DDL and in
    the segments DuckDB wrote."""
    import duckdb

    from pipelines.warehouse import Warehouse

    path = tmp_path / "w.duckdb"
    Warehouse(str(path)).ensure_schema()
    raw_tables = sorted(t.name for t in models.metadata.sorted_tables if "raw" in t.columns)
    assert {"cpc_orders", "swap_order_sides", "cpamoe_leads", "quarantine"} <= set(raw_tables)
    with duckdb.connect(str(path)) as con:
        for table in raw_tables:
            ddl = con.execute("SELECT sql FROM duckdb_tables() WHERE table_name = ?", [table]).fetchone()[0]
            assert "raw JSON USING COMPRESSION ZSTD" in ddl, table
        con.execute(
            "INSERT INTO swap_orders BY NAME SELECT i::VARCHAR AS order_id, "
            "json_object('order_id', i::VARCHAR, 'note', repeat('x', i % 50)) AS raw, "
            "'h' || i AS row_hash, now() AS first_seen_at, now() AS synced_at FROM range(20000) t(i)"
        )
        con.execute("CHECKPOINT")
        found = con.execute(
            "SELECT DISTINCT compression FROM pragma_storage_info('swap_orders') "
            "WHERE column_name = 'raw' AND segment_type <> 'VALIDITY'"
        ).fetchall()
    assert found == [("ZSTD",)]
