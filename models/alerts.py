"""What the alerts sensor delivered: one row per alert occurrence (see pipelines/alerts.py)."""

from __future__ import annotations

import sqlalchemy as sa

from models.columns import big, metadata, text, tstz

# One row per alert of v_order_alerts the sensor has tried to deliver (or is about to). An alert is
# identified by (source, order_id, alert, due_at): the same condition about the same deadline is
# the same alert, so one that clears and comes back is not sent again, while a new deadline (a
# lead on hold again, an order escalating from auto_reject_soon to auto_reject_overdue) is a new
# alert. Kept in the warehouse rather than in the sensor's cursor: it is written in the same
# place as the alerts, survives a new Dagster instance, is committed after every delivery (a
# cursor only when a tick ends) and lets concurrent ticks claim rows in one transaction.
alert_deliveries = sa.Table(
    "alert_deliveries",
    metadata,
    text("source", primary_key=True),
    text("order_id", primary_key=True),
    text("alert", primary_key=True),
    tstz("due_at", primary_key=True),
    text("detail"),  # as sent (or as last seen while not delivered yet)
    tstz("first_seen_at", nullable=False),  # wall clock: when a tick first saw the alert
    big("attempts", nullable=False),  # requests made so far
    tstz("next_attempt_at"),  # after a failure: not before this (backoff)
    text("last_error"),  # the last failure, one line, no URL
    tstz("delivered_at"),  # the receiver answered 2xx; never sent again
    text("claim_token"),  # the tick sending it now ...
    tstz("claimed_until"),  # ... until then (a killed tick's claim expires)
)
