"""Check every setting before a run starts: one clear sentence per bad variable, naming it.

Without this, a bad value fails deep inside a run (a socket refusing a negative timeout, httpx
resolving a host with a space in it, ``int()`` at import) with a stack trace that never says
which variable to fix. The CLI calls :func:`config_problems` first and stops on any problem.
Unset variables are fine (they have defaults); credentials are not checked here (a source
without them is reported as not configured). The rules themselves are the types of
:class:`pipelines.settings.Settings`, where every variable is declared.
"""

from __future__ import annotations

from collections.abc import Mapping

from pipelines.settings import problems


def config_problems(environ: Mapping[str, str] | None = None) -> list[str]:
    """Every setting that cannot work, one sentence each (empty when all are usable)."""
    return problems(environ)
