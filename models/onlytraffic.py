"""OnlyTraffic tables (Marketer API: CPC and CPL orders; Studio API: swap orders and their sides)."""

from __future__ import annotations

import sqlalchemy as sa

from models.columns import big, entity_columns, metadata, money, text, tstz
from models.lifecycle import LifecycleStatus as S

# status_history.source -> raw status -> canonical status (collected by models.status)
STATUS_MAPPINGS = {
    "cpc": {"waiting": S.PENDING, "active": S.ACTIVE, "rejected": S.REJECTED, "completed": S.COMPLETED},
    "cpl": {
        "waiting": S.PENDING, "accepted": S.ACTIVE, "rejected": S.REJECTED, "completed": S.COMPLETED,
        "cancelled": S.CANCELLED,
    },
    "swap": {
        "waiting": S.PENDING, "accepted": S.ACTIVE, "rejected": S.REJECTED, "completed": S.COMPLETED,
        "cancelled": S.CANCELLED,
    },
}

cpc_orders = sa.Table(
    "cpc_orders",
    metadata,
    text("order_id", primary_key=True),
    big("of_account_id"),
    text("creative_public_id"),
    text("creative_username"),
    text("url"),
    big("clicks_ordered"),
    big("clicks_delivered"),
    money("price_per_click"),
    money("total_earned"),
    tstz("date_start"),
    tstz("date_finish"),
    tstz("created_at"),
    *entity_columns(),
)

# CPL (cost-per-lead) orders placed by clients against our offers (Marketer API). Money in USD.
cpl_orders = sa.Table(
    "cpl_orders",
    metadata,
    text("order_id", primary_key=True),
    big("offer_id"),
    big("of_account_id"),
    text("campaign_type"),  # free, paid, paid_trial, tracking_link (others kept as sent)
    text("campaign_url"),
    big("quantity_ordered"),
    big("quantity_delivered"),
    money("price_per_fan"),
    big("clicks"),  # NULL unless the campaign is link-based
    money("total_earned"),
    tstz("created_at"),
    tstz("completed_at"),
    *entity_columns(),
)

# Swap orders (Studio API). The API sends no status: it is the status filter the order was
# listed under. Money (guaranteed_price) assumed in USD units, not cents.
swap_orders = sa.Table(
    "swap_orders",
    metadata,
    text("order_id", primary_key=True),
    big("offer_id"),
    big("quantity"),
    big("max_days"),
    money("guaranteed_price"),
    sa.Column("stats_public_arpu", sa.Boolean),
    sa.Column("is_offer_mine", sa.Boolean),
    sa.Column("is_order_mine", sa.Boolean),
    tstz("created_at"),
    tstz("started_at"),
    tstz("completed_at"),
    *entity_columns(),
)

# The two sides of a swap order (side = 'offer' | 'order'), every stats block flattened.
# source_status/status repeat the order's; raw is the API's side block plus order_id, side and
# order_status.
SWAP_COUNT_BLOCKS = (  # stats blocks shaped {total, today, percent}
    "pay_subscribe",
    "pay_resubscribe",
    "purchases_1",
    "purchases_2",
    "purchases_5",
    "whale",
    "messages_3",
)

swap_order_sides = sa.Table(
    "swap_order_sides",
    metadata,
    text("order_id", primary_key=True),
    text("side", primary_key=True),
    sa.Column("is_mine", sa.Boolean),
    big("of_account_id"),
    text("username"),
    sa.Column("performer_top", sa.Numeric(18, 6)),
    money("subscribe_price"),
    text("campaign_link"),
    big("fans_subscribed_total"),
    big("fans_subscribed_today"),
    money("transactions_sum_total"),
    money("transactions_sum_today"),
    money("arpu"),
    money("arpu_paying"),
    sa.Column("romi", sa.Numeric(18, 6)),
    *(
        column
        for block in SWAP_COUNT_BLOCKS
        for column in (
            big(f"{block}_total"),
            big(f"{block}_today"),
            sa.Column(f"{block}_percent", sa.Numeric(18, 6)),
        )
    ),
    *entity_columns(),
)
