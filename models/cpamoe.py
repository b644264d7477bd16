"""cpa.moe tables (submitted leads and their statuses).

cpa.moe only answers for lead ids we send it, so the warehouse itself is the register of the leads
we submitted: ``cpamoe_leads`` gets a row when a lead is registered (a CSV file in
``CPAMOE_LEADS_DIR`` or ``submit_lead``) and the status poll fills in and refreshes the rest.
``cpamoe_lead_files`` remembers every CSV file loaded (so each is loaded once) and
``cpamoe_lead_file_errors`` every line that was rejected, by line number.

No customer phone, e-mail, IP or name is ever stored here, not even inside ``raw``.
"""

from __future__ import annotations

import sqlalchemy as sa

from models.columns import big, entity_columns, metadata, text, tstz
from models.lifecycle import LifecycleStatus as S

# status_history.source -> raw stage -> canonical status (collected by models.status)
STATUS_MAPPINGS = {
    "cpamoe": {
        "wait": S.PENDING, "hold": S.ON_HOLD, "approve": S.COMPLETED, "cancel": S.CANCELLED, "trash": S.REJECTED,
    },
}

# An approved lead (``approve`` = completed) keeps an extended status that goes on (packing,
# sending, ...) until Completed/Return/Deleted, so the poll keeps asking for it.
STILL_MOVING = {"cpamoe": frozenset({"approve"})}

# One row per lead, keyed by OUR id (list.json's ``id``; add.json's ``uid``, see the source module).
cpamoe_leads = sa.Table(
    "cpamoe_leads",
    metadata,
    text("lead_id", primary_key=True),  # our order id: what list.json is asked with
    text("uid"),  # cpa.moe's internal order id (list.json ``uid``, add.json ``id``)
    big("offer_id"),  # from the register (list.json does not return it)
    text("src"),  # list.json ``src``: our affiliate / source id as cpa.moe knows it
    text("stage"),  # wait | hold | approve | cancel | trash (= source_status)
    text("stage_name"),
    big("status_code"),  # extended status 1..12
    text("status_name"),
    big("reason_code"),  # cancel reason (status 5)
    text("reason_name"),
    sa.Column("is_trash", sa.Boolean),  # stage trash, or a reason the docs mark "(trash)"
    big("item_count"),  # list.json ``count``
    text("comment"),
    # NULL: never polled; false: the last poll(s) did not return it (not_found_at: since when).
    sa.Column("found", sa.Boolean),
    tstz("not_found_at"),
    tstz("submitted_at"),
    text("registered_from"),  # the CSV file name, or 'add.json'
    tstz("last_checked_at"),  # observation time of the last poll that asked for this lead
    *entity_columns(),
)

# One row per CSV file (name + content hash) the register has processed.
cpamoe_lead_files = sa.Table(
    "cpamoe_lead_files",
    metadata,
    text("file_name", primary_key=True),
    text("sha256", primary_key=True),
    big("size_bytes"),
    tstz("loaded_at", nullable=False),
    text("outcome", nullable=False),  # loaded | rejected | duplicate_file
    big("rows_loaded"),
    big("rows_rejected"),
    text("message"),  # why a file was rejected, or what was noticed about it
    sa.Column("ignored_columns", sa.JSON),  # header columns not loaded (phone, email, ...)
    sa.Column("errors", sa.JSON),  # the first rejected lines [{line, error}]; all of them below
    text("run_id"),
)

# Every rejected CSV line, by its line number in the file (the header is line 1).
cpamoe_lead_file_errors = sa.Table(
    "cpamoe_lead_file_errors",
    metadata,
    text("file_name", nullable=False),
    text("sha256", nullable=False),
    big("line", nullable=False),
    text("lead_id"),  # as written in the file (trimmed, cut to 80 characters)
    text("error", nullable=False),
    text("run_id"),
)
