"""The scale-out path, as far as it can be tested offline: the warehouse location is one setting
(``WAREHOUSE_PATH``), a MotherDuck or DuckLake location becomes an ATTACH of that string, the
non-file code path (ATTACH, then ``USE wh``) works, and no other module opens a DuckDB file itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import sqlalchemy as sa

from pipelines.warehouse import connection as warehouse_module
from pipelines.warehouse import Warehouse

PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


@pytest.mark.parametrize(
    "location",
    ["md:affiliates", "motherduck:affiliates", "ducklake:metadata.ducklake", "ducklake:postgres:dbname=lake host=db"],
)
def test_a_remote_location_is_attached_by_its_string_and_stages_locally(location, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    warehouse = Warehouse(location)

    assert not warehouse.is_local_file
    assert warehouse.attach_sql("wh") == f"ATTACH '{location}' AS wh"
    assert warehouse.attach_sql("wh", read_only=True) == f"ATTACH '{location}' AS wh (READ_ONLY)"
    assert warehouse.sqlalchemy_url() == "duckdb:///:memory:"  # the catalog is ATTACHed on connect
    assert warehouse.staging_root.is_relative_to(tmp_path)  # staging never goes to the remote side


def test_a_quote_in_the_location_cannot_break_out_of_the_attach():
    assert Warehouse("md:it's").attach_sql("wh") == "ATTACH 'md:it''s' AS wh"


def test_a_local_file_is_opened_directly_and_stages_beside_it(tmp_path):
    warehouse = Warehouse(str(tmp_path / "data" / "warehouse.duckdb"))

    assert warehouse.is_local_file
    assert warehouse.staging_root == tmp_path / "data" / ".staging"


def test_the_non_file_path_makes_the_attached_catalog_the_default():
    """``:memory:`` takes the same branch as md:/ducklake: (ATTACH, then USE wh) without a network."""
    with Warehouse(":memory:").connect() as con:
        assert con.execute("SELECT current_database()").fetchone()[0] == "wh"


def test_a_sync_through_the_attach_path_lands_as_in_a_file(world, monkeypatch):
    """The whole sync (schema via SQLAlchemy, staging, commit, checks, views) with the warehouse
    taken down the remote branch: this run's file is ATTACHed by its string like md:/ducklake:."""
    monkeypatch.setattr(warehouse_module, "REMOTE_PREFIXES", (*warehouse_module.REMOTE_PREFIXES, str(world.warehouse_path)))
    assert not Warehouse(str(world.warehouse_path)).is_local_file

    world.sync(assets=["cpc_orders", "v_fill_rate"])

    truth = world.sandbox.dataset("marketer_cpc").truth()
    assert world.scalar("SELECT count(*) FROM cpc_orders") == len(truth) > 0
    assert world.scalar("SELECT count(*) FROM v_fill_rate WHERE source = 'cpc'") == len(truth)
    assert world.scalar("SELECT count(*) FROM status_history WHERE source = 'cpc'") == len(truth)


def test_warehouse_path_is_the_only_setting_for_the_location(monkeypatch):
    from pipelines.definitions import build_resources

    monkeypatch.setenv("WAREHOUSE_PATH", "md:affiliates")
    assert build_resources()["warehouse"].path == "md:affiliates"


def _duckdb_connect_calls(path: Path) -> list[tuple[int, str]]:
    calls = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "connect":
            target = node.func.value
            if isinstance(target, ast.Name) and target.id == "duckdb":
                args = [ast.unparse(a) for a in node.args]
                calls.append((node.lineno, ", ".join(args)))
    return calls


def test_nothing_but_the_warehouse_module_opens_a_duckdb_file():
    """Every read and write goes through Warehouse, so a remote location needs no other change
    (in-memory DuckDB connections, e.g. for staging, are fine)."""
    offenders = []
    for path in sorted(PIPELINES.rglob("*.py")):
        relative = path.relative_to(PIPELINES).as_posix()
        if relative == "warehouse/connection.py" or relative.startswith("sandbox/"):
            continue
        for line, args in _duckdb_connect_calls(path):
            if args not in ("", "':memory:'", '":memory:"'):
                offenders.append(f"pipelines/{relative}:{line} duckdb.connect({args})")
    assert not offenders, offenders


def test_sqlalchemy_url_of_a_file_is_the_file(tmp_path):
    path = tmp_path / "w.duckdb"
    assert sa.make_url(Warehouse(str(path)).sqlalchemy_url()).database == str(path)
