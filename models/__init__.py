"""The warehouse schema: SQLAlchemy tables, the lifecycle status enum and status mappings."""

from models import alerts, core, cpamoe, marts, metapic, onlytraffic  # noqa: F401  (registers the tables)
from models.columns import lifecycle_status, metadata
from models.status import LIFECYCLE_STATUSES, STATUS_MAPPINGS, TERMINAL_STATUSES, LifecycleStatus

__all__ = [
    "LIFECYCLE_STATUSES",
    "STATUS_MAPPINGS",
    "TERMINAL_STATUSES",
    "LifecycleStatus",
    "lifecycle_status",
    "metadata",
]
