"""``affwh report``: the warehouse as one self-contained HTML page.

A tiny sandbox world is synced for several simulated days (two swap orders held waiting, so the
alerts have rows), then the CLI writes the page in a process of its own, as a user runs it. The
page is checked as a file (self-contained, figures equal to the warehouse's views, no secret and
no personal data, read-only access) and in headless Chromium with networking disabled (every
chart drawn by plotly, the trace counts, no console error, no request made), which also takes the
README's screenshot (docs/report.png).
"""

from __future__ import annotations

import html
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from conftest import ANCHOR, World, clean_env, isolate_env
from plotly.offline import get_plotlyjs
from test_marts import _waiting_order, _with_marts_inputs

from pipelines.sandbox import Sandbox

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "pipelines.cli", "report"]
SYNC_DAYS = 6  # syncs a simulated day apart: a week of daily earnings to chart
EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")
IPV4 = re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b")


def run_report(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, *args], cwd=cwd, env=clean_env(**env), capture_output=True, text=True, timeout=300, check=False,
    )


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A world synced SYNC_DAYS times a day apart, with cpa.moe's register and payouts (earnings in
    several currencies) and two swap orders waiting 60 h and 80 h at the last sync (one alert of
    each auto-reject kind); then ``affwh report`` with the default output, beside the warehouse.
    Yields the world (its environment restored), the CLI's result and the page."""
    tmp_path = tmp_path_factory.mktemp("report")
    monkeypatch = pytest.MonkeyPatch()
    sandbox = Sandbox(scale="tiny", seed=1, anchor=ANCHOR)
    try:
        isolate_env(monkeypatch, ONLYTRAFFIC_MARKETER_PAGE_SIZE="50", HTTP_BACKOFF_BASE_SECONDS="0.01",
                    HTTP_TIMEOUT_SECONDS="30")
        monkeypatch.chdir(tmp_path)
        sandbox.start()
        w = _with_marts_inputs(World(sandbox, tmp_path / "warehouse.duckdb", monkeypatch), tmp_path, monkeypatch)
        for day in range(SYNC_DAYS):
            if day:
                w.advance(hours=24)
            if day == SYNC_DAYS - 1:
                w.soon = _waiting_order(w, "studio_swap", hours_ago=60)
                w.overdue = _waiting_order(w, "studio_swap", hours_ago=80)
            w.sync()
        w.secrets = {v for k, v in w.env().items() if any(s in k for s in ("KEY", "TOKEN", "SECRET", "PASSWORD"))}
        w.secrets.add(f"{w.env()['CPAMOE_USER_ID']}-{w.env()['CPAMOE_API_KEY']}")  # cpa.moe's id parameter
        stamp = w.warehouse_path.stat().st_mtime_ns, w.warehouse_path.stat().st_size
        # another process reading the warehouse meanwhile: a reader only ever shares the file
        with duckdb.connect(str(w.warehouse_path), read_only=True):
            done = run_report(cwd=tmp_path, WAREHOUSE_PATH=str(w.warehouse_path))
        w.untouched = stamp == (w.warehouse_path.stat().st_mtime_ns, w.warehouse_path.stat().st_size)
        monkeypatch.undo()
        yield w, done, tmp_path / "report.html"
    finally:
        monkeypatch.undo()
        sandbox.stop()


def own_part(page: str) -> str:
    """The page without the embedded plotly.js library (its own text, and the charts' data)."""
    return page.replace(get_plotlyjs(), "")


def figure_data(page: str, div_id: str) -> list[dict]:
    """The traces plotly is given for the chart ``div_id`` (the JSON of its ``Plotly.newPlot`` call)."""
    call = re.search(r'Plotly\.newPlot\(\s*"' + re.escape(div_id) + r'",\s*', page)
    start = call.end()
    data, _ = json.JSONDecoder().raw_decode(page[start:])
    return data


# -- the file ------------------------------------------------------------------------------------


