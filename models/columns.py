"""Column helpers shared by every warehouse table, so each table states only what is its own."""

from __future__ import annotations

import sqlalchemy as sa

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
        sa.Column("raw", sa.JSON),
        text("row_hash", nullable=False),
        tstz("first_seen_at", nullable=False),
        tstz("synced_at", nullable=False),
        text("run_id"),
    ]
