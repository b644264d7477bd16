"""The Dagster UI in a real browser: headless Chromium (Debian's ``chromium`` + ``chromium-driver``)
opens the asset graph and the page of a finished backfill, on the servers tests/ui_stack.py starts,
and saves the screenshots the README shows (docs/asset-graph.png, docs/backfill.png).

Chromium is installed with apt-get when missing (CI runs as root on Debian). When it cannot be
installed the tests fail under CI (``CI`` set: a browser test that never runs protects nothing) and
skip, saying why, on a developer's machine.
"""

from __future__ import annotations

import base64
import os
import shutil
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import ui_stack
from conftest import DEVELOPER_ENV, PROXY_VARIABLES, clean_env
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

# the session's servers and backfills, shared with test_ui_backfill (started once)
from test_ui_backfill import backfills, dagster_ui  # noqa: F401

pytestmark = [pytest.mark.ui, pytest.mark.timeout(1200)]  # setup: servers, backfills (and apt-get)

DOCS = ui_stack.PROJECT_ROOT / "docs"
WINDOW = (1600, 1400)
PACKAGES = ["chromium", "chromium-driver"]
# Chromium here has no network beyond loopback: background networking would make it hang.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


# Page scripts: the UI has no URL for these view settings, so the test clicks as a person would.
COMMUNITY_DIALOG = "Join the Dagster community"
# what the UI stores once its first-visit dialog was answered
SKIP_COMMUNITY_DIALOG = """localStorage.setItem('communityNux', '"1"');"""
EXPAND_ALL_GROUPS = """
window.dispatchEvent(new KeyboardEvent('keydown', {key: 'e', code: 'KeyE', altKey: true, bubbles: true}));"""
HIDE_SIDEBARS = """
for (const e of document.querySelectorAll('a,button')) { if (e.innerText.trim() === 'Hide navigation') { e.click(); break; } }
let n = document.querySelector('input[placeholder^="Jump to"]');
while (n && !n.parentElement.querySelector('button')) n = n.parentElement;
if (n) n.parentElement.querySelector('button').click();"""
# The README's picture: top to bottom (sources, then the views they feed), the source groups
# collapsed to their names and the marts and views expanded; the whole graph's 18 boxes would be
# unreadable at the width a README is shown (GitHub: about 880 px). The UI keeps both in localStorage.
PICTURE_LAYOUT = """
localStorage.setItem('asset-graph-direction', '"vertical"');
localStorage.setItem('asset-graph-open-graph-nodes-global-__GLOBAL__',
                     JSON.stringify({expanded: 'global@global:marts,global@global:views'}));"""
# the box around everything the graph draws (groups and assets are HTML inside <foreignObject>)
GRAPH_BOX = """
const rects = Array.from(document.querySelectorAll('svg foreignObject'))
  .map(e => e.getBoundingClientRect()).filter(r => r.width > 0);
if (!rects.length) return null;
return [Math.min(...rects.map(r => r.left)), Math.min(...rects.map(r => r.top)),
        Math.max(...rects.map(r => r.right)), Math.max(...rects.map(r => r.bottom))];"""
LABEL_FONT_PX = """
for (const e of document.querySelectorAll('svg foreignObject *')) {
  if (e.childElementCount === 0 && e.innerText && e.innerText.trim() === arguments[0])
    return parseFloat(getComputedStyle(e).fontSize);
}
return null;"""
README_WIDTH = 880  # px: GitHub's README column, where a wider picture is scaled down
ZOOM_OUT = """
const slider = document.querySelector('[data-zoom-control]');
const next = slider && slider.nextElementSibling;
const button = next && (next.matches('button') ? next : next.querySelector('button'));
if (!button) return false;
button.click();
return true;"""


def _installed() -> tuple[str | None, str | None]:
    return shutil.which("chromium"), shutil.which("chromedriver")


