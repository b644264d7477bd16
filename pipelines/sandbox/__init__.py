"""A faithful, deterministic simulator of every API the warehouse reads, served over real HTTP.

``make run`` uses it when no credentials are set; the tests and benchmarks run against it. See
:mod:`pipelines.sandbox.server` for the control routes (advance time, faults, request counters).
"""

from pipelines.sandbox.server import Sandbox
from pipelines.sandbox.world import SCALES

__all__ = ["SCALES", "Sandbox"]
