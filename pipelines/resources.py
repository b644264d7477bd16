"""Dagster resources: the warehouse and one client resource per API, fed by environment variables.

Secrets are passed as ``EnvVar`` so the Dagster UI shows the variable's name, never its value.
A source whose credentials are missing is *not configured*: its assets report that and succeed,
so a partial setup (only some networks) still runs.
"""


import os
from collections.abc import Callable
from typing import ClassVar

import dagster as dg
from pydantic import Field as PydanticField

from pipelines.http import ApiClient, RateLimiter, RetryPolicy
from pipelines.warehouse import Warehouse

WRITER_POOL = "duckdb_writer"


def _float_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


def retry_policy_from_env() -> RetryPolicy:
    """HTTP_TIMEOUT_SECONDS, HTTP_MAX_ATTEMPTS, HTTP_BACKOFF_BASE_SECONDS, HTTP_MAX_RETRY_AFTER_SECONDS."""
    return RetryPolicy(
        max_attempts=int(_float_env("HTTP_MAX_ATTEMPTS", 6)),
        backoff_base=_float_env("HTTP_BACKOFF_BASE_SECONDS", 0.5),
        timeout=_float_env("HTTP_TIMEOUT_SECONDS", 60),
        max_retry_after=_float_env("HTTP_MAX_RETRY_AFTER_SECONDS", 300),
    )


class NotConfigured(Exception):
    """A source whose credential variables are not set."""

    def __init__(self, source: str, missing: list[str]) -> None:
        super().__init__(f"{source} is not configured: set {', '.join(missing)}")
        self.source = source
        self.missing = missing


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse (``WAREHOUSE_PATH``: a file, ``md:<db>`` or ``ducklake:<catalog>``)."""

    path: str = PydanticField(default="data/warehouse.duckdb", description="WAREHOUSE_PATH")
    memory_limit: str = "512MB"
    threads: int = 2
    lock_timeout_seconds: float = 600.0

    def open(self, on_wait: Callable[[str], None] | None = None) -> Warehouse:
        warehouse = Warehouse(
            self.path,
            memory_limit=self.memory_limit,
            threads=self.threads,
            lock_timeout=self.lock_timeout_seconds,
            on_wait=on_wait,
        )
        warehouse.ensure_schema()
        return warehouse


class _ApiResource(dg.ConfigurableResource):
    base_url: str
    max_concurrency: int = 4
    page_size: int = 0  # 0: the API's maximum

    source_name: ClassVar[str] = ""
    credential_vars: ClassVar[tuple[str, ...]] = ()

    def credentials(self) -> dict[str, str | None]:
        raise NotImplementedError

    def missing(self) -> list[str]:
        creds = self.credentials()
        return [var for var, value in zip(self.credential_vars, creds.values(), strict=True) if not value]

    def check_configured(self) -> None:
        missing = self.missing()
        if missing:
            raise NotConfigured(self.source_name, missing)

    def _client(self, *, headers: dict[str, str], envelope, on_retry=None, rate_limiter=None) -> ApiClient:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"{self.source_name}: base URL {self.base_url!r} must start with http:// or https://")
        return ApiClient(
            name=self.source_name,
            base_url=self.base_url,
            headers=headers,
            secrets=[v for v in self.credentials().values() if v],
            credential_vars=self.credential_vars,
            envelope=envelope,
            retry=retry_policy_from_env(),
            max_concurrency=self.max_concurrency,
            rate_limiter=rate_limiter,
            on_retry=on_retry,
        )


class OnlyTrafficMarketerResource(_ApiResource):
    """OnlyTraffic Marketer API (``ONLYTRAFFIC_MARKETER_BASE_URL``, ``ONLYTRAFFIC_MARKETER_API_KEY``)."""

    api_key: str | None = None
    source_name: ClassVar[str] = "OnlyTraffic Marketer API"
    credential_vars: ClassVar[tuple[str, ...]] = ("ONLYTRAFFIC_MARKETER_API_KEY",)

    def credentials(self) -> dict[str, str | None]:
        return {"api_key": self.api_key}

    def client(self, on_retry=None) -> ApiClient:
        from pipelines.sources.onlytraffic_marketer import marketer_envelope

        self.check_configured()
        return self._client(
            headers={"Authorization": self.api_key or "", "Accept": "application/json"},
            envelope=marketer_envelope,
            on_retry=on_retry,
        )


__all__ = [
    "NotConfigured",
    "OnlyTrafficMarketerResource",
    "RateLimiter",
    "WRITER_POOL",
    "WarehouseResource",
    "retry_policy_from_env",
]
