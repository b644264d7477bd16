"""The warehouse's notion of "now".

Observation times (``synced_at``, ``status_history.valid_from``) come from here. ``WAREHOUSE_NOW``
(an ISO-8601 timestamp) freezes it: the sandbox tests use it to move the warehouse clock together
with the sandbox's simulated clock, and it lets a replay reproduce a past run exactly.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime


def utc_now() -> datetime:
    frozen = os.environ.get("WAREHOUSE_NOW")
    if frozen:
        try:
            value = datetime.fromisoformat(frozen.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(
                f"WAREHOUSE_NOW={frozen!r} is not an ISO-8601 timestamp (e.g. 2026-01-31T12:00:00Z)"
            ) from None
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.now(UTC)
