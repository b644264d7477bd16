"""Every setting is declared once (pipelines/settings.py): the README's configuration tables, the
defaults and the checks all come from that declaration, and these tests hold them to it."""

import re
from pathlib import Path

import pytest

from pipelines import settings
from pipelines.config_check import config_problems

README = Path(__file__).resolve().parents[1] / "README.md"


def configuration_section() -> str:
    text = README.read_text()
    start = text.index("## Configuration\n")
    return text[start : text.index("\n## ", start + 1)]


def readme_rows() -> dict[str, str]:
    """variable -> default column, for every row of the Configuration section's tables."""
    rows = {}
    for line in configuration_section().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            names = re.findall(r"`([A-Z][A-Z0-9_]+)`", cells[0])
            assert len(names) == 1, f"one variable per row: {line}"
            rows[names[0]] = cells[2]
    return rows


def test_the_readme_lists_exactly_the_models_variables_with_their_defaults():
    rows = readme_rows()

    assert list(rows) == list(settings.VARIABLES)
    for name, shown in rows.items():
        default = settings.FIELDS[name].default
        if default is None:
            assert not re.search(r"\d", shown) and "`" not in shown, f"{name}: {shown} but no default"
        else:
            assert shown.strip("`") == (default if isinstance(default, str) else f"{default:g}"), name


def test_the_readme_tables_are_the_generated_ones():
    assert settings.readme_tables() in configuration_section()


def test_every_default_passes_its_own_check():
    environ = {name: str(default) for name, default in settings.DEFAULTS.items()}

    assert settings.problems(environ) == []
    assert settings.Settings.from_env(environ) == settings.Settings.from_env({})
    assert settings.Settings.from_env({}).http_max_attempts == 6


@pytest.mark.parametrize(
    "name", [n for n in settings.VARIABLES if settings.FIELDS[n].annotation in (int, float)]
)
def test_a_number_setting_rejects_words_naming_the_variable(name):
    (problem,) = config_problems({name: "lots"})

    assert problem.startswith(f"{name}='lots' is not a ")
    with pytest.raises(ValueError, match=f"^{name}='lots' is not a "):
        settings.Settings.from_env({name: "lots"})


def test_unset_or_empty_means_the_default():
    assert settings.value("HTTP_TIMEOUT_SECONDS", {"HTTP_TIMEOUT_SECONDS": "  "}) == 60
    assert settings.value("METAPIC_RATE_LIMIT", {"METAPIC_RATE_LIMIT": "120.0"}) == 120
    assert settings.value("CPAMOE_PAYOUTS_FILE", {}) is None


def test_credentials_and_secrets_come_from_the_model():
    assert settings.credentials(settings.CPAMOE_API).variables == ("CPAMOE_USER_ID", "CPAMOE_API_KEY")
    assert settings.credentials(settings.METAPIC_API).variables == ("METAPIC_ACCESS_TOKEN", "METAPIC_USER_ID")
    assert set(settings.SECRET_VARIABLES) == {
        "ONLYTRAFFIC_MARKETER_API_KEY", "ONLYTRAFFIC_STUDIO_API_KEY", "CPAMOE_API_KEY", "METAPIC_ACCESS_TOKEN",
        "ALERTS_WEBHOOK_URL",
    }
