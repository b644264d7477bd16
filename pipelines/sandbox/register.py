"""The sandbox's cpa.moe leads as a register CSV, as if we had submitted every one of them.

cpa.moe only answers for lead ids we send, so a sandbox world is only useful once its leads are in
our register: ``make run`` (sandbox mode) and the benchmarks drop this file in CPAMOE_LEADS_DIR.
"""

from __future__ import annotations

import csv
import os
from datetime import UTC, datetime
from pathlib import Path

from pipelines.sandbox.server import Sandbox

REGISTER_FILE = "sandbox_leads.csv"


def write_lead_register(sandbox: Sandbox, leads_dir: Path, file_name: str = REGISTER_FILE) -> int:
    """Write every lead of the world as ``id,offer,submitted_at``; returns the count."""
    book = sandbox.world.datasets.get("cpamoe_leads")
    leads = getattr(book, "leads", None)
    if not leads:
        return 0
    leads_dir.mkdir(parents=True, exist_ok=True)
    target = leads_dir / file_name
    tmp = leads_dir / (file_name + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "offer", "submitted_at"])
        for lead in leads:
            submitted = datetime.fromtimestamp(lead.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            writer.writerow([lead.lead_id, lead.offer, submitted])
    os.replace(tmp, target)  # a sync never sees a half-written file
    return len(leads)


PAYOUTS_FILE = "sandbox_payouts.csv"


def write_demo_payouts(path: Path) -> int:
    """A payouts CSV (``offer,amount,currency``) for the sandbox's cpa.moe offers, so the demo's
    ``v_earnings`` has cpa.moe money in it. Offer 200 is left out on purpose: a lead of an offer
    without a configured payout earns NULL."""
    from pipelines.sandbox.cpamoe import OFFERS

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [(offer, f"{8 + (offer % 7) * 1.5:.2f}", "EUR" if offer % 3 == 0 else "USD") for offer in sorted(OFFERS) if offer != 200]
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["offer", "amount", "currency"])
        writer.writerows(rows)
    os.replace(tmp, path)
    return len(rows)
