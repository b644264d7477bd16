"""Every environment variable the project reads, declared once in a typed model.

:class:`Settings` is the one declaration: each field names its variable (the alias), its default,
what it means and how it is checked. From it come the defaults (:func:`env`, :func:`value`), the
one-sentence problems the CLI stops on (:func:`problems`, used by :mod:`pipelines.config_check`),
the credential groups of the sources, and the README's configuration tables (:func:`readme_tables`;
``python -m pipelines.settings`` prints them, a test holds the README equal to them).

``.env`` in the working directory is loaded (without overriding variables already set) by the CLI
and by the definitions; ``dg dev`` loads it too. An empty variable counts as unset.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from dotenv import load_dotenv
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

# -- checks: each raises ValueError with the end of the sentence "<NAME>=<value> ..." ----------

_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\]")


def _base_url(raw: Any) -> str:
    raw = str(raw)
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("is not an http:// or https:// URL (e.g. https://api.example.com)")
    host = parts.netloc.rsplit("@", 1)[-1].rsplit(":", 1)[0] if not parts.netloc.endswith("]") else parts.netloc
    if not _HOST.fullmatch(host):
        raise ValueError("has no valid host name")
    return raw


def _number(minimum: float, *, whole: bool, exclusive: bool = False) -> Callable[[Any], float | int]:
    def check(raw: Any) -> float | int:
        try:
            number = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"is not a {'whole number' if whole else 'number'}") from None
        if whole and not number.is_integer():
            raise ValueError("is not a whole number")
        if number < minimum or (exclusive and number == minimum):
            raise ValueError(f"must be more than {minimum:g}" if exclusive else f"must be at least {minimum:g}")
        return int(number) if whole else number

    return check


def _day(raw: Any) -> str:
    try:
        date.fromisoformat(str(raw))
    except ValueError:
        raise ValueError("is not a date (YYYY-MM-DD)") from None
    return str(raw)


def _timestamp(raw: Any) -> str:
    try:
        datetime.fromisoformat(str(raw))
    except ValueError:
        raise ValueError("is not an ISO-8601 timestamp (e.g. 2026-01-31T12:00:00Z)") from None
    return str(raw)


def _scale(raw: Any) -> str:
    from pipelines.sandbox.world import SCALES  # the sandbox's presets are the one list

    if raw not in SCALES:
        raise ValueError(f"is not one of {', '.join(SCALES)}")
    return str(raw)


def _cron(raw: Any) -> str:
    # dagster's own cron check (the one its scheduler uses); imported only when a cron is set
    from dagster._utils.schedules import is_valid_cron_string

    if not is_valid_cron_string(str(raw).strip()):
        raise ValueError("is not a cron expression (e.g. '*/30 * * * *')")
    return str(raw).strip()


def _timezone(raw: Any) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(str(raw).strip())
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("is not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
    return str(raw).strip()


def _running(raw: Any) -> str:
    value = str(raw).strip().lower()
    if value not in ("running", "stopped"):
        raise ValueError("is not one of running, stopped")
    return value


BaseUrl = Annotated[str, BeforeValidator(_base_url)]
Concurrency = Annotated[int, BeforeValidator(_number(1, whole=True))]
PageSize = Annotated[int, BeforeValidator(_number(0, whole=True))]
Day = Annotated[str, BeforeValidator(_day)]
Timestamp = Annotated[str, BeforeValidator(_timestamp)]
Cron = Annotated[str, BeforeValidator(_cron)]
TimeZone = Annotated[str, BeforeValidator(_timezone)]
Status = Annotated[str, BeforeValidator(_running)]
Positive = Annotated[float, BeforeValidator(_number(0, whole=False, exclusive=True))]

CONNECTION = "connection"  # the README's first table: where to read and write, credentials
TUNING = "tuning"  # the README's second table: all optional
OPERATIONS = "operations"  # the README's third table: schedules, sensors, freshness (read when definitions load)


def setting(
    variable: str,
    default: Any,
    meaning: str,
    *,
    group: str = CONNECTION,
    secret: bool = False,
    credential_of: str | None = None,
    unset: str = "none",
) -> Any:
    """A field of :class:`Settings`: ``variable`` is its environment variable, ``unset`` what the
    README says when it has no default, ``credential_of`` the source it is a credential of."""
    extra = {"group": group, "secret": secret, "credential_of": credential_of, "unset": unset}
    return Field(default=default, alias=variable, description=meaning, json_schema_extra=extra)


MARKETER_API = "OnlyTraffic Marketer API"
STUDIO_API = "OnlyTraffic Studio API"
CPAMOE_API = "cpa.moe affiliate API"
METAPIC_API = "Metapic API v2"


class Settings(BaseModel):
    """Every setting, typed and checked; field order is the README's row order."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    warehouse_path: str = setting(
        "WAREHOUSE_PATH", "data/warehouse.duckdb",
        "the DuckDB warehouse: a file path, or `md:<db>` (MotherDuck) / `ducklake:<catalog>`",
    )
    onlytraffic_marketer_base_url: BaseUrl = setting(
        "ONLYTRAFFIC_MARKETER_BASE_URL", "https://onlytraffic.com", "prefix of `/api/marketer/...`"
    )
    onlytraffic_marketer_api_key: str | None = setting(
        "ONLYTRAFFIC_MARKETER_API_KEY", None, "marketer key (`Authorization` header)",
        secret=True, credential_of=MARKETER_API,
    )
    onlytraffic_studio_base_url: BaseUrl = setting(
        "ONLYTRAFFIC_STUDIO_BASE_URL", "https://studio-api.onlytraffic.com/api/external/v1", "prefix of `/swaps/orders`"
    )
    onlytraffic_studio_api_key: str | None = setting(
        "ONLYTRAFFIC_STUDIO_API_KEY", None, "studio key (`X-API-Key`)", secret=True, credential_of=STUDIO_API
    )
    cpamoe_base_url: BaseUrl = setting("CPAMOE_BASE_URL", "https://api.cpa.moe", "prefix of `/ext/list.json`")
    cpamoe_user_id: str | None = setting(
        "CPAMOE_USER_ID", None, "cpa.moe user id (the `{user}` of `id={user}-{key}`)", credential_of=CPAMOE_API
    )
    cpamoe_api_key: str | None = setting(
        "CPAMOE_API_KEY", None, "cpa.moe API key (the `{key}`)", secret=True, credential_of=CPAMOE_API
    )
    cpamoe_leads_dir: str = setting(
        "CPAMOE_LEADS_DIR", "data/cpamoe_leads",
        "folder of CSV files registering the leads we submitted (column `id`, optional `offer`, `submitted_at`)",
    )
    cpamoe_payouts_file: str | None = setting(
        "CPAMOE_PAYOUTS_FILE", None,
        "CSV `offer,amount,currency`: what an approved lead of each offer pays (for `v_earnings`)",
        unset="unset (cpa.moe earnings NULL)",
    )
    metapic_base_url: BaseUrl = setting("METAPIC_BASE_URL", "https://api.metapic.dev", "prefix of `/v2/...`")
    metapic_access_token: str | None = setting(
        "METAPIC_ACCESS_TOKEN", None, "Metapic token (`Authorization` header)", secret=True, credential_of=METAPIC_API
    )
    metapic_user_id: str | None = setting(
        "METAPIC_USER_ID", None, "Metapic user id, sent as `created_by`", credential_of=METAPIC_API
    )
    alerts_webhook_url: BaseUrl | None = setting(
        "ALERTS_WEBHOOK_URL", None,
        "incoming webhook (Slack, Mattermost, Discord's `/slack`) the `alerts_webhook` sensor posts each new "
        "`v_order_alerts` row to, once (see *Alerts*); a secret",
        secret=True, unset="unset (no sensor)",
    )

    onlytraffic_marketer_concurrency: Concurrency = setting(
        "ONLYTRAFFIC_MARKETER_CONCURRENCY", 4, "requests in flight at once to the Marketer API", group=TUNING
    )
    onlytraffic_studio_concurrency: Concurrency = setting(
        "ONLYTRAFFIC_STUDIO_CONCURRENCY", 4, "requests in flight at once to the Studio API", group=TUNING
    )
    cpamoe_concurrency: Concurrency = setting(
        "CPAMOE_CONCURRENCY", 4, "requests in flight at once to cpa.moe", group=TUNING
    )
    metapic_concurrency: Concurrency = setting(
        "METAPIC_CONCURRENCY", 4, "requests in flight at once to Metapic", group=TUNING
    )
    onlytraffic_marketer_page_size: PageSize = setting(
        "ONLYTRAFFIC_MARKETER_PAGE_SIZE", 0, "Marketer page size (0 = the API's maximum: 1000)", group=TUNING
    )
    onlytraffic_studio_page_size: PageSize = setting(
        "ONLYTRAFFIC_STUDIO_PAGE_SIZE", 0, "Studio page size (0 = the API's maximum: 100)", group=TUNING
    )
    metapic_page_size: PageSize = setting(
        "METAPIC_PAGE_SIZE", 0, "Metapic page size (0 = the API's maximum: 100)", group=TUNING
    )
    metapic_rate_limit: Annotated[int, BeforeValidator(_number(1, whole=True))] = setting(
        "METAPIC_RATE_LIMIT", 300,
        "Metapic requests per window, shared by every process of this machine using the same account (documented: 300)", group=TUNING,
    )
    metapic_rate_window_seconds: Annotated[float, BeforeValidator(_number(0, whole=False, exclusive=True))] = setting(
        "METAPIC_RATE_WINDOW_SECONDS", 60.0, "the window of `METAPIC_RATE_LIMIT`, in seconds", group=TUNING
    )
    swap_partitions_start: Day = setting(
        "SWAP_PARTITIONS_START", "2025-01-01", "first day of the daily partitions of swap orders (by created day)",
        group=TUNING,
    )
    metapic_partitions_start: Day = setting(
        "METAPIC_PARTITIONS_START", "2025-01-01", "first day of the daily partitions of Metapic participant daily stats",
        group=TUNING,
    )
    http_timeout_seconds: Annotated[float, BeforeValidator(_number(0, whole=False, exclusive=True))] = setting(
        "HTTP_TIMEOUT_SECONDS", 60.0, "per-request timeout", group=TUNING
    )
    http_max_attempts: Annotated[int, BeforeValidator(_number(1, whole=True))] = setting(
        "HTTP_MAX_ATTEMPTS", 6, "attempts per request before the asset fails", group=TUNING
    )
    http_backoff_base_seconds: Annotated[float, BeforeValidator(_number(0, whole=False))] = setting(
        "HTTP_BACKOFF_BASE_SECONDS", 0.5, "first backoff ceiling (doubles per attempt, full jitter, max 30 s)",
        group=TUNING,
    )
    http_max_retry_after_seconds: Annotated[float, BeforeValidator(_number(0, whole=False))] = setting(
        "HTTP_MAX_RETRY_AFTER_SECONDS", 300.0, "longest `Retry-After` honoured; a longer one fails the request",
        group=TUNING,
    )
    sync_max_concurrent_steps: Annotated[int, BeforeValidator(_number(1, whole=True))] = setting(
        "SYNC_MAX_CONCURRENT_STEPS", 2, "feed steps running at once, one process each (see *Operations*)",
        group=TUNING,
    )
    sync_cpu_steps: Annotated[int, BeforeValidator(_number(1, whole=True))] = setting(
        "SYNC_CPU_STEPS", 1, "of those, steps tagged `affwh/load: cpu` (CPU-bound) at once", group=TUNING
    )
    feed_step_retries: Annotated[int, BeforeValidator(_number(0, whole=True))] = setting(
        "FEED_STEP_RETRIES", 2, "more attempts of a feed's step after a transient failure (its Dagster `RetryPolicy`)",
        group=TUNING,
    )
    feed_step_retry_delay_seconds: Annotated[int, BeforeValidator(_number(0, whole=True))] = setting(
        "FEED_STEP_RETRY_DELAY_SECONDS", 30, "delay before the first of those attempts (doubling, with jitter)",
        group=TUNING,
    )
    alerts_retry_base_seconds: Annotated[float, BeforeValidator(_number(0, whole=False, exclusive=True))] = setting(
        "ALERTS_RETRY_BASE_SECONDS", 30.0,
        "wait before retrying a failed alert delivery (doubles per failure, with jitter, max 1 h)", group=TUNING,
    )
    warehouse_memory_limit: str = setting(
        "WAREHOUSE_MEMORY_LIMIT", "160MB",
        "DuckDB memory limit of each DuckDB instance a sync opens (one per feed step running at once, see "
        "*Each feed is its own step*; "
        "beyond it DuckDB spills to `.staging/` next to the warehouse; raise it if a very large first sync "
        'reports "Out of Memory")',
        group=TUNING,
    )
    dagster_home: str = setting(
        "DAGSTER_HOME", ".dagster_home",
        "Dagster instance folder (runs, schedules; the project's `dagster.yaml` is copied there); unset, `make`/`affwh` "
        "use `.dagster_home` in the project, `dg` a throwaway one: `.env.example` sets it for `dg` (see *Operations*)",
        group=TUNING,
    )
    dagster_ui_port: Annotated[int, BeforeValidator(_number(1, whole=True))] = setting(
        "DAGSTER_UI_PORT", 3000, "port of `make ui` / `affwh ui`", group=TUNING
    )
    sandbox_scale: Annotated[str, BeforeValidator(_scale)] = setting(
        "SANDBOX_SCALE", "small",
        "sandbox world size for `make run`/`make ui` without credentials: `tiny`, `small`, `medium`, `large`",
        group=TUNING,
    )
    warehouse_now: Timestamp | None = setting(
        "WAREHOUSE_NOW", None,
        "freeze the warehouse clock (ISO-8601) — for tests and replays only; wins over `WAREHOUSE_CLOCK_URL`",
        group=TUNING, unset="unset",
    )
    warehouse_clock_url: str | None = setting(
        "WAREHOUSE_CLOCK_URL", None,
        "follow this clock (`GET` answering `{\"now\": ISO-8601}`, read at most once a second; unreachable = "
        "error) instead of the wall clock; `make run`/`make ui` set it to the built-in sandbox's `/_sandbox/clock`",
        group=TUNING, unset="unset (wall clock)",
    )

    sync_open_records_cron: Cron = setting(
        "SYNC_OPEN_RECORDS_CRON", "*/30 * * * *", "cron of the `sync_open_records` schedule (incremental `sync_all`)",
        group=OPERATIONS,
    )
    reconcile_cron: Cron = setting(
        "RECONCILE_CRON", "0 3 * * *", "cron of the `daily_reconciliation` schedule (`sync_all`, full refresh)",
        group=OPERATIONS,
    )
    daily_partitions_cron: Cron = setting(
        "DAILY_PARTITIONS_CRON", "0 2 * * *", "cron of the two `*_latest_day` schedules (the latest complete day)",
        group=OPERATIONS,
    )
    schedules_timezone: TimeZone = setting(
        "SCHEDULES_TIMEZONE", "UTC", "time zone of those crons (partitions are UTC days whatever it is)",
        group=OPERATIONS,
    )
    schedules_default_status: Status = setting(
        "SCHEDULES_DEFAULT_STATUS", "running", "`running` or `stopped`: the schedules' status until changed in the UI",
        group=OPERATIONS,
    )
    automation_default_status: Status = setting(
        "AUTOMATION_DEFAULT_STATUS", "running", "`running` or `stopped`: the automation sensor's (views follow tables)",
        group=OPERATIONS,
    )
    automation_interval_seconds: Positive = setting(
        "AUTOMATION_INTERVAL_SECONDS", 30, "how often the automation sensor evaluates", group=OPERATIONS
    )
    alerts_interval_seconds: Positive = setting(
        "ALERTS_INTERVAL_SECONDS", 30, "how often the `alerts_webhook` sensor looks for new alerts", group=OPERATIONS
    )
    freshness_warn_minutes: Positive = setting(
        "FRESHNESS_WARN_MINUTES", 60, "current-state assets are *warning* when older (less than the fail window)",
        group=OPERATIONS,
    )
    freshness_fail_minutes: Positive = setting(
        "FRESHNESS_FAIL_MINUTES", 180, "current-state assets are *failed* when older", group=OPERATIONS
    )
    freshness_daily_warn_hours: Positive = setting(
        "FRESHNESS_DAILY_WARN_HOURS", 26, "daily partitioned assets are *warning* when older", group=OPERATIONS
    )
    freshness_daily_fail_hours: Positive = setting(
        "FRESHNESS_DAILY_FAIL_HOURS", 50, "daily partitioned assets are *failed* when older", group=OPERATIONS
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings of ``environ`` (default: the process environment); ValueError naming
        every bad variable, one sentence each, when any is unusable."""
        found = problems(environ)
        if found:
            raise ValueError("; ".join(found))
        return cls.model_validate(_given(environ))


# -- derived from the model ----------------------------------------------------------------------

FIELDS = {info.alias: info for info in Settings.model_fields.values()}
VARIABLES: tuple[str, ...] = tuple(FIELDS)
DEFAULTS: dict[str, Any] = {name: info.default for name, info in FIELDS.items() if info.default is not None}
_ADAPTERS = {
    name: TypeAdapter(Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation)
    for name, info in FIELDS.items()
}


def _extra(name: str) -> dict[str, Any]:
    return FIELDS[name].json_schema_extra  # type: ignore[return-value]


SECRET_VARIABLES: tuple[str, ...] = tuple(n for n in VARIABLES if _extra(n)["secret"])


def _given(environ: Mapping[str, str] | None) -> dict[str, str]:
    """The variables set (non-empty, trimmed) in ``environ``."""
    environ = os.environ if environ is None else environ
    return {name: raw for name in VARIABLES if (raw := (environ.get(name) or "").strip())}


def problems(environ: Mapping[str, str] | None = None) -> list[str]:
    """Every set variable that cannot work, one sentence each, naming it (empty when all are usable)."""
    found = []
    for name, raw in _given(environ).items():
        try:
            _ADAPTERS[name].validate_python(raw)
        except ValidationError as exc:
            found.append(f"{name}={_shown(name, raw)} {_reason(exc)}")
    return found


def _shown(name: str, raw: str) -> str:
    """The value as a problem sentence quotes it: a secret's never."""
    return "(hidden)" if _extra(name)["secret"] else repr(raw)


def _reason(exc: ValidationError) -> str:
    error = exc.errors()[0]
    cause = (error.get("ctx") or {}).get("error")
    return str(cause) if cause is not None else error["msg"]


def value(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """One setting, typed (its default when unset); ValueError naming the variable when unusable."""
    raw = _given(environ).get(name)
    if raw is None:
        return FIELDS[name].default
    try:
        return _ADAPTERS[name].validate_python(raw)
    except ValidationError as exc:
        raise ValueError(f"{name}={_shown(name, raw)} {_reason(exc)}") from None


def env(name: str) -> str:
    """The raw value of a variable, falling back to its documented default ('' when it has none)."""
    raw = os.environ.get(name)
    if raw:
        return raw
    default = FIELDS[name].default if name in FIELDS else None
    return "" if default is None else str(default)


# -- credentials -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceCredentials:
    """The credential variables of one source; a source is configured when all are set."""

    source: str
    variables: tuple[str, ...]

    def missing(self) -> list[str]:
        return [v for v in self.variables if not os.environ.get(v)]


def credentials(source: str) -> SourceCredentials:
    """The credential variables of ``source`` (the fields whose ``credential_of`` names it), in the
    model's order; a source's resource takes its ``credential_vars`` from here."""
    found = tuple(n for n in VARIABLES if _extra(n)["credential_of"] == source)
    if not found:
        raise KeyError(f"no setting is a credential of {source!r}")
    return SourceCredentials(source, found)


# Every source with credentials, in the model's order: found from the fields, so a new source's
# credential fields are all it takes to be listed (by the CLI, config checks, "nothing configured").
ALL_SOURCES = tuple(credentials(s) for s in dict.fromkeys(_extra(n)["credential_of"] for n in VARIABLES) if s)


def load_env_file(path: str | Path = ".env") -> None:
    """Load ``.env`` if present; variables already in the environment win."""
    load_dotenv(path, override=False)


def any_credentials_set() -> bool:
    return any(os.environ.get(v) for s in ALL_SOURCES for v in s.variables)


# -- the README ----------------------------------------------------------------------------------


def _default_text(name: str) -> str:
    default = FIELDS[name].default
    if default is None:
        return _extra(name)["unset"]
    if isinstance(default, str):
        return f"`{default}`"
    return f"{default:g}"


def readme_table(group: str) -> str:
    """The README's markdown table of one group of settings."""
    rows = ["| variable | meaning | default |", "|---|---|---|"]
    rows += [
        f"| `{name}` | {FIELDS[name].description} | {_default_text(name)} |"
        for name in VARIABLES
        if _extra(name)["group"] == group
    ]
    return "\n".join(rows)


def readme_tables() -> str:
    """Both configuration tables, as the README's Configuration section shows them."""
    return (
        "Environment variables (a `.env` file in the project root is read too; variables already set win):\n\n"
        f"{readme_table(CONNECTION)}\n\nTuning (all optional):\n\n{readme_table(TUNING)}\n\n"
        "Operations (all optional; read when the code location loads, see *Operations*):\n\n"
        f"{readme_table(OPERATIONS)}\n"
    )


if __name__ == "__main__":
    print(readme_tables(), end="")
