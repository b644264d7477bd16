"""The report as one self-contained HTML document: inline CSS, plotly.js embedded once in the head,
each chart a plotly div, tables as plain HTML. Nothing is loaded from the network when it opens.

Every value from the warehouse is HTML-escaped; plotly serialises the charts' data as JSON.
"""

from __future__ import annotations

import html
from datetime import date, datetime, timedelta
from decimal import Decimal

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from pipelines.report.charts import earnings_chart, fill_rate_chart, open_orders_chart
from pipelines.report.queries import EARNINGS_DAYS, MAX_ALERT_ROWS, ReportData, Table

# no plotly logo link in the mode bar: the page is read offline
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
MONEY_COLUMNS = {"total", "earned"}
RATE_COLUMNS = {"fill_rate", "median_order_fill_rate"}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0; color: #1f2933;
       background: #f5f7fa; font-size: 16px; }
header { background: #1f2933; color: #fff; padding: 18px 32px; }
header h1 { margin: 0; font-size: 26px; }
header p { margin: 4px 0 0; color: #cbd2d9; }
main { padding: 8px 32px 32px; max-width: 1500px; }
section { background: #fff; border-radius: 6px; padding: 14px 20px; margin: 16px 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.08); }
h2 { margin: 4px 0 6px; font-size: 20px; }
p.note { color: #52606d; margin: 2px 0 10px; }
.cards { display: flex; gap: 16px; flex-wrap: wrap; margin-top: 16px; }
.card { background: #fff; border-radius: 6px; padding: 10px 18px; box-shadow: 0 1px 3px rgba(0,0,0,.08);
        min-width: 120px; }
.card .value { font-size: 22px; font-weight: 600; }
.card .label { color: #52606d; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 8px 0; font-size: 15px; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e4e7eb; text-align: left; white-space: nowrap; }
th { background: #f0f4f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.empty { font-size: 18px; }
"""


def _cell(column: str, value: object) -> tuple[str, bool]:
    """A value as text, and whether it is a number (right-aligned)."""
    if value is None:
        return "", False
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        if column in RATE_COLUMNS:
            return f"{float(value):.1%}", True
        if column in MONEY_COLUMNS or isinstance(value, (float, Decimal)):
            return f"{float(value):,.2f}", True
        return f"{value:,}", True
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC"), False
    if isinstance(value, timedelta):
        return f"{value.total_seconds():,.1f} s", True
    if isinstance(value, date):
        return value.isoformat(), False
    return str(value), False


def html_table(table: Table, columns: list[str] | None = None) -> str:
    if table.missing:
        return f'<p class="note">{html.escape(table.missing)}</p>'
    if not table.rows:
        return '<p class="note">none</p>'
    columns = columns or table.columns
    head = "".join(f"<th>{html.escape(c.replace('_', ' '))}</th>" for c in columns)
    body = []
    for record in table.records():
        cells = []
        for column in columns:
            text, numeric = _cell(column, record[column])
            cells.append(f'<td class="num">{html.escape(text)}</td>' if numeric else f"<td>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _chart(figure: go.Figure | None, div_id: str, table: Table) -> str:
    if figure is None:
        return f'<p class="note">{html.escape(table.missing or "nothing to chart yet")}</p>'
    return figure.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG)


def _section(title: str, note: str, *parts: str, section_id: str) -> str:
    return (f'<section id="{section_id}"><h2>{html.escape(title)}</h2>'
            f'<p class="note">{html.escape(note)}</p>{"".join(parts)}</section>')


def _cards(data: ReportData) -> str:
    totals: dict[str, float] = {}
    for r in data.earnings.records():
        totals[r["currency"] or "?"] = totals.get(r["currency"] or "?", 0.0) + float(r["total"] or 0)
    cards = [(f"{v:,.2f} {c}", f"earned, last {EARNINGS_DAYS} days") for c, v in sorted(totals.items())]
    cards.append((f"{sum(r['orders'] for r in data.open_orders.records()):,}", "open orders"))
    cards.append((f"{data.alerts_total:,}", "alerts"))
    cards.append((f"{len(data.syncs.rows):,}", "streams synced"))
    return '<div class="cards">' + "".join(
        f'<div class="card"><div class="value">{html.escape(v)}</div><div class="label">{html.escape(label)}</div></div>'
        for v, label in cards
    ) + "</div>"


def _document(subtitle: str, body: str, with_plotly: bool) -> str:
    script = f'<script type="text/javascript">{get_plotlyjs()}</script>' if with_plotly else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Affiliate warehouse report</title><style>{STYLE}</style>{script}</head>"
        f'<body><header><h1>Affiliate warehouse report</h1><p>{html.escape(subtitle)}</p></header>'
        f"<main>{body}</main></body></html>\n"
    )


def empty_page(generated_at: datetime) -> str:
    body = ('<section id="empty"><p class="empty">No sync has written this warehouse yet: there is nothing '
            "to report. Run <code>make run</code> (it syncs the built-in sandbox when no credentials are "
            "set), then <code>make report</code> again.</p></section>")
    return _document(f"generated {generated_at:%Y-%m-%d %H:%M} UTC", body, with_plotly=False)


def build_page(data: ReportData, generated_at: datetime) -> str:
    """The whole document for a synced warehouse (``empty_page`` otherwise)."""
    if not data.synced:
        return empty_page(generated_at)
    as_of = f"{data.as_of:%Y-%m-%d %H:%M} UTC" if data.as_of else "unknown"
    figures = {
        "earnings-chart": (earnings_chart(data.earnings), data.earnings),
        "fill-rate-chart": (fill_rate_chart(data.fill_rate), data.fill_rate),
        "open-orders-chart": (open_orders_chart(data.open_orders), data.open_orders),
    }
    chart = {key: _chart(fig, key, table) for key, (fig, table) in figures.items()}
    shown = f"the {MAX_ALERT_ROWS} due first" if data.alerts_total > MAX_ALERT_ROWS else "all of them"
    sections = [
        _cards(data),
        _section("Daily earnings", f"Per source and currency, the last {EARNINGS_DAYS} days up to the last sync "
                 "(v_earnings_daily: day-over-day growth of each order's earnings; one panel per currency).",
                 chart["earnings-chart"], html_table(data.earnings, ["source", "currency", "total"]),
                 section_id="earnings"),
        _section("Fill rate by source", "Accepted orders (active, paused, on hold or completed; swap orders per "
                 "side): units delivered over units ordered, and the median order's fill rate (v_fill_rate).",
                 chart["fill-rate-chart"], html_table(data.fill_rate), section_id="fill-rate"),
        _section("Open orders by status", "Orders, leads and campaigns whose canonical status is not final "
                 "(v_earnings).", chart["open-orders-chart"], section_id="open-orders"),
        _section("Alerts", f"What needs a person (v_order_alerts), as of the last sync: {data.alerts_total:,} "
                 f"alerts; the list shows {shown}.",
                 *((html_table(data.alert_counts), html_table(data.alerts)) if data.alerts_total or data.alerts.missing
                   else ('<p class="note">No alert.</p>',)),
                 section_id="alerts"),
        _section("Last sync per stream", "sync_state and the run that wrote it (sync_runs).",
                 html_table(data.syncs), section_id="syncs"),
    ]
    with_plotly = any(fig is not None for fig, _ in figures.values())
    return _document(f"data as of {as_of} (the last sync) · generated {generated_at:%Y-%m-%d %H:%M} UTC",
                     "".join(sections), with_plotly)
