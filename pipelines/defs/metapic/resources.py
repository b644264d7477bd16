"""Metapic's resource (``metapic``), built from the environment each time the definitions load."""

from typing import ClassVar

import dagster as dg

from pipelines import settings
from pipelines.resources import ApiResource, secret_env
from pipelines.sources.http import ApiClient
from pipelines.sources.rate_limit import RateLimiter
from pipelines.sources.metapic import metapic_envelope


class MetapicResource(ApiResource):
    """Metapic API v2 (``METAPIC_BASE_URL``, ``METAPIC_ACCESS_TOKEN``, ``METAPIC_USER_ID``).

    Requests are rate-limited client-side to ``rate_limit`` per ``rate_window_seconds`` (the
    documented ``x-ratelimit-limit`` is 300), shared by every thread of the run.
    """

    max_concurrency: int = settings.DEFAULTS["METAPIC_CONCURRENCY"]
    access_token: str | None = None
    user_id: str | None = None
    rate_limit: int = settings.DEFAULTS["METAPIC_RATE_LIMIT"]
    rate_window_seconds: float = settings.DEFAULTS["METAPIC_RATE_WINDOW_SECONDS"]
    base_url_var: ClassVar[str] = "METAPIC_BASE_URL"
    source_name: ClassVar[str] = settings.METAPIC_API
    credential_vars: ClassVar[tuple[str, ...]] = settings.credentials(settings.METAPIC_API).variables

    def credentials(self) -> dict[str, str | None]:
        return {"access_token": self.access_token, "user_id": self.user_id}

    def client(self, on_retry=None) -> ApiClient:
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


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    """The resource with the defaults and checks of :class:`pipelines.settings.Settings`."""
    v = settings.value
    return {
        "metapic": MetapicResource(
            base_url=settings.env("METAPIC_BASE_URL"),
            access_token=secret_env("METAPIC_ACCESS_TOKEN"),
            user_id=v("METAPIC_USER_ID"),
            max_concurrency=v("METAPIC_CONCURRENCY"),
            page_size=v("METAPIC_PAGE_SIZE"),
            rate_limit=v("METAPIC_RATE_LIMIT"),
            rate_window_seconds=v("METAPIC_RATE_WINDOW_SECONDS"),
        ),
    }


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(resources=resources_from_env())
