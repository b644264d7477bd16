"""The simulated APIs the sandbox serves. Each entry builds one :class:`ApiModule`."""

from __future__ import annotations


def default_modules():
    from pipelines.sandbox.onlytraffic_marketer import MarketerApi

    return [MarketerApi]
