"""Dagster resources: the warehouse and one client resource per API, fed by environment variables.

Secrets are passed as ``EnvVar`` so the Dagster UI shows the variable's name, never its value.
A source whose credentials are missing is *not configured*: its assets report that and succeed,
so a partial setup (only some networks) still runs.
"""


from collections.abc import Callable
from typing import ClassVar

import dagster as dg
from pydantic import Field as PydanticField

from pipelines import settings
from pipelines.sources.http import ApiClient, RateLimiter, Redactor, RetryPolicy
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


class _ApiResource(dg.ConfigurableResource):
    base_url: str
    max_concurrency: int = settings.DEFAULTS["CPAMOE_CONCURRENCY"]  # the same default for every API
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
    base_url_var: ClassVar[str] = "ONLYTRAFFIC_MARKETER_BASE_URL"
    source_name: ClassVar[str] = settings.MARKETER.source
    credential_vars: ClassVar[tuple[str, ...]] = settings.MARKETER.variables

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


class OnlyTrafficStudioResource(_ApiResource):
    """OnlyTraffic Studio API (``ONLYTRAFFIC_STUDIO_BASE_URL``, ``ONLYTRAFFIC_STUDIO_API_KEY``)."""

    api_key: str | None = None
    base_url_var: ClassVar[str] = "ONLYTRAFFIC_STUDIO_BASE_URL"
    source_name: ClassVar[str] = settings.STUDIO.source
    credential_vars: ClassVar[tuple[str, ...]] = settings.STUDIO.variables

    def credentials(self) -> dict[str, str | None]:
        return {"api_key": self.api_key}

    def client(self, on_retry=None) -> ApiClient:
        from pipelines.sources.onlytraffic_studio import studio_envelope

        self.check_configured()
        return self._client(
            headers={"X-API-Key": self.api_key or "", "Accept": "application/json"},
            envelope=studio_envelope,
            on_retry=on_retry,
        )


class CpamoeResource(_ApiResource):
    """cpa.moe affiliate API (``CPAMOE_BASE_URL``, ``CPAMOE_USER_ID``, ``CPAMOE_API_KEY``).

    The credentials ride in the URL (``id={user}-{key}``): the client redacts the key and the
    combined id from every message.
    """

    user_id: str | None = None
    api_key: str | None = None
    leads_dir: str = settings.DEFAULTS["CPAMOE_LEADS_DIR"]
    base_url_var: ClassVar[str] = "CPAMOE_BASE_URL"
    source_name: ClassVar[str] = settings.CPAMOE.source
    credential_vars: ClassVar[tuple[str, ...]] = settings.CPAMOE.variables

    def credentials(self) -> dict[str, str | None]:
        return {"user_id": self.user_id, "api_key": self.api_key}

    @property
    def auth_id(self) -> str:
        """The ``id`` query parameter: ``{user}-{key}``."""
        return f"{self.user_id}-{self.api_key}"

    def client(self, on_retry=None) -> ApiClient:
        from pipelines.sources.cpamoe import cpamoe_envelope

        self.check_configured()
        client = self._client(
            headers={"Accept": "application/json"}, envelope=cpamoe_envelope, on_retry=on_retry
        )
        # the key and the combined id are secrets; the user id alone is not
        client.redact = Redactor([self.auth_id, self.api_key or ""])
        return client


class MetapicResource(_ApiResource):
    """Metapic API v2 (``METAPIC_BASE_URL``, ``METAPIC_ACCESS_TOKEN``, ``METAPIC_USER_ID``).

    Requests are rate-limited client-side to ``rate_limit`` per ``rate_window_seconds`` (the
    documented ``x-ratelimit-limit`` is 300), shared by every thread of the run.
    """

    access_token: str | None = None
    user_id: str | None = None
    rate_limit: int = settings.DEFAULTS["METAPIC_RATE_LIMIT"]
    rate_window_seconds: float = settings.DEFAULTS["METAPIC_RATE_WINDOW_SECONDS"]
    base_url_var: ClassVar[str] = "METAPIC_BASE_URL"
    source_name: ClassVar[str] = settings.METAPIC.source
    credential_vars: ClassVar[tuple[str, ...]] = settings.METAPIC.variables

    def credentials(self) -> dict[str, str | None]:
        return {"access_token": self.access_token, "user_id": self.user_id}

    def client(self, on_retry=None) -> ApiClient:
        from pipelines.sources.metapic import metapic_envelope

        self.check_configured()
        return self._client(
            headers={
                "Authorization": self.access_token or "",
                "Accept": "application/json",
                "Content-Type": "application/json",
            },
            envelope=metapic_envelope,
            on_retry=on_retry,
            rate_limiter=RateLimiter.shared(
                (self.base_url.rstrip("/"), self.user_id), self.rate_limit, self.rate_window_seconds
            ),
        )


__all__ = [
    "CpamoeResource",
    "MetapicResource",
    "NotConfigured",
    "OnlyTrafficMarketerResource",
    "OnlyTrafficStudioResource",
    "RateLimiter",
    "WRITER_POOL",
    "WarehouseResource",
    "resources_from_env",
    "retry_policy_from_env",
]


def _secret(name: str) -> dg.EnvVar | None:
    """The variable as an EnvVar (resolved at run time, never displayed), or None when unset."""
    return dg.EnvVar(name) if settings.value(name) else None


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    """Every resource from the current environment, with the defaults and checks of
    :class:`pipelines.settings.Settings` (a bad number fails naming its variable). Base URLs and
    HTTP settings are checked when a client is built, so a run names them too."""
    v = settings.value
    return {
        "warehouse": WarehouseResource(path=settings.env("WAREHOUSE_PATH"), memory_limit=v("WAREHOUSE_MEMORY_LIMIT")),
        "onlytraffic_marketer": OnlyTrafficMarketerResource(
            base_url=settings.env("ONLYTRAFFIC_MARKETER_BASE_URL"),
            api_key=_secret("ONLYTRAFFIC_MARKETER_API_KEY"),
            max_concurrency=v("ONLYTRAFFIC_MARKETER_CONCURRENCY"),
            page_size=v("ONLYTRAFFIC_MARKETER_PAGE_SIZE"),
        ),
        "onlytraffic_studio": OnlyTrafficStudioResource(
            base_url=settings.env("ONLYTRAFFIC_STUDIO_BASE_URL"),
            api_key=_secret("ONLYTRAFFIC_STUDIO_API_KEY"),
            max_concurrency=v("ONLYTRAFFIC_STUDIO_CONCURRENCY"),
            page_size=v("ONLYTRAFFIC_STUDIO_PAGE_SIZE"),
        ),
        "cpamoe": CpamoeResource(
            base_url=settings.env("CPAMOE_BASE_URL"),
            user_id=v("CPAMOE_USER_ID"),
            api_key=_secret("CPAMOE_API_KEY"),
            leads_dir=settings.env("CPAMOE_LEADS_DIR"),
            max_concurrency=v("CPAMOE_CONCURRENCY"),
        ),
        "metapic": MetapicResource(
            base_url=settings.env("METAPIC_BASE_URL"),
            access_token=_secret("METAPIC_ACCESS_TOKEN"),
            user_id=v("METAPIC_USER_ID"),
            max_concurrency=v("METAPIC_CONCURRENCY"),
            page_size=v("METAPIC_PAGE_SIZE"),
            rate_limit=v("METAPIC_RATE_LIMIT"),
            rate_window_seconds=v("METAPIC_RATE_WINDOW_SECONDS"),
        ),
    }
