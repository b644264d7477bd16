"""The warehouse schema: SQLAlchemy tables, the lifecycle status enum and status mappings."""

from models import core, onlytraffic  # noqa: F401  (registers tables on the metadata)
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
