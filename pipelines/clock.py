"""The warehouse's notion of "now".

Observation times (``synced_at``, ``status_history.valid_from``), snapshot days and so every
duration and alert come from here. In order of precedence:

- ``WAREHOUSE_NOW`` (an ISO-8601 timestamp) freezes it: the sandbox tests use it to move the
  warehouse clock together with the sandbox's simulated clock, and it lets a replay reproduce a
  past run exactly.
- ``WAREHOUSE_CLOCK_URL`` names a clock to follow (``GET`` answering ``{"now": "<ISO-8601>"}``):
  ``affwh run``/``affwh ui`` set it to the built-in sandbox's ``/_sandbox/clock`` so that after
  ``POST /_sandbox/advance`` a day of simulated API time is a day of warehouse time too. An
  environment variable rather than a value in memory because under ``affwh ui`` the sandbox runs
  in the CLI's process while runs execute in the Dagster code server and run workers, which
  inherit the environment. Read at most once a second (a sync asks for the time per stream); an
  unreachable clock is an error, never a silent fall back to the wall clock (that would mix two
  clocks in one history).
- Otherwise the wall clock (real APIs).
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.request
from datetime import UTC, datetime

CLOCK_URL_VARIABLE = "WAREHOUSE_CLOCK_URL"
CLOCK_CACHE_SECONDS = 1.0

_cache_lock = threading.Lock()
_cache: dict[str, tuple[float, datetime]] = {}  # url -> (monotonic time read, value)


def _parse(value: str, variable: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{variable}={value!r} is not an ISO-8601 timestamp (e.g. 2026-01-31T12:00:00Z)") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _followed_clock(url: str) -> datetime:
    with _cache_lock:
        cached = _cache.get(url)
        if cached is not None and time.monotonic() - cached[0] < CLOCK_CACHE_SECONDS:
            return cached[1]
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            answer = json.loads(response.read())
        value = _parse(str(answer["now"]), f"{CLOCK_URL_VARIABLE} answer")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RuntimeError(
            f"{CLOCK_URL_VARIABLE}={url}: cannot read the clock ({exc}); is the sandbox still running? "
            f"Unset {CLOCK_URL_VARIABLE} to use the wall clock."
        ) from None
    with _cache_lock:
        _cache[url] = (time.monotonic(), value)
    return value


def utc_now() -> datetime:
    frozen = os.environ.get("WAREHOUSE_NOW")
    if frozen:
        return _parse(frozen, "WAREHOUSE_NOW")
    url = os.environ.get(CLOCK_URL_VARIABLE, "").strip()
    if url:
        return _followed_clock(url)
    return datetime.now(UTC)
