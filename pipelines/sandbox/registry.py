"""The simulated APIs the sandbox serves: (module, class) of each :class:`ApiModule`."""

from __future__ import annotations

import importlib

MODULES = [
    ("pipelines.sandbox.onlytraffic_marketer", "MarketerApi"),
    ("pipelines.sandbox.metapic", "MetapicApi"),
    ("pipelines.sandbox.cpamoe", "CpamoeApi"),
    ("pipelines.sandbox.onlytraffic_studio", "StudioApi"),
]


def default_modules():
    return [getattr(importlib.import_module(m), cls) for m, cls in MODULES]
