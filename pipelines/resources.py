"""What every resource shares: the warehouse, the base of an API client resource, the writers' pool.

Each source's own resource (its class and how the environment builds it) lives in its defs folder,
``pipelines/defs/<source>/resources.py``, which contributes it to the Definitions; nothing here
names a source. Secrets are passed as ``EnvVar`` (:func:`secret_env`) so the Dagster UI shows the
variable's name, never its value. A source whose credentials are missing is *not configured*: its
assets report that and succeed, so a partial setup (only some networks) still runs.
"""


from collections.abc import Callable
from typing import ClassVar

import dagster as dg
from pydantic import Field as PydanticField

from pipelines import settings
from pipelines.sources.http import ApiClient, RetryPolicy
from pipelines.warehouse import Warehouse

WRITER_POOL = "duckdb_writer"


def retry_policy_from_env() -> RetryPolicy:
    """HTTP_TIMEOUT_SECONDS, HTTP_MAX_ATTEMPTS, HTTP_BACKOFF_BASE_SECONDS, HTTP_MAX_RETRY_AFTER_SECONDS.

    Each is checked here too (runs launched from the UI skip the CLI's check): a negative timeout
    would otherwise fail deep inside the socket layer without naming the variable.
    """
    names = ("HTTP_MAX_ATTEMPTS", "HTTP_BACKOFF_BASE_SECONDS", "HTTP_TIMEOUT_SECONDS", "HTTP_MAX_RETRY_AFTER_SECONDS")
    found = [p for p in settings.problems() if p.split("=", 1)[0] in names]
    if found:
        raise ValueError("; ".join(found))
    return RetryPolicy(
        max_attempts=settings.value("HTTP_MAX_ATTEMPTS"),
        backoff_base=settings.value("HTTP_BACKOFF_BASE_SECONDS"),
        timeout=settings.value("HTTP_TIMEOUT_SECONDS"),
        max_retry_after=settings.value("HTTP_MAX_RETRY_AFTER_SECONDS"),
    )


class NotConfigured(Exception):
    """A source whose credential variables are not set."""

    def __init__(self, source: str, missing: list[str]) -> None:
        super().__init__(f"{source} is not configured: set {', '.join(missing)}")
        self.source = source
        self.missing = missing


class WarehouseResource(dg.ConfigurableResource):
    """The DuckDB warehouse (``WAREHOUSE_PATH``: a file, ``md:<db>`` or ``ducklake:<catalog>``)."""

    path: str = PydanticField(default=settings.DEFAULTS["WAREHOUSE_PATH"], description="WAREHOUSE_PATH")
    memory_limit: str = settings.DEFAULTS["WAREHOUSE_MEMORY_LIMIT"]
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


class ApiResource(dg.ConfigurableResource):
    """The base of a source's client resource: base URL, concurrency, page size, the credential
    check (``credential_vars``, from :func:`pipelines.settings.credentials`) and the
    :class:`ApiClient` with retries and redaction; a subclass adds its credentials and ``client()``."""

    base_url: str
    max_concurrency: int  # each subclass defaults it to its own ``*_CONCURRENCY`` setting
    page_size: int = 0  # 0: the API's maximum

    source_name: ClassVar[str] = ""
    credential_vars: ClassVar[tuple[str, ...]] = ()
    base_url_var: ClassVar[str] = "the base URL"

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
            raise ValueError(
                f"{self.source_name}: {self.base_url_var}={self.base_url!r} must start with http:// or https://"
            )
        return ApiClient(
            name=self.source_name,
            base_url=self.base_url,
            headers=headers,
            # only the secret ones: a user id is no secret, and redacting its few digits would
            # mangle any text holding them (a port, an order id)
            secrets=[
                v for var, v in zip(self.credential_vars, self.credentials().values(), strict=True)
                if v and var in settings.SECRET_VARIABLES
            ],
            credential_vars=self.credential_vars,
            envelope=envelope,
            retry=retry_policy_from_env(),
            max_concurrency=self.max_concurrency,
            rate_limiter=rate_limiter,
            on_retry=on_retry,
        )


def secret_env(name: str) -> dg.EnvVar | None:
    """The variable as an EnvVar (resolved at run time, never displayed), or None when unset."""
    return dg.EnvVar(name) if settings.value(name) else None


def warehouse_from_env() -> WarehouseResource:
    """The warehouse resource of the current environment (``WAREHOUSE_PATH``, ``WAREHOUSE_MEMORY_LIMIT``)."""
    return WarehouseResource(
        path=settings.env("WAREHOUSE_PATH"), memory_limit=settings.value("WAREHOUSE_MEMORY_LIMIT")
    )


__all__ = [
    "ApiResource",
    "NotConfigured",
    "WRITER_POOL",
    "WarehouseResource",
    "retry_policy_from_env",
    "secret_env",
    "warehouse_from_env",
]
