"""The hand-off between layers: one API response's records as raw JSON.

API clients (:mod:`pipelines.sources`) produce pages, the warehouse loader stages them; neither
imports the other, so the type lives here, below both, with no imports of its own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Page:
    """One API response's records, as raw JSON for DuckDB.

    ``records_path`` is where the records are in ``body`` (a JSON path returning a list).
    ``listed_status`` is the status filter the page was requested with, used when a record has no
    status of its own.
    """

    body: bytes | str
    records: int
    listed_status: str | None = None
    label: str = ""
    records_path: str = "$.data[*]"
