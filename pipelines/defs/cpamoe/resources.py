"""cpa.moe's resource (``cpamoe``), built from the environment each time the definitions load."""

from typing import ClassVar

import dagster as dg

from pipelines import settings
from pipelines.resources import ApiResource, secret_env
from pipelines.sources.cpamoe import cpamoe_envelope
from pipelines.sources.http import ApiClient, Redactor


class CpamoeResource(ApiResource):
    """cpa.moe affiliate API (``CPAMOE_BASE_URL``, ``CPAMOE_USER_ID``, ``CPAMOE_API_KEY``).

    The credentials ride in the URL (``id={user}-{key}``): the client redacts the key and the
    combined id from every message.
    """

    max_concurrency: int = settings.DEFAULTS["CPAMOE_CONCURRENCY"]
    user_id: str | None = None
    api_key: str | None = None
    leads_dir: str = settings.DEFAULTS["CPAMOE_LEADS_DIR"]
    base_url_var: ClassVar[str] = "CPAMOE_BASE_URL"
    source_name: ClassVar[str] = settings.CPAMOE_API
    credential_vars: ClassVar[tuple[str, ...]] = settings.credentials(settings.CPAMOE_API).variables

    def credentials(self) -> dict[str, str | None]:
        return {"user_id": self.user_id, "api_key": self.api_key}

    @property
    def auth_id(self) -> str:
        """The ``id`` query parameter: ``{user}-{key}``."""
        return f"{self.user_id}-{self.api_key}"

    def client(self, on_retry=None) -> ApiClient:
        self.check_configured()
        client = self._client(
            headers={"Accept": "application/json"}, envelope=cpamoe_envelope, on_retry=on_retry
        )
        # the key and the combined id are secrets; the user id alone is not
        client.redact = Redactor([self.auth_id, self.api_key or ""])
        return client


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    """The resource with the defaults and checks of :class:`pipelines.settings.Settings`."""
    v = settings.value
    return {
        "cpamoe": CpamoeResource(
            base_url=settings.env("CPAMOE_BASE_URL"),
            user_id=v("CPAMOE_USER_ID"),
            api_key=secret_env("CPAMOE_API_KEY"),
            leads_dir=settings.env("CPAMOE_LEADS_DIR"),
            max_concurrency=v("CPAMOE_CONCURRENCY"),
        ),
    }


@dg.definitions
def defs() -> dg.Definitions:
    return dg.Definitions(resources=resources_from_env())
