"""What a client of a status-filtered order list offers the incremental plan
(:mod:`pipelines.feeds.incremental`): one walk per status, newest first when asked, and an outcome
saying whether the walk was whole."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from pipelines.page import Page
from pipelines.sources.fetch import Emit


@dataclass
class WalkOutcome:
    status: str
    complete: bool  # the list was read to its end
    out_of_order: bool = False  # pages were not newest-first: an early stop would be unsafe
    warnings: list[str] = field(default_factory=list)
    degraded: bool = False  # pagination misbehaved (e.g. an empty page before the end): not whole
    moved: bool = False  # the list changed while it was read (e.g. its total moved between pages)


class StatusListing(Protocol):
    open_statuses: tuple[str, ...]
    terminal_statuses: tuple[str, ...]

    def walk(self, status: str, since: datetime | None, emit: Emit[Page]) -> WalkOutcome:
        """Emit the pages of one status list; with ``since``, newest first, stopping once the
        list reaches orders created before ``since``."""
        ...
