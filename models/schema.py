"""Create (and additively migrate) the warehouse schema through SQLAlchemy and duckdb-engine."""

from __future__ import annotations

import sqlalchemy as sa

from models.columns import compression_clause, metadata


# The columns the warehouse has, as (table, column) rows: what decides whether anything is missing.
EXISTING_COLUMNS_SQL = (
    "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()"
)


def create_schema(engine: sa.Engine) -> None:
    """Create the ``lifecycle_status`` type and every table; add columns new in this version.

    Idempotent. ``Warehouse.ensure_schema`` asks :func:`missing_columns` over a plain DuckDB
    connection first (every step does) and comes here only when something is missing. Columns are
    only ever added, never dropped or retyped, so a newer version of the project can open an older
    warehouse.
    """
    with engine.begin() as conn:
        metadata.create_all(conn, checkfirst=True)
        for table_name, column_name in missing_columns(conn.execute(sa.text(EXISTING_COLUMNS_SQL)).all()):
            column = metadata.tables[table_name].columns[column_name]
            col_type = column.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(
                f'ALTER TABLE "{table_name}" ADD COLUMN "{column_name}" {col_type}{compression_clause(column)}'
            ))


def missing_columns(existing_rows) -> list[tuple[str, str]]:
    """(table, column) of every column the models declare that is not among ``existing_rows``
    (the rows of EXISTING_COLUMNS_SQL). A table with every column has its types too (its columns
    use them), so when this is empty there is nothing to create."""
    existing = {(table, column) for table, column in existing_rows}
    return [(t.name, c.name) for t in metadata.sorted_tables for c in t.columns if (t.name, c.name) not in existing]
