"""cpa.moe feeds (lead register and lead statuses), each its own step (pipelines/defs/feed_asset.py).

``cpamoe_lead_files`` loads new CSV files of ``CPAMOE_LEADS_DIR`` into the register (it needs no
credentials); ``cpamoe_leads`` then polls list.json for every registered lead that is not final.
"""


import dagster as dg

from pipelines.checks import SAMPLE, Outcome, check, history_intervals_check, standard_checks
from pipelines.defs.feed_asset import FeedRun, feed_asset
from pipelines.feeds import cpamoe as feed
from pipelines.feeds.cpamoe_register import load_lead_register
from pipelines.feeds.status_lists import SyncReport


def sync_lead_files(run: FeedRun, progress) -> SyncReport:  # noqa: ARG001 - files are loaded once each
    return load_lead_register(
        warehouse=run.open_warehouse(),
        leads_dir=run.cpamoe.leads_dir,
        run_id=run.run_id,
        log=run.log.info,
    )


def sync_leads(run: FeedRun, progress) -> SyncReport:
    with run.cpamoe.client(on_retry=run.log.warning) as client:
        return feed.sync_lead_statuses(
            warehouse=run.open_warehouse(),
            client=client,
            auth_id=run.cpamoe.auth_id,
            run_id=run.run_id,
            full_refresh=run.full_refresh,
            max_workers=run.cpamoe.max_concurrency,
            log=run.log.info,
            on_progress=progress,
        )


@check(
    "cpamoe_leads",
    "cpamoe_leads_known_codes",
    "Every status and reason code of cpamoe_leads is one the docs list (unknown codes are kept "
    "with a NULL name and named here).",
)
def cpamoe_leads_known_codes(con) -> Outcome:
    rows = con.execute(feed.unknown_codes_sql()).fetchall()
    if not rows:
        return Outcome(True, "every code is known")
    unknown = {f"{field}={value}": n for field, value, n in rows}
    return Outcome(
        False,
        f"unknown code(s): {', '.join(sorted(unknown))}",
        {"unknown_values": dg.MetadataValue.json(unknown), "rows": sum(unknown.values())},
    )


@check(
    "cpamoe_leads",
    "cpamoe_leads_found",
    "Every polled lead was returned by list.json (a warning names those that were not).",
)
def cpamoe_leads_found(con) -> Outcome:
    rows = con.execute(
        f"SELECT lead_id, not_found_at FROM cpamoe_leads WHERE found = false ORDER BY lead_id LIMIT {SAMPLE}"
    ).fetchall()
    total = con.execute("SELECT count(*) FROM cpamoe_leads WHERE found = false").fetchone()[0]
    if not total:
        return Outcome(True, "every polled lead was found")
    return Outcome(
        False,
        f"{total} lead(s) not found at cpa.moe, e.g. {rows[0][0]}",
        {"not_found": dg.MetadataValue.json({r[0]: r[1].isoformat() for r in rows})},
        severity=dg.AssetCheckSeverity.WARN,
    )


cpamoe_lead_files = feed_asset(
    "cpamoe_lead_files", group="cpamoe", sync=sync_lead_files, resources=["cpamoe"],
    description="cpa.moe lead register: each new CSV file in CPAMOE_LEADS_DIR loaded once into cpamoe_leads "
    "(bad lines reported by number here and in cpamoe_lead_file_errors).",
)
cpamoe_leads = feed_asset(
    "cpamoe_leads", group="cpamoe", sync=sync_leads, resources=["cpamoe"], deps=["cpamoe_lead_files"],
    description="cpa.moe lead statuses: list.json polled for every registered lead not yet final, one row per "
    "our lead_id (+ status_history).",
    checks=[
        *standard_checks("cpamoe_leads", "cpamoe_leads", ["lead_id"]),
        cpamoe_leads_known_codes,
        cpamoe_leads_found,
        history_intervals_check("cpamoe_leads", "cpamoe"),
    ],
)

# Tables written by an asset of another name than the table (the views' lineage reads this).
WRITES = {"cpamoe_lead_files": ("cpamoe_leads", "cpamoe_lead_file_errors")}

cpamoe_sync = dg.define_asset_job(
    "cpamoe_sync",
    selection=dg.AssetSelection.assets("cpamoe_lead_files", "cpamoe_leads"),
    description="Load new lead CSV files, then poll the statuses of open cpa.moe leads.",
)
