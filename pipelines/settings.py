"""Every environment variable the project reads, with its default, in one place.

The README's configuration table mirrors this module. ``.env`` in the working directory is loaded
(without overriding variables already set) by the CLI; ``dg dev`` loads it too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dotenv import load_dotenv

DEFAULTS: dict[str, str] = {
    "WAREHOUSE_PATH": "data/warehouse.duckdb",
    "ONLYTRAFFIC_MARKETER_BASE_URL": "https://onlytraffic.com",
    "ONLYTRAFFIC_STUDIO_BASE_URL": "https://studio-api.onlytraffic.com/api/external/v1",
    "CPAMOE_BASE_URL": "https://api.cpa.moe",
    "METAPIC_BASE_URL": "https://api.metapic.dev",
    "CPAMOE_LEADS_DIR": "data/cpamoe_leads",
    "SWAP_PARTITIONS_START": "2025-01-01",
    "METAPIC_PARTITIONS_START": "2025-01-01",
}


@dataclass(frozen=True)
class SourceCredentials:
    """The credential variables of one source; a source is configured when all are set."""

    source: str
    variables: tuple[str, ...]

    def missing(self) -> list[str]:
        return [v for v in self.variables if not os.environ.get(v)]


MARKETER = SourceCredentials("OnlyTraffic Marketer API", ("ONLYTRAFFIC_MARKETER_API_KEY",))
STUDIO = SourceCredentials("OnlyTraffic Studio API", ("ONLYTRAFFIC_STUDIO_API_KEY",))
CPAMOE = SourceCredentials("cpa.moe affiliate API", ("CPAMOE_USER_ID", "CPAMOE_API_KEY"))
METAPIC = SourceCredentials("Metapic API v2", ("METAPIC_ACCESS_TOKEN", "METAPIC_USER_ID"))
ALL_SOURCES = (MARKETER, STUDIO, CPAMOE, METAPIC)

SECRET_VARIABLES = (
    "ONLYTRAFFIC_MARKETER_API_KEY",
    "ONLYTRAFFIC_STUDIO_API_KEY",
    "CPAMOE_API_KEY",
    "METAPIC_ACCESS_TOKEN",
)


def load_env_file(path: str | Path = ".env") -> None:
    """Load ``.env`` if present; variables already in the environment win."""
    load_dotenv(path, override=False)


def env(name: str) -> str:
    """The value of a variable, falling back to its documented default ('' when it has none)."""
    value = os.environ.get(name)
    if value:
        return value
    return DEFAULTS.get(name, "")


def any_credentials_set() -> bool:
    return any(os.environ.get(v) for s in ALL_SOURCES for v in s.variables)
