"""Adding a source touches only its own files (README, *Adding a source*): the places that gather
every source find them (the defs folders' resources and schedules, the models' status mappings,
the sandbox's APIs) instead of listing them. These tests fail when a central list creeps back:
a module that gathers naming a source, or a source's piece that discovery would not find."""

import importlib
import inspect
import pkgutil
import re
from pathlib import Path

import pytest

import models
from models.status import STATUS_MAPPINGS, model_modules
from pipelines.resources import ApiResource
from pipelines.sandbox.registry import default_modules

ROOT = Path(__file__).resolve().parents[1]
DEFS = ROOT / "pipelines" / "defs"

# Modules whose job is to gather what every source contributes: none may name a source.
GATHERING = [
    "pipelines/resources.py",
    "pipelines/definitions.py",
    "pipelines/defs/__init__.py",
    "pipelines/defs/sync_all.py",
    "pipelines/defs/schedules/schedules.py",
    "pipelines/defs/views/assets.py",
    "pipelines/schedules.py",
    "pipelines/config_check.py",
    "pipelines/sandbox/registry.py",
    "models/__init__.py",
    "models/status.py",
    "models/columns.py",
    "models/lifecycle.py",
]


def source_folders() -> list[str]:
    return sorted(p.parent.name for p in DEFS.glob("*/resources.py"))


def source_names() -> set[str]:
    """Every name a source goes by: its defs folder, its resource keys, its status mapping keys,
    its sandbox API and the word before the first underscore of each (``onlytraffic``)."""
    names = set(source_folders()) | set(STATUS_MAPPINGS) | {api.name for api in default_modules()}
    for folder in source_folders():
        names |= set(importlib.import_module(f"pipelines.defs.{folder}.resources").resources_from_env())
    return names | {n.split("_")[0] for n in names}


def test_there_are_sources_to_check():
    assert {"onlytraffic", "cpamoe", "metapic"} <= set(source_folders())
    assert {"onlytraffic_marketer", "onlytraffic_studio", "cpamoe", "metapic", "cpc", "swap"} <= source_names()


@pytest.mark.parametrize("path", GATHERING)
def test_a_gathering_module_names_no_source(path):
    text = (ROOT / path).read_text().lower()
    named = sorted(n for n in source_names() if re.search(rf"(?<![a-z]){re.escape(n)}(?![a-z])", text))
    assert not named, f"{path} names {named}: let the source's own files declare it (README, Adding a source)"


def test_every_source_folder_contributes_its_resources(monkeypatch):
    """Each ``defs/<source>/resources.py`` brings its resources to the Definitions, built from the
    environment of the moment (tests change variables and build the definitions again)."""
    from pipelines.definitions import build_defs, build_resources

    monkeypatch.setenv("METAPIC_PAGE_SIZE", "7")
    defs = build_defs()
    expected = {"warehouse"}
    for folder in source_folders():
        module = importlib.import_module(f"pipelines.defs.{folder}.resources")
        keys = set(module.resources_from_env())
        assert keys and not keys & expected, f"{folder}: resource keys {keys} empty or taken"
        expected |= keys
        for resource in module.resources_from_env().values():
            assert type(resource).__module__ == module.__name__, "a source's resource class lives in its folder"
    assert set(defs.resources) == set(build_resources()) == expected
    assert defs.resources["metapic"].page_size == build_resources()["metapic"].page_size == 7


def test_every_api_resource_class_is_a_source_folders():
    """No client resource left outside the source folders (pipelines/resources.py keeps the base)."""
    for folder in source_folders():
        importlib.import_module(f"pipelines.defs.{folder}.resources")
    subclasses = list(ApiResource.__subclasses__())
    assert subclasses
    for cls in subclasses:
        assert re.fullmatch(r"pipelines\.defs\.\w+\.resources", cls.__module__), cls
        assert cls.credential_vars, f"{cls.__name__} has no credential variables"


def test_every_models_module_is_found_and_its_mappings_collected():
    names = {info.name for info in pkgutil.iter_modules(models.__path__)} - {"status"}
    assert {m.__name__.rpartition(".")[2] for m in model_modules()} == names
    declared = {}
    for module in model_modules():
        for source, mapping in getattr(module, "STATUS_MAPPINGS", {}).items():
            declared[source] = mapping
    assert declared == STATUS_MAPPINGS


def test_every_sandbox_api_module_is_served():
    """Every class of pipelines/sandbox with an ApiModule's members is mounted, each under its own prefix."""
    found = default_modules()
    modules = {cls.__module__.rpartition(".")[2] for cls in found}
    assert {"onlytraffic_marketer", "onlytraffic_studio", "cpamoe", "metapic"} <= modules
    prefixes = [cls.prefix for cls in found]
    assert len(set(prefixes)) == len(prefixes)
    for cls in found:
        for method in ("routes", "error_body", "env"):
            assert inspect.isfunction(getattr(cls, method)), (cls, method)


def test_a_new_sandbox_module_can_size_its_records_without_a_scale_field():
    """``Scale.factor`` grows with the presets as their counts do, so ``round(n * factor)`` gives a
    new module's records the same proportions without adding a field to ``Scale``."""
    from pipelines.sandbox.world import SCALES

    tiny = SCALES["tiny"]
    assert tiny.factor == 1
    previous = tiny
    for name in ("small", "medium", "large"):
        scale = SCALES[name]
        assert scale.factor > previous.factor
        # within a factor of three of how the existing counts grew
        for count in (lambda s: s.cpc_orders, lambda s: s.leads, lambda s: s.offers * s.participants_per_offer):
            grown = count(scale) / count(tiny)
            assert scale.factor / 3 <= grown <= scale.factor * 3, (name, grown)
        previous = scale
