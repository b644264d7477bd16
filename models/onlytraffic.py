"""OnlyTraffic tables (Marketer API: CPC and CPL orders; Studio API: swap orders)."""

from __future__ import annotations

import sqlalchemy as sa

from models.columns import big, entity_columns, metadata, money, text, tstz

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
