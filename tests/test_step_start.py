"""A step process starts from a fork server that already imported what the step needs.

Every feed is a step in a process forked from the executor's fork server (pipelines/executor.py).
What the step imports after the fork it imports again in every step: these tests run, in a fresh
interpreter, what the fork server preloads and then what a step does first (open the Dagster
instance of this project's dagster.yaml, make an HTTP client, open the warehouse), and look at
which modules that still had to import.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import clean_env

PROJECT_ROOT = Path(__file__).resolve().parents[1]

STEP = """
import json, sys
import dagster._core.executor.multiprocess, pipelines.definitions, pipelines.step_preload
from pipelines.executor import PRELOAD_MODULES
assert PRELOAD_MODULES == ["pipelines.definitions", "pipelines.step_preload"], PRELOAD_MODULES
missing = pipelines.step_preload.MISSING
preloaded = set(sys.modules)
import pipelines.sources.http as http
ssl_ready = http._ssl_context is not None  # the CA bundle is loaded before any fork

import dagster as dg, httpx
from dagster._core.instance.ref import InstanceRef
from pipelines.warehouse import Warehouse

with dg.DagsterInstance.from_ref(InstanceRef.from_dir(sys.argv[1])):
    pass
httpx.Client().close()
Warehouse(sys.argv[2]).ensure_schema()
print(json.dumps({"missing": missing, "ssl_ready": ssl_ready, "imported": sorted(set(sys.modules) - preloaded)}))
"""

# Packages a step used to import after the fork (0.75 s per step on 2 cores, nine steps a sync).
HEAVY = ("alembic", "httpcore", "h11", "trio", "anyio", "upath", "fsspec", "sqlalchemy.dialects", "mako")


def test_a_step_imports_nothing_heavy_after_the_fork(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = clean_env(DAGSTER_HOME=str(home), WAREHOUSE_PATH=str(tmp_path / "warehouse.duckdb"))
    done = subprocess.run([sys.executable, "-c", STEP, str(home), str(tmp_path / "warehouse.duckdb")],
                          cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])

    assert result["ssl_ready"]
    assert result["missing"] == []  # a module renamed by a Dagster upgrade would make the preload a no-op
    late = [m for m in result["imported"] if m.startswith(HEAVY)]
    assert late == [], f"imported by the step after the fork: {late}"