def test_the_cli_writes_one_self_contained_page_beside_the_warehouse(reported):
    w, done, page_path = reported
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {page_path}"
    page = page_path.read_text()
    assert page.count(get_plotlyjs()) == 1  # the library embedded once, for every chart
    own = own_part(page)
    assert "<script src" not in own.replace(" ", "") and "<link" not in own
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", own)  # nothing loaded from anywhere
    for title in ("Daily earnings", "Fill rate by source", "Open orders by status", "Alerts", "Last sync per stream"):
        assert f"<h2>{title}</h2>" in page
    assert not list(page_path.parent.glob(".report.html.partial"))


def test_the_page_holds_the_warehouses_figures(reported):
    w, _, page_path = reported
    page = page_path.read_text()
    as_of = w.scalar("SELECT as_of FROM v_warehouse_clock")
    earnings = w.query(
        "SELECT source, currency, round(sum(earned), 2) FROM v_earnings_daily "
        "WHERE day > CAST(? AS DATE) - 90 GROUP BY ALL ORDER BY ALL", [as_of])
    traces = figure_data(page, "earnings-chart")
    assert sorted((t["name"], round(sum(y for y in t["y"] if y is not None), 2)) for t in traces) == sorted(
        (f"{s} ({c})", float(total)) for s, c, total in earnings)
    assert len({c for _, c, _ in earnings}) >= 2  # a panel per currency, really exercised
    assert max(len(t["x"]) for t in traces) >= SYNC_DAYS - 1

    open_orders = w.query(
        "SELECT source, CAST(status AS VARCHAR), count(*) FROM v_earnings "
        "WHERE status IN ('pending', 'active', 'paused', 'on_hold') GROUP BY ALL")
    shown = {(s, t["name"]): n for t in figure_data(page, "open-orders-chart") for s, n in zip(t["x"], t["y"], strict=True) if n}
    assert shown == {(s, st): n for s, st, n in open_orders}

    fill = dict(w.query("SELECT source, sum(units_delivered) / sum(units_ordered) FROM v_fill_rate "
                        "WHERE status IN ('active', 'paused', 'on_hold', 'completed') AND units_ordered > 0 GROUP BY ALL"))
    (rate,) = [t for t in figure_data(page, "fill-rate-chart") if t["name"] == "units delivered / ordered"]
    assert {s: round(v, 4) for s, v in zip(rate["x"], rate["y"], strict=True)} == {s: round(float(v), 4) for s, v in fill.items()}

    # the alerts: both waiting swap orders, each with its kind and detail
    alerts = w.query("SELECT alert, source, order_id, detail FROM v_order_alerts")
    assert ("auto_reject_soon", "swap", w.soon.order_id, "waiting for 60 h; auto-rejected after 72 h") in alerts
    assert ("auto_reject_overdue", "swap", w.overdue.order_id, "waiting for 80 h; auto-rejected after 72 h") in alerts
    for row in alerts:  # fewer than the 200 the list shows
        assert "<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row) in page, row
    # the last sync of every stream
    for stream, synced in w.query("SELECT stream, last_synced_at FROM sync_state"):
        assert f"<td>{stream}</td>" in page and f"{synced:%Y-%m-%d %H:%M} UTC" in page
    assert f"data as of {as_of:%Y-%m-%d %H:%M} UTC" in page


def test_no_secret_and_no_personal_data_in_the_page(reported):
    w, _, page_path = reported
    page = page_path.read_text()
    assert w.secrets and all(len(s) >= 8 for s in w.secrets)
    assert [s for s in w.secrets if s in page] == []
    own = own_part(page)
    assert EMAIL.findall(own) == [] and IPV4.findall(own) == []
    assert str(w.warehouse_path) not in page and "cursor" not in own


def test_the_report_only_reads_the_warehouse(reported):
    w, done, _ = reported
    assert done.returncode == 0  # while another process held a read-only connection: no write lock taken
    assert w.untouched  # neither the file's size nor its modification time changed
    assert not list(w.warehouse_path.parent.glob("*.wal"))


