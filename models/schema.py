"""Create (and additively migrate) the warehouse schema through SQLAlchemy and duckdb-engine."""

from __future__ import annotations

import sqlalchemy as sa

from models.columns import metadata


def create_schema(engine: sa.Engine) -> None:
    """Create the ``lifecycle_status`` type and every table; add columns new in this version.

    Idempotent: every step of every run calls it. When no declared column is missing it returns
    after that one query (``create_all`` alone asks once per table). Columns are only ever added,
    never dropped or retyped, so a newer version of the project can open an older warehouse.
    """
    with engine.begin() as conn:
        existing = _existing_columns(conn)
        if not _missing_columns(existing):
            return
        metadata.create_all(conn, checkfirst=True)
        for table_name, column_name in _missing_columns(_existing_columns(conn)):
            col_type = metadata.tables[table_name].columns[column_name].type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f'ALTER TABLE "{table_name}" ADD COLUMN "{column_name}" {col_type}'))


def _missing_columns(existing: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(table, column) of every column the models declare that the database lacks; a table with
    every column has its types too (its columns use them), so nothing is left to create."""
    return [(t.name, c.name) for t in metadata.sorted_tables for c in t.columns if c.name not in existing.get(t.name, set())]


def _existing_columns(conn: sa.Connection) -> dict[str, set[str]]:
    rows = conn.execute(
        sa.text(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema()"
        )
    )
    found: dict[str, set[str]] = {}
    for table_name, column_name in rows:
        found.setdefault(table_name, set()).add(column_name)
    return found
