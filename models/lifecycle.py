"""The canonical lifecycle status every source's raw statuses map onto, and its open/terminal sets.

A module of its own (no import of ``models``) so that each ``models/<source>.py`` can declare its
``STATUS_MAPPINGS`` with these values while :mod:`models.status` collects them.
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
