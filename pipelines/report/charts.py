"""The report's charts, as plotly figures built from the aggregated rows of queries.py.

Plotly draws them in the browser from a JSON spec (plotly.js is embedded once in the page by
page.py), so each chart stays interactive (hover, zoom, legend toggles) without a server.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from pipelines.report.queries import Table

# one colour per source in every chart (plotly's default qualitative palette)
PALETTE = ["#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880"]
LAYOUT = {"template": "plotly_white", "margin": {"l": 60, "r": 20, "t": 40, "b": 40}, "font": {"size": 14}}


DAY_MS = 86_400_000


def _half_day(day: date, sign: int) -> str:
    """Half a day before (-1) or after (1) ``day``'s bar, which plotly centres on its midnight."""
    return (datetime.combine(day, time()) + sign * timedelta(hours=12)).isoformat()


def _colours(sources: list[str]) -> dict[str, str]:
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(sorted(set(sources)))}


def earnings_chart(earnings: Table) -> go.Figure | None:
    """Stacked daily bars per source, one panel per currency (amounts in different currencies are
    never added up or drawn on one axis); one trace per source and currency."""
    rows = earnings.records()
    if not rows:
        return None
    # the currency most sources earn in first (the busiest panel on top), then by name
    per_currency: dict[str, int] = {}
    for r in rows:
        per_currency[r["currency"] or "?"] = per_currency.get(r["currency"] or "?", 0) + 1
    currencies = sorted(per_currency, key=lambda c: (-per_currency[c], c))
    colours = _colours([r["source"] for r in rows])
    fig = make_subplots(
        rows=len(currencies), cols=1, shared_xaxes=True, vertical_spacing=0.25 / max(len(currencies), 2),
        subplot_titles=[f"earned per day, {c}" for c in currencies],
    )
    for r in rows:
        currency = r["currency"] or "?"
        fig.add_trace(
            go.Bar(
                x=r["days"], y=[float(v) if v is not None else None for v in r["earned"]],
                name=f"{r['source']} ({currency})", legendgroup=r["source"], marker_color=colours[r["source"]],
                hovertemplate="%{x|%Y-%m-%d}: %{y:,.2f} " + currency + "<extra>" + r["source"] + "</extra>",
            ),
            row=currencies.index(currency) + 1, col=1,
        )
    for i, currency in enumerate(currencies, start=1):
        fig.update_yaxes(title_text=currency, tickformat=",.2f", row=i, col=1)
    # the days synced, half a day either side, with a tick on whole days only (plotly's own
    # choice for a short span repeats a day's label at 12-hour ticks)
    days = [d for r in rows for d in r["days"]]
    first, last = min(days), max(days)
    step = max(1, -(-((last - first).days + 1) // 10))  # at most ~10 labels
    fig.update_xaxes(
        type="date", tickformat="%b %d", showticklabels=True, dtick=step * DAY_MS,
        tick0=first.isoformat(), range=[_half_day(first, -1), _half_day(last, 1)],
    )
    fig.update_layout(barmode="relative", height=160 + 240 * len(currencies), **LAYOUT)
    return fig


def fill_rate_chart(fill_rate: Table) -> go.Figure | None:
    """Per source: units delivered / units ordered over accepted orders, and the median order's
    fill rate (one large order can hide many lagging small ones)."""
    rows = fill_rate.records()
    if not rows:
        return None
    sources = [r["source"] for r in rows]
    fig = go.Figure()
    for name, column, colour in (("units delivered / ordered", "fill_rate", "#636efa"),
                                 ("median order", "median_order_fill_rate", "#00cc96")):
        values = [float(r[column]) if r[column] is not None else None for r in rows]
        fig.add_trace(go.Bar(
            x=sources, y=values, name=name, marker_color=colour,
            text=[f"{v:.0%}" if v is not None else "" for v in values], textposition="outside",
            hovertemplate="%{x}: %{y:.1%}<extra>" + name + "</extra>",
        ))
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    fig.update_layout(barmode="group", height=380, **LAYOUT)
    return fig


def open_orders_chart(open_orders: Table) -> go.Figure | None:
    """Open orders per source, stacked by canonical status; one trace per status."""
    rows = open_orders.records()
    if not rows:
        return None
    sources = sorted({r["source"] for r in rows})
    statuses = sorted({r["status"] for r in rows})
    counts = {(r["source"], r["status"]): r["orders"] for r in rows}
    fig = go.Figure()
    for i, status in enumerate(statuses):
        fig.add_trace(go.Bar(
            x=sources, y=[counts.get((s, status), 0) for s in sources], name=status,
            marker_color=PALETTE[(i + 3) % len(PALETTE)],
            hovertemplate="%{x}: %{y:,} " + status + "<extra></extra>",
        ))
    fig.update_yaxes(title_text="orders", rangemode="tozero")
    fig.update_layout(barmode="stack", height=380, **LAYOUT)
    return fig
