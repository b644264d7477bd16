"""Keep glibc's malloc from holding memory the sync has already freed.

A sync runs fetch threads (httpx, one pool per API) beside DuckDB's own threads. glibc gives
threads up to 8 malloc arenas per core, and an arena keeps what was freed in it for reuse, so
pages parsed on one thread and released on another pile up as resident memory nobody uses.
Two arenas are enough for a process whose heavy lifting happens inside DuckDB: measured on the
medium bench preset, peak RSS 15 MB lower at the same speed (bench/README.md).

``MALLOC_ARENA_MAX`` in the environment (glibc reads it itself) wins over this. Elsewhere than
glibc (macOS, musl) there is nothing to do.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_ARENA_MAX = -8  # glibc's malloc.h
DEFAULT_ARENAS = 2
_done = False


def limit_malloc_arenas(arenas: int = DEFAULT_ARENAS) -> bool:
    """Cap glibc's malloc arenas once per process; True when the cap was set here."""
    global _done
    if _done or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    _done = True
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False  # not glibc
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, arenas))
