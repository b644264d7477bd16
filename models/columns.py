"""Column helpers shared by every warehouse table, so each table states only what is its own."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateColumn

from models.lifecycle import LIFECYCLE_STATUSES

metadata = sa.MetaData()

# The canonical status as a DuckDB ENUM type named ``lifecycle_status`` (CREATE TYPE via SQLAlchemy).
lifecycle_status = sa.Enum(*LIFECYCLE_STATUSES, name="lifecycle_status", metadata=metadata)


def tstz(name: str, **kw) -> sa.Column:
    """A UTC ``TIMESTAMPTZ`` column."""
    return sa.Column(name, sa.DateTime(timezone=True), **kw)


def money(name: str, **kw) -> sa.Column:
    """Money in currency units (never minor units), exact to a millionth."""
    return sa.Column(name, sa.Numeric(18, 6), **kw)


def big(name: str, **kw) -> sa.Column:
    # autoincrement=False: with duckdb-engine an Integer primary key would become SERIAL.
    return sa.Column(name, sa.BigInteger, autoincrement=False, **kw)


def text(name: str, **kw) -> sa.Column:
    return sa.Column(name, sa.String, **kw)


def raw_json(name: str = "raw", **kw) -> sa.Column:
    """A record as the API sent it, stored with DuckDB's ZSTD compression.

    Why not DuckDB's own choice (DICT_FSST for these columns): the JSON of a record is long and
    mostly unique, so the dictionary finds little and FSST's symbol table is costly to build.
    Measured on the large bench preset's widest feed (600,000 records of ~1 KB of JSON) copied
    into a new warehouse: 6.3 s and 286 MB with DuckDB's choice, 5.0 s and 163 MB with ZSTD;
    reading the column back is as fast (``bench/README.md``, session 11)."""
    return sa.Column(name, sa.JSON, info={"compression": "zstd"}, **kw)


def compression_clause(column: sa.Column) -> str:
    """`` USING COMPRESSION <method>`` when the column asks for one (``info["compression"]``), else
    ''. Written when the column is created, by ``CREATE TABLE`` or by ``ALTER TABLE ... ADD
    COLUMN`` (``models.schema``): DuckDB cannot change a column's compression later, and a table
    rewritten by the loader keeps it (its DDL carries the clause)."""
    compression = column.info.get("compression")
    return f" USING COMPRESSION {compression}" if compression else ""


@compiles(CreateColumn, "duckdb")
def _column_with_compression(element: CreateColumn, compiler, **kw) -> str:
    """``CREATE TABLE`` column text, plus the column's :func:`compression_clause`."""
    column_sql = compiler.visit_create_column(element, **kw)
    return column_sql + compression_clause(element.element) if column_sql else column_sql


def entity_columns() -> list[sa.Column]:
    """Bookkeeping columns every synced entity table carries.

    ``source_status``/``status``: raw and canonical status. ``raw``: the record as the API sent it
    (minus personal data), so no field is ever lost. ``row_hash``: hash of status + raw, used to
    write only rows that changed. ``first_seen_at``: first sync that saw the row. ``synced_at``:
    the sync that last changed it. ``run_id``: the Dagster run that last changed it.
    """
    return [
        text("source_status"),
        sa.Column("status", lifecycle_status),
        raw_json(),
        text("row_hash", nullable=False),
        tstz("first_seen_at", nullable=False),
        tstz("synced_at", nullable=False),
        text("run_id"),
    ]
