"""Tables the marts need beyond the feeds: configured payouts and daily snapshots of totals."""

from __future__ import annotations

import sqlalchemy as sa

from models.columns import big, metadata, money, text, tstz

# Payout per cpa.moe offer, loaded from CPAMOE_PAYOUTS_FILE (CSV offer,amount,currency):
# cpa.moe's list.json does not say what an approved lead pays.
cpamoe_payouts = sa.Table(
    "cpamoe_payouts",
    metadata,
    big("offer_id", primary_key=True),
    money("amount", nullable=False),
    text("currency", nullable=False),
    text("source_file"),
    tstz("loaded_at"),
)

# The last cumulative totals seen for each order on each UTC day, written only on days they
# changed. The APIs report running totals; v_earnings_daily takes day-over-day differences.
order_daily_snapshots = sa.Table(
    "order_daily_snapshots",
    metadata,
    text("source", primary_key=True),
    text("order_id", primary_key=True),
    sa.Column("day", sa.Date, primary_key=True),
    text("currency"),
    money("earned"),
    big("units_delivered"),
    tstz("captured_at", nullable=False),
)

# What each order had earned and delivered when its source's first sync observed it: the
# baseline v_earnings_daily attributes to no day. One row per order present in the warehouse at
# the snapshot step of the first sync that loaded any order of its source (the day it ran does not
# matter: a baseline has no day); orders first seen later have no row and count from zero.
# Written once per source, never updated. One row per (source, order_id) by construction (copied
# from order_daily_snapshots' rows of one day), without a PRIMARY KEY: its index would have to hold
# every key of a first sync in memory (1M orders: out of memory at the 160MB default limit, in the
# transaction that also writes those orders' snapshot rows).
order_baselines = sa.Table(
    "order_baselines",
    metadata,
    text("source", nullable=False),
    text("order_id", nullable=False),
    text("currency"),
    money("earned"),
    big("units_delivered"),
    tstz("captured_at", nullable=False),
)
