"""The malloc arena cap (pipelines/allocator.py) really caps glibc's arenas.

Each case runs in a fresh interpreter (the cap is process-wide and must come before threads):
eight threads allocate concurrently, then glibc's own ``malloc_info`` report counts the arenas.
Without the cap glibc makes one per contending thread; with it, two at most.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import ctypes, ctypes.util, os, re, sys, tempfile, threading
if sys.argv[1] == "cap":
    from pipelines.allocator import limit_malloc_arenas
    assert limit_malloc_arenas() is True
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.fdopen.restype = ctypes.c_void_p

def work():
    for _ in range(20000):
        libc.free(libc.malloc(4096))  # ctypes releases the GIL: the threads really contend

threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
with tempfile.TemporaryFile() as f:
    stream = libc.fdopen(os.dup(f.fileno()), b"w")
    libc.malloc_info(0, ctypes.c_void_p(stream))
    libc.fclose(ctypes.c_void_p(stream))
    f.seek(0)
    print(len(re.findall(rb"<heap nr=", f.read())))
"""


def arenas(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip())


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_arena_cap_limits_glibc_to_two_arenas() -> None:
    assert arenas("nocap") > 2, "the probe must make glibc create more than two arenas without the cap"
    assert arenas("cap") <= 2


def test_arena_cap_leaves_an_explicit_malloc_arena_max_alone() -> None:
    code = "from pipelines.allocator import limit_malloc_arenas; print(limit_malloc_arenas())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_ROOT, env={**os.environ, "MALLOC_ARENA_MAX": "4"},
        capture_output=True, text=True, timeout=60,
    )
    assert out.stdout.strip() == "False", out.stderr
