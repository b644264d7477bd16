"""What the Dagster UI shows about the warehouse, and what a run without sources does.

- Every table and view asset carries ``dagster/column_schema``, ``dagster/table_name`` and its SQL;
  the schema must equal the columns of a warehouse a real sandbox sync wrote (a drift fails here).
- The views' materializations carry the business figures (earned today per currency, open
  orders, average fill rate, alerts), equal to what the warehouse answers.
- A run in which no source is configured fails, from one step, with one line saying what to set;
  with some sources configured the others are named and the run succeeds.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from conftest import clean_env
from dagster_results import materializations

from models.status import OPEN_STATUSES
from pipelines import settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DG = str(Path(sys.executable).with_name("dg"))
SQL = PROJECT_ROOT / "sql"


def warehouse_columns(path: Path) -> dict[str, list[tuple[str, str, bool]]]:
    """Every table's and view's (column, type, nullable), as the synced warehouse lists them."""
    with duckdb.connect(str(path), read_only=True) as con:
        rows = con.execute(
            "SELECT table_name, column_name, data_type, is_nullable = 'YES' FROM information_schema.columns "
            "WHERE table_schema = 'main' ORDER BY table_name, ordinal_position"
        ).fetchall()
    found: dict[str, list[tuple[str, str, bool]]] = {}
    for table, column, kind, nullable in rows:
        found.setdefault(table, []).append((column, kind, nullable))
    return found


def test_every_table_and_view_asset_has_the_columns_of_the_synced_warehouse(world):
    from pipelines.definitions import build_defs

    assert world.sync().success
    actual = warehouse_columns(world.warehouse_path)
    defs = build_defs()
    described = {}
    for key in defs.resolve_asset_graph().get_all_asset_keys():
        spec = defs.resolve_assets_def(key).specs_by_key[key]
        assert "dagster/table_name" in spec.metadata, f"{key.to_user_string()} has no dagster/table_name"
        described[key.to_user_string()] = spec.metadata
    views = {p.stem for p in SQL.glob("v_*.sql")}
    assert views <= set(described)
    for asset, metadata in described.items():
        table = metadata["dagster/table_name"]
        schema = metadata["dagster/column_schema"]
        assert isinstance(schema, dg.TableSchema)
        columns = [(c.name, c.type, c.constraints.nullable) for c in schema.columns]
        assert columns == actual[table], f"{asset}: its column_schema differs from the warehouse's {table}"
        sql = metadata["sql"]
        assert isinstance(sql, dg.MarkdownMetadataValue) and sql.md_str.startswith("```sql\n")
        if table in views:
            assert (SQL / f"{table}.sql").read_text().strip() in sql.md_str
        else:
            assert f"CREATE TABLE {table} (" in sql.md_str
    # the assets whose key is not their table: the created-day backfill writes swap_orders
    assert described["swap_orders_by_created_day"]["dagster/table_name"] == "swap_orders"
    assert described["cpc_orders"]["dagster/column_schema"].constraints.other == ["primary key (order_id)"]


def _figures(result, asset: str) -> dict[str, object]:
    (materialization,) = materializations(result, asset)
    return {k: v.value for k, v in materialization.metadata.items()}


def test_view_materializations_carry_the_business_figures(world):
    first = world.sync()
    world.advance(hours=30)
    second = world.sync()  # a second day: something was earned since the first sync's baseline
    assert first.success and second.success
    opened = ", ".join(f"'{s}'" for s in sorted(OPEN_STATUSES))
    today = world.scalar("SELECT CAST(timezone('UTC', as_of) AS DATE) FROM v_warehouse_clock")

    daily = _figures(second, "v_earnings_daily")
    assert daily["day"] == str(today)
    earned = dict(world.query(
        "SELECT currency, sum(earned) FILTER (WHERE day = ?) FROM v_earnings_daily GROUP BY ALL", [today]
    ))
    assert {k for k in daily if k.startswith("earned_today_")} == {f"earned_today_{c}" for c in earned}
    for currency, total in earned.items():
        assert daily[f"earned_today_{currency}"] == pytest.approx(float(total or 0))
    assert daily["earned_today_USD"] > 0

    summary = _figures(second, "v_summary")
    assert summary["open_orders"] == world.scalar(f"SELECT count(*) FROM v_earnings WHERE status IN ({opened})") > 0
    assert summary["orders"] == world.scalar("SELECT count(*) FROM v_earnings")

    fill = _figures(second, "v_fill_rate")
    assert fill["average_fill_rate"] == pytest.approx(world.scalar("SELECT avg(fill_rate) FROM v_fill_rate"))
    assert 0 < fill["average_fill_rate"]

    alerts = _figures(second, "v_order_alerts")
    assert alerts["alerts"] == world.scalar("SELECT count(*) FROM v_order_alerts")
    for kind, n in world.query("SELECT alert, count(*) FROM v_order_alerts GROUP BY ALL"):
        assert alerts[f"alerts_{kind}"] == n

    earnings = _figures(second, "v_earnings")
    assert earnings["earned_USD"] == pytest.approx(float(world.scalar(
        "SELECT sum(earned) FROM v_earnings WHERE currency = 'USD'")))
    # numbers the Plots tab charts (floats and ints), on every sync's materialization
    for result in (first, second):
        for asset in ("v_earnings_daily", "v_summary", "v_fill_rate", "v_order_alerts"):
            (m,) = materializations(result, asset)
            assert isinstance(m.metadata["dagster/row_count"], dg.IntMetadataValue)
    for key in ("open_orders", "alerts"):
        assert isinstance(materializations(second, "v_summary" if key == "open_orders" else "v_order_alerts")[0]
                          .metadata[key], dg.IntMetadataValue)
    assert isinstance(materializations(second, "v_fill_rate")[0].metadata["average_fill_rate"], dg.FloatMetadataValue)


def _run_without(world, monkeypatch, sources) -> dg.ExecuteInProcessResult:
    """``sync_all`` in process with the credentials of ``sources`` unset."""
    from pipelines.definitions import build_defs

    world.apply_env()
    for source in sources:
        for variable in source.variables:
            monkeypatch.delenv(variable, raising=False)
    job = build_defs().resolve_job_def("sync_all")
    return job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)


def test_a_run_with_no_source_configured_fails_from_one_step_with_one_line(world, monkeypatch):
    from pipelines.defs.feed_asset import nothing_configured_message

    result = _run_without(world, monkeypatch, settings.ALL_SOURCES)
    assert not result.success
    failures = [e for e in result.all_events if e.is_step_failure]
    assert len(failures) == 1, [e.step_key for e in failures]
    message = failures[0].step_failure_data.user_failure_data.description
    assert message == nothing_configured_message() and "\n" not in message
    for variable in ("ONLYTRAFFIC_MARKETER_API_KEY", "ONLYTRAFFIC_STUDIO_API_KEY", "CPAMOE_API_KEY", "METAPIC_ACCESS_TOKEN"):
        assert variable in message
    assert "`make run`" in message and "sandbox" in message
    assert world.scalar("SELECT count(*) FROM cpc_orders") == 0


def test_a_run_with_some_sources_configured_syncs_them_and_names_the_others(world, monkeypatch):
    result = _run_without(world, monkeypatch, [settings.credentials(settings.METAPIC_API), settings.credentials(settings.CPAMOE_API)])
    assert result.success
    assert world.scalar("SELECT count(*) FROM cpc_orders") > 0 and world.scalar("SELECT count(*) FROM swap_orders") > 0
    for asset, variables in (("metapic_offers", "METAPIC_ACCESS_TOKEN, METAPIC_USER_ID"),
                             ("cpamoe_leads", "CPAMOE_USER_ID, CPAMOE_API_KEY")):
        meta = _figures(result, asset)
        assert meta["configured"] is False and meta["missing_variables"] == variables
    assert _figures(result, "cpc_orders")["configured"] is True


def test_dg_launch_with_no_credentials_fails_with_the_one_line_and_no_beta_warning(tmp_path):
    from pipelines.defs.feed_asset import nothing_configured_message

    home = tmp_path / "dagster_home"
    home.mkdir()
    env = clean_env(DAGSTER_HOME=str(home), WAREHOUSE_PATH=str(tmp_path / "warehouse.duckdb"), FEED_STEP_RETRIES="0",
                    CPAMOE_LEADS_DIR=str(tmp_path / "leads"))
    done = subprocess.run(
        [DG, "launch", "--module-name", "pipelines.definitions", "--job", "sync_all"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert nothing_configured_message() in output, output[-3000:]
    # Counted in the run's event log, not the console: a step process's console line can reach
    # dg launch's output after it has returned (seen as a 1-in-6 flake counting " - STEP_FAILURE - ").
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (run,) = instance.get_runs()
        failed_steps = [
            record.event_log_entry.step_key
            for record in instance.get_records_for_run(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records
        ]
    assert len(failed_steps) == 1, (failed_steps, output[-3000:])
    for noise in ("BetaWarning", "PreviewWarning", "SupersessionWarning"):
        assert noise not in done.stderr, done.stderr[-3000:]


def test_a_view_selected_alone_on_a_new_warehouse_gets_the_views_it_reads(world):
    """What the automation sensor does after one feed was materialized on a new warehouse: a run
    of the views downstream of it only (v_summary reads v_fill_rate, which is not selected)."""
    result = world.sync(assets=["metapic_offers", "v_summary"])
    assert result.success
    assert [m.asset_key.to_user_string() for m in result.asset_materializations_for_node("sql_views")] == ["v_summary"]
    assert world.scalar("SELECT count(*) FROM v_summary") > 0
