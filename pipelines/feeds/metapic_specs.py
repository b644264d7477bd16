"""Metapic tables as the feeds write them: how an offer, a participant and a day of a
participant's statistics become rows (typing specs), and the summaries logged after each commit.

- ``traffic_sources_costs[].cpc`` is in minor units (the docs: ``cpc: 1`` = ``cpc_v2.amount "0.01"``):
  ``cpc_v2.amount`` is used when present, else ``cpc / 100``.

Assumptions where the docs are silent:

- ``cpa`` is stored as given (it looks like a commission rate: 0.04 next to a 0.01 CPC).
- The offer's ``cpc``/``cpa`` are those of the "General" traffic source (``source`` 0), else of
  the first one listed.
- With ``include[]=store`` the list carries the detail's flat ``store_name``/``currency`` (a nested
  ``store`` object is read too).
- ``valid_from``/``valid_until`` (not in the documented responses) are read when present, as UTC.

The feeds: :mod:`pipelines.feeds.metapic_offers`, :mod:`pipelines.feeds.metapic_participants`
(with :mod:`pipelines.feeds.metapic_snapshot`) and :mod:`pipelines.feeds.metapic_stats`; the
participants' keys: :mod:`pipelines.feeds.metapic_keys`; the API client: :mod:`pipelines.sources.metapic`.
"""

from __future__ import annotations

from models.status import status_case_sql
from pipelines.feeds.metapic_keys import json_text, keyed_records_sql
from pipelines.warehouse.staging import Field, TableSpec


def _general_cost(key: str) -> str:
    """A field of the offer's "General" traffic source (source 0), else of the first one."""
    costs = "json_extract(rec, '$.traffic_sources_costs[*]')"
    general = f"coalesce(list_filter({costs}, lambda c: json_extract_string(c, '$.source') = '0')[1], {costs}[1])"
    return f"json_extract_string({general}, '{key}')"


def _decimal(expr: str) -> str:
    return f"TRY_CAST({expr} AS DECIMAL(18,6))"


OFFER_CPC_SQL = f"coalesce({_decimal(_general_cost('$.cpc_v2.amount'))}, {_decimal(_general_cost('$.cpc'))} / 100)"

OFFERS = TableSpec(
    table="metapic_offers",
    source="metapic_offer",
    key=("offer_id",),
    created_field=None,
    # written by the participants feed's step "mark terminal offers' participants as read once more"
    step_columns=("participants_final_read_at",),
    fields=(
        Field("offer_id", "$.id", "integer", required=True),
        Field("campaign_title", "$.campaign_title", "string"),
        Field("store_id", "$.store_id", "integer"),
        Field("store_name", sql=f"coalesce({json_text('$.store_name')}, {json_text('$.store.name')})"),
        Field(
            "currency",
            sql=f"coalesce({json_text('$.currency')}, {json_text('$.store.currency')}, "
            f"{_general_cost('$.cpc_v2.currency')}, {_general_cost('$.currency')})",
        ),
        Field("type", "$.type", "string"),
        Field("token", "$.token", "string"),
        Field("has_product_seeding", "$.has_product_seeding", "boolean"),
        Field("has_onetime_payment", "$.has_onetime_payment", "boolean"),
        Field("cpc", sql=OFFER_CPC_SQL),
        Field("cpa", sql=_decimal(_general_cost("$.cpa"))),
        Field("valid_from", "$.valid_from", "timestamp"),
        Field("valid_until", "$.valid_until", "timestamp"),
    ),
)

PARTICIPANTS = TableSpec(
    table="metapic_participants",
    source="metapic_participant",
    key=("offer_id", "participant_key"),
    created_field=None,
    records_sql=keyed_records_sql(),
    fields=(
        Field("offer_id", sql="label_offer_id"),  # the offer whose list it came from
        Field("participant_key", sql="participant_key"),
        Field("participant_id", "$.id", "integer"),
        Field("user_id", "$.user_id", "integer"),
        Field("display_name", "$.display_name", "string"),
        Field("pre_registered_identifier", "$.pre_registered_identifier", "string"),
        Field("clicks", "$.clicks", "integer"),
        Field("payment_amount", "$.payment_amount", "decimal_text"),
    ),
)

_PARTICIPANT_STATUS = "json_extract_string(rec, '$.status')"

# A day of participants-stats, keyed like the participants, taking the key the participants table
# has for a signed-up participant (the snapshot ``participant_aliases``: metapic_keys.PARTICIPANT_ALIASES_SQL).
STATS_RECORDS_SQL = f"""
    SELECT k.* REPLACE (coalesce(a.participant_key, k.participant_key) AS participant_key)
    FROM ({keyed_records_sql(", TRY_CAST(split_part(label, ':', 3) AS DATE) AS label_date")}) AS k
    LEFT JOIN participant_aliases AS a ON a.offer_id = k.label_offer_id AND a.alias = k.participant_key"""

DAILY_STATS = TableSpec(
    table="metapic_participant_daily_stats",
    source=None,  # no history: the participant's status is kept as columns only
    key=("offer_id", "participant_key", "date"),
    created_field=None,
    records_sql=STATS_RECORDS_SQL,
    fields=(
        Field("offer_id", sql="label_offer_id"),
        Field("participant_key", sql="participant_key"),
        Field("date", sql="label_date"),
        Field("participant_id", "$.id", "integer"),
        Field("user_id", "$.user_id", "integer"),
        Field("display_name", "$.display_name", "string"),
        Field("clicks", "$.clicks", "integer"),
        Field("links_created", "$.links_created", "integer"),
        Field("estimated_gp", "$.estimated_gp", "decimal_text"),
        Field("estimated_earning_to_cost_ratio", "$.estimated_earning_to_cost_ratio", "decimal_text"),
        Field("source_status", sql=_PARTICIPANT_STATUS),
        Field("status", sql=f"CAST({status_case_sql('metapic_participant', _PARTICIPANT_STATUS)} AS VARCHAR)"),
    ),
)

OFFERS_SUMMARY_SQL = """
SELECT count(*) AS offers,
       count(*) FILTER (WHERE status = 'active') AS live_offers,
       count(*) FILTER (WHERE status IN ('pending', 'paused')) AS upcoming_or_paused_offers,
       count(*) FILTER (WHERE status IS NULL) AS offers_with_unknown_status
FROM wh.main.metapic_offers
"""

PARTICIPANTS_SUMMARY_SQL = """
SELECT count(*) AS participants,
       count(*) FILTER (WHERE p.status = 'active') AS participants_active,
       sum(p.clicks) AS participant_clicks,
       sum(p.clicks) FILTER (WHERE o.status = 'active') AS participant_clicks_live_offers,
       count(*) FILTER (WHERE p.payment_amount > 0) AS participants_paid,
       count(DISTINCT o.currency) FILTER (WHERE p.payment_amount > 0) AS payment_currencies
FROM wh.main.metapic_participants AS p LEFT JOIN wh.main.metapic_offers AS o USING (offer_id)
"""


# The participants that still exist: an entity of the participants' history without a row here
# was removed (snapshot rule) and has no current interval (pipelines.checks).
PARTICIPANT_ENTITIES_SQL = f"SELECT {PARTICIPANTS.entity_id_sql()} FROM {PARTICIPANTS.table}"
