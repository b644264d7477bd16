"""How every source's own statuses map onto the canonical lifecycle status, and the sets derived from it.

Every entity table keeps the source's raw status in ``source_status`` and the canonical one in
``status`` (a DuckDB ENUM named ``lifecycle_status``). Each ``models/<source>.py`` declares its
``STATUS_MAPPINGS`` (and ``STILL_MOVING`` if any) beside its tables; this module collects them. A raw
value missing from these mappings is kept as-is with ``status`` NULL, and the ``*_known_statuses``
asset check fails naming it: an unknown value must never crash a run or drop a row.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from models.lifecycle import (
    LIFECYCLE_STATUSES,
    OPEN_STATUSES,
    TERMINAL_STATUSES,
    LifecycleStatus,
)

__all__ = [
    "LIFECYCLE_STATUSES",
    "OPEN_STATUSES",
    "STATUS_MAPPINGS",
    "STILL_MOVING",
    "TERMINAL_STATUSES",
    "LifecycleStatus",
    "final_raw_statuses",
    "map_status",
    "model_modules",
    "open_raw_statuses",
    "sql_list",
    "status_case_sql",
    "terminal_raw_statuses",
]


# source name (as written to status_history.source) -> raw status -> canonical status, collected
# from every ``models/<source>.py`` that declares ``STATUS_MAPPINGS`` (and ``STILL_MOVING``: raw
# statuses that map to a terminal canonical status while the source's record still moves on behind
# it, so a poll keeps asking). No list of sources here: a new models module brings its own.


def model_modules() -> list[ModuleType]:
    """Every module of the ``models`` package but this one, imported (which registers its tables
    on ``metadata``), in name order."""
    import models

    return [
        importlib.import_module(f"models.{info.name}")
        for info in pkgutil.iter_modules(models.__path__)
        if info.name != __name__.rpartition(".")[2]
    ]


def _collect(attribute: str, modules: list[ModuleType]) -> dict:
    found: dict = {}
    for module in modules:
        for source, value in getattr(module, attribute, {}).items():
            if source in found:
                raise ValueError(f"{attribute}[{source!r}] is declared twice (again in {module.__name__})")
            found[source] = value
    return found


_MODULES = model_modules()
STATUS_MAPPINGS: dict[str, dict[str, LifecycleStatus]] = _collect("STATUS_MAPPINGS", _MODULES)
STILL_MOVING: dict[str, frozenset[str]] = _collect("STILL_MOVING", _MODULES)


def terminal_raw_statuses(source: str) -> tuple[str, ...]:
    """The source's raw statuses whose canonical status is terminal, in the mapping's order."""
    return tuple(raw for raw, canon in STATUS_MAPPINGS[source].items() if canon.value in TERMINAL_STATUSES)


def open_raw_statuses(source: str) -> tuple[str, ...]:
    """The source's raw statuses whose canonical status is open, in the mapping's order."""
    return tuple(raw for raw, canon in STATUS_MAPPINGS[source].items() if canon.value in OPEN_STATUSES)


def final_raw_statuses(source: str) -> tuple[str, ...]:
    """Terminal raw statuses after which the source's record never changes again (what a poll
    can stop asking about): the terminal ones minus :data:`STILL_MOVING`."""
    still = STILL_MOVING.get(source, frozenset())
    return tuple(raw for raw in terminal_raw_statuses(source) if raw not in still)


def sql_list(values) -> str:
    """``'a', 'b'``: values as a SQL IN list (sorted when given a set, so the SQL is stable)."""
    ordered = sorted(values) if isinstance(values, (set, frozenset)) else list(values)
    return ", ".join(_sql_str(v) for v in ordered)


def map_status(source: str, raw: str | None) -> LifecycleStatus | None:
    """Canonical status for a raw one, or None when the value is unknown."""
    if raw is None:
        return None
    return STATUS_MAPPINGS[source].get(raw)


def status_case_sql(source: str, column: str) -> str:
    """A SQL CASE expression mapping ``column`` (raw status) to ``lifecycle_status``.

    Generated from STATUS_MAPPINGS so the Python and SQL views of the mapping can never drift.
    Unknown values become NULL.
    """
    whens = " ".join(
        f"WHEN {_sql_str(raw)} THEN {_sql_str(canon.value)}"
        for raw, canon in STATUS_MAPPINGS[source].items()
    )
    return f"CAST(CASE {column} {whens} ELSE NULL END AS lifecycle_status)"


def _sql_str(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
