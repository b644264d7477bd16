"""OnlyTraffic's resources: the Marketer API (``onlytraffic_marketer``) and the Studio API
(``onlytraffic_studio``), built from the environment each time the definitions load."""

from typing import ClassVar

import dagster as dg

from pipelines import settings
from pipelines.resources import ApiResource, secret_env
from pipelines.sources.http import ApiClient
from pipelines.sources.onlytraffic_marketer import marketer_envelope
from pipelines.sources.onlytraffic_studio import studio_envelope


class OnlyTrafficMarketerResource(ApiResource):
    """OnlyTraffic Marketer API (``ONLYTRAFFIC_MARKETER_BASE_URL``, ``ONLYTRAFFIC_MARKETER_API_KEY``)."""

    max_concurrency: int = settings.DEFAULTS["ONLYTRAFFIC_MARKETER_CONCURRENCY"]
    api_key: str | None = None
    base_url_var: ClassVar[str] = "ONLYTRAFFIC_MARKETER_BASE_URL"
    source_name: ClassVar[str] = settings.MARKETER_API
    credential_vars: ClassVar[tuple[str, ...]] = settings.credentials(settings.MARKETER_API).variables

    def credentials(self) -> dict[str, str | None]:
        return {"api_key": self.api_key}

    def client(self, on_retry=None) -> ApiClient:
        self.check_configured()
        return self._client(
            headers={"Authorization": self.api_key or "", "Accept": "application/json"},
            envelope=marketer_envelope,
            on_retry=on_retry,
        )


class OnlyTrafficStudioResource(ApiResource):
    """OnlyTraffic Studio API (``ONLYTRAFFIC_STUDIO_BASE_URL``, ``ONLYTRAFFIC_STUDIO_API_KEY``)."""

    max_concurrency: int = settings.DEFAULTS["ONLYTRAFFIC_STUDIO_CONCURRENCY"]
    api_key: str | None = None
    base_url_var: ClassVar[str] = "ONLYTRAFFIC_STUDIO_BASE_URL"
    source_name: ClassVar[str] = settings.STUDIO_API
    credential_vars: ClassVar[tuple[str, ...]] = settings.credentials(settings.STUDIO_API).variables

    def credentials(self) -> dict[str, str | None]:
        return {"api_key": self.api_key}

    def client(self, on_retry=None) -> ApiClient:
        self.check_configured()
        return self._client(
            headers={"X-API-Key": self.api_key or "", "Accept": "application/json"},
            envelope=studio_envelope,
            on_retry=on_retry,
        )


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    """Both resources with the defaults and checks of :class:`pipelines.settings.Settings` (a bad
    number fails naming its variable; the base URL is checked when a client is built)."""
    v = settings.value
    return {
        "onlytraffic_marketer": OnlyTrafficMarketerResource(
            base_url=settings.env("ONLYTRAFFIC_MARKETER_BASE_URL"),
            api_key=secret_env("ONLYTRAFFIC_MARKETER_API_KEY"),
            max_concurrency=v("ONLYTRAFFIC_MARKETER_CONCURRENCY"),
            page_size=v("ONLYTRAFFIC_MARKETER_PAGE_SIZE"),
        ),
        "onlytraffic_studio": OnlyTrafficStudioResource(
            base_url=settings.env("ONLYTRAFFIC_STUDIO_BASE_URL"),
            api_key=secret_env("ONLYTRAFFIC_STUDIO_API_KEY"),
            max_concurrency=v("ONLYTRAFFIC_STUDIO_CONCURRENCY"),
            page_size=v("ONLYTRAFFIC_STUDIO_PAGE_SIZE"),
        ),
    }


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(resources=resources_from_env())
