"""Check every setting before a run starts: one clear sentence per bad variable, naming it.

Without this, a bad value fails deep inside a run (a socket refusing a negative timeout, httpx
resolving a host with a space in it, ``int()`` at import) with a stack trace that never says
which variable to fix. The CLI calls :func:`config_problems` first and stops on any problem.
Unset variables are fine (they have defaults); credentials are not checked here (a source
without them is reported as not configured).
"""

from __future__ import annotations

import os
import re
from datetime import date, datetime
from urllib.parse import urlsplit

BASE_URL_VARIABLES = (
    "ONLYTRAFFIC_MARKETER_BASE_URL",
    "ONLYTRAFFIC_STUDIO_BASE_URL",
    "CPAMOE_BASE_URL",
    "METAPIC_BASE_URL",
)
# variable -> (whole number?, smallest allowed value, the value must be greater than it?)
NUMBER_VARIABLES: dict[str, tuple[bool, float, bool]] = {
    "HTTP_TIMEOUT_SECONDS": (False, 0, True),
    "HTTP_MAX_ATTEMPTS": (True, 1, False),
    "HTTP_BACKOFF_BASE_SECONDS": (False, 0, False),
    "HTTP_MAX_RETRY_AFTER_SECONDS": (False, 0, False),
    "ONLYTRAFFIC_MARKETER_CONCURRENCY": (True, 1, False),
    "ONLYTRAFFIC_STUDIO_CONCURRENCY": (True, 1, False),
    "CPAMOE_CONCURRENCY": (True, 1, False),
    "METAPIC_CONCURRENCY": (True, 1, False),
    "ONLYTRAFFIC_MARKETER_PAGE_SIZE": (True, 0, False),
    "ONLYTRAFFIC_STUDIO_PAGE_SIZE": (True, 0, False),
    "METAPIC_PAGE_SIZE": (True, 0, False),
    "METAPIC_RATE_LIMIT": (True, 1, False),
    "METAPIC_RATE_WINDOW_SECONDS": (False, 0, True),
}
DATE_VARIABLES = ("SWAP_PARTITIONS_START", "METAPIC_PARTITIONS_START")
_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


def _base_url_problem(name: str, raw: str) -> str | None:
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        return f"{name}={raw!r} is not an http:// or https:// URL (e.g. https://api.example.com)"
    host = parts.netloc.rsplit("@", 1)[-1].rsplit(":", 1)[0] if not parts.netloc.endswith("]") else parts.netloc
    if not _HOST.fullmatch(host):
        return f"{name}={raw!r} has no valid host name"
    return None


def _number_problem(name: str, raw: str, whole: bool, minimum: float, exclusive: bool) -> str | None:
    try:
        value = float(raw)
    except ValueError:
        return f"{name}={raw!r} is not a {'whole number' if whole else 'number'}"
    if whole and not value.is_integer():
        return f"{name}={raw!r} is not a whole number"
    if value < minimum or (exclusive and value == minimum):
        bound = f"more than {minimum:g}" if exclusive else f"at least {minimum:g}"
        return f"{name}={raw!r} must be {bound}"
    return None


def config_problems(environ: dict[str, str] | None = None) -> list[str]:
    """Every setting that cannot work, one sentence each (empty when all are usable)."""
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    for name in BASE_URL_VARIABLES:
        if raw := environ.get(name, "").strip():
            problems.append(_base_url_problem(name, raw))
    for name, rule in NUMBER_VARIABLES.items():
        if raw := environ.get(name, "").strip():
            problems.append(_number_problem(name, raw, *rule))
    for name in DATE_VARIABLES:
        if raw := environ.get(name, "").strip():
            try:
                date.fromisoformat(raw)
            except ValueError:
                problems.append(f"{name}={raw!r} is not a date (YYYY-MM-DD)")
    if raw := environ.get("WAREHOUSE_NOW", "").strip():
        try:
            datetime.fromisoformat(raw)
        except ValueError:
            problems.append(f"WAREHOUSE_NOW={raw!r} is not an ISO-8601 timestamp (e.g. 2026-01-31T12:00:00Z)")
    if raw := environ.get("SANDBOX_SCALE", "").strip():
        from pipelines.sandbox.world import SCALES

        if raw not in SCALES:
            problems.append(f"SANDBOX_SCALE={raw!r} is not one of {', '.join(SCALES)}")
    return [p for p in problems if p]
