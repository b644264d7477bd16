"""``affwh report``: the warehouse as one self-contained HTML page (earnings, fill rate, open orders,
alerts, last syncs) for people who do not write SQL. queries.py reads the warehouse (read-only,
aggregated in DuckDB), charts.py draws the plotly figures, page.py assembles the document."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from pipelines.report.page import build_page
from pipelines.report.queries import ReportData, read_report

__all__ = ["ReportData", "read_report", "write_report"]


def write_report(location: str, output: Path) -> ReportData:
    """Read the warehouse at ``location`` and write the page to ``output`` (its folder created).

    The page is written to a temporary file beside ``output`` and renamed over it, so a browser
    that has the old report open never reads half a file."""
    data = read_report(location)
    page = build_page(data, datetime.now(UTC))
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.name}.partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(output)
    return data
