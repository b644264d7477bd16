"""Metapic tables (offers, participants, participant daily stats).

Money is in currency units (``cpc`` converted from the API's minor units), never minor units.
No e-mail address is stored anywhere: a participant known only by e-mail is keyed by a hash of it
(see :mod:`pipelines.feeds.metapic_keys`).
"""

from __future__ import annotations

import sqlalchemy as sa

from models.columns import big, entity_columns, metadata, money, text, tstz
from models.lifecycle import LifecycleStatus as S

# status_history.source -> raw status -> canonical status (collected by models.status)
STATUS_MAPPINGS = {
    "metapic_offer": {
        "scheduled": S.PENDING, "active": S.ACTIVE, "paused": S.PAUSED, "ended": S.COMPLETED, "deleted": S.CANCELLED,
    },
    "metapic_participant": {
        "suggestion": S.PENDING,
        "open": S.PENDING,
        "accepted": S.ACTIVE,
        "product_sent": S.ACTIVE,
        "have_received": S.ACTIVE,
        "done": S.COMPLETED,
        "store_denied": S.REJECTED,
    },
}

# One row per campaign (``GET /v2/offers``), every status.
metapic_offers = sa.Table(
    "metapic_offers",
    metadata,
    big("offer_id", primary_key=True),
    text("campaign_title"),
    big("store_id"),
    text("store_name"),
    text("currency"),
    text("type"),
    text("token"),
    sa.Column("has_product_seeding", sa.Boolean),
    sa.Column("has_onetime_payment", sa.Boolean),
    money("cpc"),  # per click, currency units, of the "General" traffic source
    sa.Column("cpa", sa.Numeric(18, 6)),  # as the API gives it (a commission rate, e.g. 0.04)
    tstz("valid_from"),  # when the API sends it (undocumented in responses)
    tstz("valid_until"),
    # Set by the participants sync, in its own transaction, once it has read the participants of
    # this offer after the offer became terminal (ended/deleted): they are not read again, even
    # when it moves to another terminal status (ended -> deleted).
    tstz("participants_final_read_at"),
    *entity_columns(),
)

# One row per participant listed by the campaign's latest complete read of its participant list
# (one no longer listed is removed, its history interval closed). ``participant_key`` survives a
# sign-up: ``pre:<pre_registered_identifier>``, else ``email:<sha256 of the lower-cased
# pre_registered_email>`` while the record carries one, else ``id:<id>``, else ``user:<user_id>``,
# else the display name with the same prefixes.
metapic_participants = sa.Table(
    "metapic_participants",
    metadata,
    big("offer_id", primary_key=True),
    text("participant_key", primary_key=True),
    big("participant_id"),
    big("user_id"),
    text("display_name"),  # NULL when the API's display name is an e-mail address
    text("pre_registered_identifier"),
    big("clicks"),
    money("payment_amount"),
    *entity_columns(),
)

# One row per participant, campaign and day (``participants-stats`` with start_date = end_date).
# ``participant_key`` as in metapic_participants: a signed-up participant's stats (which carry no
# pre_registered_* fields) take the key that table has for its id or user id in that campaign.
# ``source_status``/``status`` are the participant's status as the API reported it when the day
# was fetched; the table has no status history of its own.
metapic_participant_daily_stats = sa.Table(
    "metapic_participant_daily_stats",
    metadata,
    big("offer_id", primary_key=True),
    text("participant_key", primary_key=True),
    sa.Column("date", sa.Date, primary_key=True),
    big("participant_id"),
    big("user_id"),
    text("display_name"),
    big("clicks"),
    big("links_created"),
    money("estimated_gp"),
    sa.Column("estimated_earning_to_cost_ratio", sa.Numeric(18, 6)),
    *entity_columns(),
)
