"""What the Dagster catalog shows about each warehouse table and view: its columns
(``dagster/column_schema``), its name (``dagster/table_name``) and its SQL as markdown.

The columns are read back from DuckDB, not written down a second time: the tables' DDL is
compiled from ``models/`` (the SQLAlchemy tables the warehouse is created from, with the same
dialect) and run in an empty in-memory database, then every view of ``sql/`` is created over them
and DuckDB binds it. ``information_schema`` then lists what the warehouse itself will list, with
DuckDB's own type names, so the catalog cannot drift from the warehouse (tests/test_catalog.py
compares it with a synced warehouse). A view that does not bind gets no schema here (its step
will fail saying why); the code location still loads. This costs about 0.2 s once per process
(the step processes fork from a server that preloaded the definitions).

This module lives in the defs folder but defines no Dagster object of its own.
"""

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
from duckdb_engine import Dialect
from sqlalchemy.dialects.postgresql.named_types import CreateEnumType
from sqlalchemy.schema import CreateTable

from models import lifecycle_status
from models import metadata as models_metadata

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
SQL_KEY = "sql"  # the markdown entry: a view's file, a table's DDL


def view_files() -> dict[str, Path]:
    """Every view of ``sql/``: file name without ``.sql`` = view name."""
    return {p.stem: p for p in sorted(SQL_DIR.glob("v_*.sql"))}


def view_sql(name: str) -> str:
    return view_files()[name].read_text()


@dataclass(frozen=True)
class Relation:
    """A table or a view as DuckDB describes it: (column, type, nullable) in table order."""

    name: str
    sql: str  # the DDL compiled from models/ (tables) or the view's file
    columns: tuple[tuple[str, str, bool], ...]
    primary_key: tuple[str, ...] = ()


def table_ddl() -> dict[str, str]:
    """``CREATE TABLE`` of every table of ``models/``, as the warehouse's schema creation emits it."""
    dialect = Dialect()
    return {t.name: str(CreateTable(t).compile(dialect=dialect)).strip() for t in models_metadata.sorted_tables}


@functools.cache
def relations() -> Mapping[str, Relation]:
    """Every table and view, described by an empty in-memory DuckDB built from models/ and sql/."""
    ddl = table_ddl()
    views = {name: view_sql(name) for name in view_files()}
    with duckdb.connect(":memory:") as con:
        con.execute(str(CreateEnumType(lifecycle_status).compile(dialect=Dialect())))
        for statement in ddl.values():
            con.execute(statement)
        pending = dict(views)
        while pending:  # a view after the views it reads, found by DuckDB itself
            created = []
            for name, sql in pending.items():
                try:
                    con.execute(f'CREATE VIEW "{name}" AS\n{sql}')
                except duckdb.Error:
                    continue
                created.append(name)
            if not created:  # what is left does not bind
                break
            for name in created:
                del pending[name]
        rows = con.execute(
            "SELECT table_name, column_name, data_type, is_nullable = 'YES' FROM information_schema.columns "
            "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
        ).fetchall()
    columns: dict[str, list[tuple[str, str, bool]]] = {}
    for table, column, kind, nullable in rows:
        columns.setdefault(table, []).append((column, kind, nullable))
    found = {
        name: Relation(name, ddl[name], tuple(columns[name]), tuple(c.name for c in table.primary_key.columns))
        for name, table in models_metadata.tables.items()
    }
    found.update({name: Relation(name, views[name], tuple(columns[name])) for name in views if name in columns})
    return found


def column_schema(name: str) -> dg.TableSchema:
    """The table's or view's columns: DuckDB's types, NOT NULL and the primary key as constraints."""
    relation = relations()[name]
    return dg.TableSchema(
        columns=[
            dg.TableColumn(column, kind, constraints=dg.TableColumnConstraints(nullable=nullable))
            for column, kind, nullable in relation.columns
        ],
        constraints=dg.TableConstraints(other=[f"primary key ({', '.join(relation.primary_key)})"])
        if relation.primary_key
        else None,
    )


def _markdown(sql: str) -> dg.MetadataValue:
    body = re.sub(r"\n{3,}", "\n\n", sql.strip())
    return dg.MetadataValue.md(f"```sql\n{body}\n```")


def table_metadata(name: str) -> dict[str, object]:
    """Definition metadata of the asset standing for table or view ``name`` (none for a view
    that does not bind)."""
    if name not in relations():
        return {}
    relation = relations()[name]
    sql = relation.sql if name in models_metadata.tables else f"create or replace view {name} as\n{relation.sql}"
    return {
        "dagster/column_schema": column_schema(name),
        "dagster/table_name": name,  # as `make query` and DuckDB's own clients name it
        SQL_KEY: _markdown(sql),
    }