def unavailable(reason: str):
    """No browser: a failure under CI (``CI`` set), a skip saying why elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"CI is set and the browser tests cannot run: {reason}", pytrace=False)
    pytest.skip(reason)


def ensure_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installed with apt-get if needed (idempotent)."""
    browser, driver = _installed()
    if browser and driver:
        return browser, driver
    if not shutil.which("apt-get"):
        unavailable(f"{' and '.join(PACKAGES)} are not installed and there is no apt-get to install them")
    if os.geteuid() != 0:
        unavailable(f"{' and '.join(PACKAGES)} are not installed and installing them needs root (apt-get)")
    # the allow-list, and the shell's proxy if it has one (apt-get reaches the mirrors through it)
    proxies = {k: v for k, v in DEVELOPER_ENV.items() if k in PROXY_VARIABLES}
    env = clean_env(**proxies, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    for command in (["apt-get", *lock, "update", "-qq"], ["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        if done.returncode != 0:
            unavailable(f"`{' '.join(command)}` failed ({done.returncode}): {(done.stderr or done.stdout)[-500:]}")
    browser, driver = _installed()
    if not (browser and driver):
        unavailable(f"apt-get installed {PACKAGES} but chromium/chromedriver are not on PATH")
    return browser, driver


@pytest.fixture(scope="session")
def chromium() -> tuple[str, str]:
    return ensure_chromium()


@pytest.fixture(scope="module")
def browser(chromium, tmp_path_factory, dagster_ui):  # noqa: F811 - chromium first: skip before starting servers
    browser_path, chromedriver = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = browser_path  # with the driver's path too, Selenium Manager downloads nothing
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
                 f"--window-size={WINDOW[0]},{WINDOW[1]}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        driver.set_page_load_timeout(60)
        # a page of the UI's origin that is not the app, to answer the first-visit dialog beforehand
        driver.get(f"{dagster_ui.url}/server_info")
        driver.execute_script(SKIP_COMMUNITY_DIALOG)
        yield driver
    finally:
        driver.quit()


def show(driver, url: str, texts: list[str], timeout: float = 90, reload: bool = True) -> str:
    """Open ``url`` (unless already there) and wait until the rendered page shows every one of
    ``texts``; its text."""
    if reload:
        driver.get(url)
    body = ""

    def rendered(d) -> bool:
        nonlocal body
        body = d.execute_script("return document.body ? document.body.innerText : ''")
        return all(t in body for t in texts)

    try:
        WebDriverWait(driver, timeout, poll_frequency=1).until(rendered)
    except Exception:
        pytest.fail(f"{url} did not show {texts} within {timeout:.0f}s; it shows:\n{body[:2000]}")
    return body


def screenshot(driver, name: str) -> Path:
    """Take a screenshot and check it is a real PNG of the window's size.

    It replaces the README's copy under docs/ only when that is missing or when
    UPDATE_SCREENSHOTS=1, so a test run does not leave the working tree modified; otherwise it is
    kept in the system temp folder for a look.
    """
    if not (DOCS / name).exists() or os.environ.get("UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)
        path = DOCS / name
    else:
        path = Path(tempfile.gettempdir()) / f"affwh-{name}"
    assert driver.save_screenshot(str(path))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width == WINDOW[0] and WINDOW[1] * 0.8 < height <= WINDOW[1], (width, height)  # the viewport
    assert len(data) > 30_000, f"{name} is only {len(data)} bytes: a blank page?"
    return path


def graph_picture(driver, name: str, margin: int = 16) -> Path:
    """The graph alone (no UI around it), at twice the page's pixel density, where
    :func:`screenshot` keeps pictures (docs/ when asked); asserts its labels stay readable at
    the README's width."""
    box = driver.execute_script(GRAPH_BOX)
    assert box, "the asset graph drew nothing"
    left, top, right, bottom = box
    clip = {"x": left - margin, "y": top - margin, "width": right - left + 2 * margin,
            "height": bottom - top + 2 * margin, "scale": 2}
    shown = min(1.0, README_WIDTH / clip["width"])  # how much GitHub scales it down
    font = driver.execute_script(LABEL_FONT_PX, "v_summary")
    assert font and font * shown >= 9, f"labels of {font}px shown at {shown:.2f}x: unreadable in the README"
    data = base64.b64decode(driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "clip": clip})["data"])
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, _ = struct.unpack(">II", data[16:24])
    assert abs(width - 2 * clip["width"]) <= 2, (width, clip)
    assert len(data) > 30_000, f"{name} is only {len(data)} bytes: a blank page?"
    if not (DOCS / name).exists() or os.environ.get("UPDATE_SCREENSHOTS") == "1":
        path = DOCS / name
    else:
        path = Path(tempfile.gettempdir()) / f"affwh-{name}"
    path.write_bytes(data)
    return path


def test_asset_graph_shows_every_group_and_the_partitioned_assets(browser, dagster_ui, backfills):  # noqa: F811
    groups = ["onlytraffic", "metapic", "cpamoe", "marts", "views"]
    show(browser, f"{dagster_ui.url}/asset-groups", ["Global asset lineage", *groups])
    browser.execute_script(EXPAND_ALL_GROUPS)
    # expanded: the assets themselves (long names are shortened, boxes off screen not drawn)
    show(browser, browser.current_url, ["cpc_orders", "swap_orders", "v_fill_rate", "v_earnings"], reload=False)
    browser.execute_script(HIDE_SIDEBARS)
    for _ in range(5):
        assert browser.execute_script(ZOOM_OUT), "no zoom control on the asset graph"
        time.sleep(0.5)
    time.sleep(2)  # the zoom animates
    assert COMMUNITY_DIALOG not in browser.execute_script("return document.body.innerText")

    # the README's picture: sources collapsed, marts and views expanded, at the UI's own zoom
    browser.execute_script(PICTURE_LAYOUT)
    show(browser, f"{dagster_ui.url}/asset-groups", ["cpamoe", "onlytraffic", "metapic", "v_summary", "cpamoe_payouts"])
    time.sleep(2)  # the layout settles
    graph_picture(browser, "asset-graph.png")


def test_backfill_page_shows_the_completed_range(browser, dagster_ui, backfills):  # noqa: F811
    backfill = backfills["swap_orders_by_created_day"]
    days = ui_stack.SWAP_DAYS

    # the backfill's overview: its range, its outcome and the asset it materialized
    text = show(browser, f"{dagster_ui.url}/runs/b/{backfill['id']}", [f"Runs / {backfill['id']}", f"{days[0]}...{days[-1]}", "Succeeded", "swap_orders_by_created_day"])

    assert COMMUNITY_DIALOG not in text
    screenshot(browser, "backfill.png")