def test_an_empty_warehouse_still_gets_a_page_that_says_so(tmp_path):
    from pipelines.warehouse import Warehouse

    missing = tmp_path / "none" / "warehouse.duckdb"
    done = run_report("--output", str(tmp_path / "out" / "r.html"), cwd=tmp_path, WAREHOUSE_PATH=str(missing))
    assert done.returncode == 0, done.stderr
    assert "no sync has written the warehouse yet" in done.stdout
    assert not missing.exists() and not missing.parent.exists()  # a report creates no warehouse
    page = (tmp_path / "out" / "r.html").read_text()
    assert "No sync has written this warehouse yet" in page and "Plotly" not in page

    schema_only = tmp_path / "schema.duckdb"  # tables created, no stream synced
    Warehouse(str(schema_only)).ensure_schema()
    done = run_report("--output", str(tmp_path / "r2.html"), cwd=tmp_path, WAREHOUSE_PATH=str(schema_only))
    assert done.returncode == 0, done.stderr
    assert "No sync has written this warehouse yet" in (tmp_path / "r2.html").read_text()


def test_the_report_package_imports_no_dagster_source_or_feed():
    from test_layers import MODULES, violations

    assert "pipelines.report.queries" in MODULES  # the walk sees the package
    assert violations(("pipelines.report",), ("dagster", "pipelines.defs", "pipelines.sources", "pipelines.feeds")) == {}


# -- in a browser ----------------------------------------------------------------------------------

WINDOW = (1000, 1300)  # the README shows the screenshot at about this width: its text stays readable
CHARTS = {"earnings-chart", "fill-rate-chart", "open-orders-chart"}


@pytest.fixture(scope="module")
def offline_browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from test_browser import CHROMIUM_FLAGS, ensure_chromium

    browser_path, chromedriver = ensure_chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}", "--host-resolver-rules=MAP * ~NOTFOUND"]:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        driver.set_page_load_timeout(60)
        driver.set_network_conditions(offline=True, latency=0, download_throughput=0, upload_throughput=0)
        yield driver
    finally:
        driver.quit()


@pytest.mark.ui
def test_the_charts_render_in_chromium_with_networking_disabled(reported, offline_browser):
    from selenium.webdriver.support.ui import WebDriverWait

    w, _, page_path = reported
    driver = offline_browser
    driver.get(page_path.as_uri())
    drawn = """return Array.from(document.querySelectorAll('.js-plotly-plot')).map(d =>
        [d.id, d.data ? d.data.length : -1, d.querySelectorAll('svg.main-svg').length, d.querySelectorAll('g.trace').length,
         d.querySelectorAll('g.point path').length])"""
    WebDriverWait(driver, 60, poll_frequency=0.5).until(
        lambda d: {c[0] for c in d.execute_script(drawn) if c[3] > 0} == CHARTS)
    charts = {c[0]: c[1:] for c in driver.execute_script(drawn)}
    page = page_path.read_text()
    for chart, (given, svgs, traces, bars) in charts.items():
        expected = len(figure_data(page, chart))
        assert given == traces == expected, (chart, given, traces, expected)  # every trace drawn
        assert svgs >= 2 and bars > 0, chart
    assert charts["earnings-chart"][0] == w.scalar(
        "SELECT count(DISTINCT (source, currency)) FROM v_earnings_daily WHERE day > CAST((SELECT as_of FROM v_warehouse_clock) AS DATE) - 90")

    # nothing was requested but the page itself, and the network really is off
    assert driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)") == []
    probe = driver.execute_async_script(
        "const done = arguments[0]; fetch('https://example.org/').then(() => done('reached'), e => done('failed'))")
    assert probe == "failed"
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "example.org" not in e["message"]]
    assert errors == []
    text = driver.execute_script("return document.body.innerText")
    assert "Daily earnings" in text and w.soon.order_id in text

    driver.execute_script("window.scrollTo(0, 0)")
    screenshot(driver, "report.png")


def screenshot(driver, name: str) -> Path:
    """docs/<name> when missing or with UPDATE_SCREENSHOTS=1 (a test run leaves the work tree
    as it was), else the temp folder; checked to be a PNG of the window, not a blank page."""
    import struct
    import tempfile

    docs = PROJECT_ROOT / "docs"
    path = docs / name if not (docs / name).exists() or os.environ.get("UPDATE_SCREENSHOTS") == "1" else (
        Path(tempfile.gettempdir()) / f"affwh-{name}")
    assert driver.save_screenshot(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width == WINDOW[0] and WINDOW[1] * 0.8 < height <= WINDOW[1], (width, height)
    assert len(data) > 30_000, f"{name} is only {len(data)} bytes: a blank page?"
    return path
