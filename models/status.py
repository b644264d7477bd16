"""The canonical lifecycle status and how every source's own statuses map onto it.

Every entity table keeps the source's raw status in ``source_status`` and the canonical one in
``status`` (a DuckDB ENUM named ``lifecycle_status``). A raw value missing from these mappings is
kept as-is with ``status`` NULL, and the ``*_known_statuses`` asset check fails naming it: an
unknown value must never crash a run or drop a row.
"""

from __future__ import annotations

from enum import Enum


class LifecycleStatus(str, Enum):
    PENDING = "pending"
    ACTIVE = "active"
    PAUSED = "paused"
    ON_HOLD = "on_hold"
    COMPLETED = "completed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


LIFECYCLE_STATUSES: tuple[str, ...] = tuple(s.value for s in LifecycleStatus)

# Statuses after which an entity never changes again; every other status is open.
TERMINAL_STATUSES: frozenset[str] = frozenset(
    s.value for s in (LifecycleStatus.COMPLETED, LifecycleStatus.REJECTED, LifecycleStatus.CANCELLED)
)
OPEN_STATUSES: frozenset[str] = frozenset(LIFECYCLE_STATUSES) - TERMINAL_STATUSES

P, A, PA, H, C, R, X = (
    LifecycleStatus.PENDING,
    LifecycleStatus.ACTIVE,
    LifecycleStatus.PAUSED,
    LifecycleStatus.ON_HOLD,
    LifecycleStatus.COMPLETED,
    LifecycleStatus.REJECTED,
    LifecycleStatus.CANCELLED,
)

# source name (as written to status_history.source) -> raw status -> canonical status
STATUS_MAPPINGS: dict[str, dict[str, LifecycleStatus]] = {
    "cpc": {"waiting": P, "active": A, "rejected": R, "completed": C},
    "cpl": {"waiting": P, "accepted": A, "rejected": R, "completed": C, "cancelled": X},
    "swap": {"waiting": P, "accepted": A, "rejected": R, "completed": C, "cancelled": X},
    "cpamoe": {"wait": P, "hold": H, "approve": C, "cancel": X, "trash": R},
    "metapic_offer": {"scheduled": P, "active": A, "paused": PA, "ended": C, "deleted": X},
    "metapic_participant": {
        "suggestion": P,
        "open": P,
        "accepted": A,
        "product_sent": A,
        "have_received": A,
        "done": C,
        "store_denied": R,
    },
}


# Raw statuses that map to a terminal canonical status while the source's record still moves on
# behind it. cpa.moe: an approved lead (``approve`` = completed) keeps an extended status that
# goes on (packing, sending, ...) until Completed/Return/Deleted, so the poll keeps asking for it.
STILL_MOVING: dict[str, frozenset[str]] = {"cpamoe": frozenset({"approve"})}


def terminal_raw_statuses(source: str) -> tuple[str, ...]:
    """The source's raw statuses whose canonical status is terminal, in the mapping's order."""
    return tuple(raw for raw, canon in STATUS_MAPPINGS[source].items() if canon.value in TERMINAL_STATUSES)


def open_raw_statuses(source: str) -> tuple[str, ...]:
    """The source's raw statuses whose canonical status is open, in the mapping's order."""
    return tuple(raw for raw, canon in STATUS_MAPPINGS[source].items() if canon.value in OPEN_STATUSES)


def final_raw_statuses(source: str) -> tuple[str, ...]:
    """Terminal raw statuses after which the source's record never changes again (what a poll
    can stop asking about): the terminal ones minus :data:`STILL_MOVING`."""
    still = STILL_MOVING.get(source, frozenset())
    return tuple(raw for raw in terminal_raw_statuses(source) if raw not in still)


def sql_list(values) -> str:
    """``'a', 'b'``: values as a SQL IN list (sorted when given a set, so the SQL is stable)."""
    ordered = sorted(values) if isinstance(values, (set, frozenset)) else list(values)
    return ", ".join(_sql_str(v) for v in ordered)


def map_status(source: str, raw: str | None) -> LifecycleStatus | None:
    """Canonical status for a raw one, or None when the value is unknown."""
    if raw is None:
        return None
    return STATUS_MAPPINGS[source].get(raw)


def status_case_sql(source: str, column: str) -> str:
    """A SQL CASE expression mapping ``column`` (raw status) to ``lifecycle_status``.

    Generated from STATUS_MAPPINGS so the Python and SQL views of the mapping can never drift.
    Unknown values become NULL.
    """
    whens = " ".join(
        f"WHEN {_sql_str(raw)} THEN {_sql_str(canon.value)}"
        for raw, canon in STATUS_MAPPINGS[source].items()
    )
    return f"CAST(CASE {column} {whens} ELSE NULL END AS lifecycle_status)"


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
