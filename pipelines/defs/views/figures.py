"""The business figures each view's materialization carries, so the asset's *Plots* tab charts
them across syncs: what was earned today per currency, open orders, the average fill rate, the
alerts. Numbers only (floats and ints; Dagster plots numeric metadata), read in the views' step
right after the view was (re)created, from the same connection.

A currency's series is written for every currency the view has ever seen, zero on a day without
earnings, so its chart has no gaps; an alert kind's only while it has alerts (``alerts`` always).
"""

from collections.abc import Callable
from datetime import date
from decimal import Decimal

import dagster as dg

from models.status import OPEN_STATUSES, sql_list

Figures = dict[str, float | int | dg.MetadataValue]


def _number(value) -> float | int:
    if value is None:
        return 0
    return float(value) if isinstance(value, (Decimal, float)) else int(value)


def earnings(con, today: date) -> Figures:  # noqa: ARG001
    """Earned so far, per currency (NULL earnings, e.g. no configured payout, count as zero)."""
    rows = con.execute(
        "SELECT currency, sum(earned) FROM v_earnings WHERE currency IS NOT NULL GROUP BY ALL ORDER BY 1"
    ).fetchall()
    return {f"earned_{currency}": _number(total) for currency, total in rows}


def earnings_daily(con, today: date) -> Figures:
    """Earned on the warehouse clock's UTC day (the snapshot's day), per currency."""
    rows = con.execute(
        "SELECT currency, sum(earned) FILTER (WHERE day = $today) FROM v_earnings_daily "
        "WHERE currency IS NOT NULL GROUP BY ALL ORDER BY 1",
        {"today": today},
    ).fetchall()
    return {"day": dg.MetadataValue.text(str(today)), **{f"earned_today_{c}": _number(t) for c, t in rows}}


def summary(con, today: date) -> Figures:  # noqa: ARG001
    """Orders (leads, campaigns) still open, and all of them."""
    open_orders, orders = con.execute(
        f"SELECT sum(orders) FILTER (WHERE status IN ({sql_list(OPEN_STATUSES)})), sum(orders) FROM v_summary"
    ).fetchone()
    return {"open_orders": _number(open_orders), "orders": _number(orders)}


def fill_rate(con, today: date) -> Figures:  # noqa: ARG001
    """Mean fill rate over the orders (swap sides) with a known one, all and still open."""
    every, still_open = con.execute(
        f"SELECT avg(fill_rate), avg(fill_rate) FILTER (WHERE status IN ({sql_list(OPEN_STATUSES)})) "
        "FROM v_fill_rate WHERE fill_rate IS NOT NULL"
    ).fetchone()
    return {"average_fill_rate": _number(every), "average_fill_rate_open": _number(still_open)}


def alerts(con, today: date) -> Figures:  # noqa: ARG001
    """Alerts now, in all and per kind."""
    rows = con.execute("SELECT alert, count(*) FROM v_order_alerts GROUP BY ALL ORDER BY 1").fetchall()
    return {"alerts": sum(n for _, n in rows), **{f"alerts_{kind}": n for kind, n in rows}}


FIGURES: dict[str, Callable[..., Figures]] = {
    "v_earnings": earnings,
    "v_earnings_daily": earnings_daily,
    "v_summary": summary,
    "v_fill_rate": fill_rate,
    "v_order_alerts": alerts,
}


def view_figures(con, name: str, today: date) -> Figures:
    """The row count of view ``name`` and its business figures, if it has any."""
    figures: Figures = {"dagster/row_count": con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]}
    if name in FIGURES:
        figures.update(FIGURES[name](con, today))
    return figures
