"""Create (and additively migrate) the warehouse schema through SQLAlchemy and duckdb-engine."""

from __future__ import annotations

import sqlalchemy as sa

from models.columns import metadata


def create_schema(engine: sa.Engine) -> None:
    """Create the ``lifecycle_status`` type and every table; add columns new in this version.

    Idempotent: safe to call at the start of every run. Columns are only ever added, never
    dropped or retyped, so a newer version of the project can open an older warehouse.
    """
    with engine.begin() as conn:
        metadata.create_all(conn, checkfirst=True)
        existing = _existing_columns(conn)
        for table in metadata.sorted_tables:
            for column in table.columns:
                if column.name not in existing.get(table.name, set()):
                    col_type = column.type.compile(dialect=conn.dialect)
                    conn.execute(
                        sa.text(f'ALTER TABLE "{table.name}" ADD COLUMN "{column.name}" {col_type}')
                    )


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
