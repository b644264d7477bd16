"""Tables shared by every source: status history, sync state, run log and quarantine."""

from __future__ import annotations

import sqlalchemy as sa

from models.columns import big, lifecycle_status, metadata, raw_json, text, tstz

# One row per status an entity was observed in; valid_to NULL marks the current one.
status_history = sa.Table(
    "status_history",
    metadata,
    text("source", nullable=False),
    text("entity_id", nullable=False),
    text("source_status"),
    sa.Column("status", lifecycle_status),
    tstz("valid_from", nullable=False),
    tstz("valid_to"),
    text("run_id"),
)

# The cursor of each stream, written in the same transaction as the stream's data.
sync_state = sa.Table(
    "sync_state",
    metadata,
    text("stream", primary_key=True),
    sa.Column("cursor", sa.JSON),
    tstz("last_synced_at"),
    tstz("last_full_walk_at"),
    text("last_run_id"),
)

# What every sync of every stream did: counts, requests, warnings.
sync_runs = sa.Table(
    "sync_runs",
    metadata,
    text("run_id", primary_key=True),
    text("stream", primary_key=True),
    text("mode"),
    tstz("started_at"),
    tstz("finished_at"),
    big("records_received"),
    big("inserted"),
    big("updated"),
    big("unchanged"),
    big("quarantined"),
    big("requests"),
    big("retries"),
    sa.Column("warnings", sa.JSON),
)

# The last failure of each sync of a stream (one line, secrets already redacted by the HTTP
# layer): written by the stream driver in its own short transaction after the failed one rolled
# back, so `affwh status` can name what broke. A run that commits has no row here.
sync_failures = sa.Table(
    "sync_failures",
    metadata,
    text("run_id", primary_key=True),
    text("stream", primary_key=True),
    tstz("started_at"),
    tstz("failed_at", nullable=False),
    text("reason", nullable=False),
)

# Records that could not be typed (a field of the wrong type): kept with the reason, never coerced.
quarantine = sa.Table(
    "quarantine",
    metadata,
    text("stream", primary_key=True),
    text("row_hash", primary_key=True),
    text("entity_id"),
    text("reason", nullable=False),
    raw_json(),
    tstz("first_seen_at", nullable=False),
    tstz("last_seen_at", nullable=False),
    text("run_id"),
)
