"""The warehouse schema: SQLAlchemy tables, the lifecycle status enum and status mappings.

Every module of this package is imported here (by :func:`models.status.model_modules`, which also
collects each module's ``STATUS_MAPPINGS``), so its tables are on ``metadata``: a new
``models/<source>.py`` is found without being named anywhere.
"""

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
