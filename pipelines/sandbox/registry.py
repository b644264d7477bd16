"""The simulated APIs the sandbox serves, found rather than listed.

Every module of ``pipelines/sandbox`` is looked at (in name order, so routes and ``Sandbox.env()``
come out the same each time); a class defined in it with the :class:`~pipelines.sandbox.server.ApiModule`
shape (string ``name`` and ``prefix``, and ``routes``, ``error_body``, ``env``) is one API. A new
``pipelines/sandbox/<source>.py`` is served without being named here. Order does not change the
data: each dataset draws from its own seeded generator (``World.rng(name, ...)``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

_SKIP = {"__main__", "registry"}  # the entry point (runs a server), this module


def is_api_module(cls: type) -> bool:
    """The ApiModule shape (the Protocol is structural, so it is checked by its members)."""
    return (
        isinstance(getattr(cls, "name", None), str)
        and isinstance(getattr(cls, "prefix", None), str)
        and cls.prefix.startswith("/")
        and all(callable(getattr(cls, method, None)) for method in ("routes", "error_body", "env"))
    )


def default_modules() -> list[type]:
    """Every ApiModule class of the sandbox package, by module name then class name."""
    package = importlib.import_module(__name__.rpartition(".")[0])
    found: list[type] = []
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda i: i.name):
        if info.name in _SKIP or info.ispkg:
            continue
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        found += [
            cls
            for _, cls in sorted(inspect.getmembers(module, inspect.isclass))
            if cls.__module__ == module.__name__ and is_api_module(cls)
        ]
    return found
