"""Backfills from the UI, for real: dagster-webserver and dagster-daemon on loopback, the GraphQL
mutation the UI's "Materialize partitions" dialog sends, then the instance and DuckDB checked.

Slow by nature (the backfill daemon ticks every 30 s): marked ``ui``, run by ``make test``.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from types import SimpleNamespace

import pytest
import ui_stack
from conftest import ANCHOR
from test_metapic import stats_truth

pytestmark = [pytest.mark.ui, pytest.mark.timeout(1200)]  # the first test's setup starts servers and backfills


@pytest.fixture(scope="session")
def dagster_ui(tmp_path_factory):
    ui = ui_stack.acquire(lambda: tmp_path_factory.mktemp("dagster_ui"), ANCHOR)
    yield ui
    ui_stack.release()


@pytest.fixture(scope="session")
def backfills(dagster_ui):
    return ui_stack.run_backfills(dagster_ui)


def _tags(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["tags"]}


@pytest.mark.parametrize("asset", sorted(ui_stack.BACKFILLS))
def test_backfill_of_a_date_range_is_one_run_materializing_every_partition(dagster_ui, backfills, asset):
    days = ui_stack.BACKFILLS[asset]
    backfill = backfills[asset]

    assert backfill["status"] == "COMPLETED_SUCCESS", (backfill, dagster_ui.log_tail())
    assert backfill["isAssetBackfill"] and backfill["numPartitions"] == len(days)
    # single-run backfill policy: the whole range in ONE run
    (run,) = backfill["runs"]
    assert run["status"] == "SUCCESS"
    tags = _tags(run)
    assert (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]) == (days[0], days[-1])
    # every partition recorded as materialized, by that run, and none outside the range
    by_partition = {m["partition"]: m["runId"] for m in dagster_ui.materializations(asset, partitions=days)}
    assert by_partition == dict.fromkeys(days, run["runId"])
    assert {m["partition"] for m in dagster_ui.materializations(asset)} == set(days)


def test_swap_backfill_wrote_exactly_the_orders_created_on_those_days(dagster_ui, backfills):
    days = [date.fromisoformat(d) for d in ui_stack.SWAP_DAYS]
    book = dagster_ui.sandbox.dataset("studio_swap")
    created = {r["order_id"]: datetime.fromtimestamp(r["created_at_ts"], UTC).date() for r in book.truth()}
    expected = {order_id for order_id, day in created.items() if days[0] <= day <= days[-1]}
    assert 0 < len(expected) < len(created)

    got = dagster_ui.query("SELECT order_id FROM swap_orders")
    assert {r[0] for r in got} == expected and len(got) == len(expected)
    assert dagster_ui.query("SELECT count(DISTINCT order_id), count(*) FROM swap_order_sides") == [(len(expected), 2 * len(expected))]


def test_metapic_backfill_wrote_each_day_of_the_range_and_nothing_else(dagster_ui, backfills):
    days = [date.fromisoformat(d) for d in ui_stack.METAPIC_DAYS]
    world = SimpleNamespace(sandbox=dagster_ui.sandbox)  # what the Metapic test helpers read

    got = dict(dagster_ui.query("SELECT date, count(*) FROM metapic_participant_daily_stats GROUP BY date"))
    expected = {day: len(stats_truth(world, day)) for day in days}
    assert got == expected and all(expected.values())


def test_views_are_recreated_by_the_automation_sensor_after_the_backfills(dagster_ui, backfills):
    rebuilt = dagster_ui.memo["views_rebuilt"]

    for view in ui_stack.VIEWS_AFTER_BACKFILL:
        run = dagster_ui.run(rebuilt[view]["runId"])
        assert run["status"] == "SUCCESS"
        tags = _tags(run)
        assert tags.get("dagster/from_automation_condition") == "true", (view, tags)
        assert tags.get("dagster/sensor_name") == "automation_sensor", (view, tags)
    # and they read what the backfill wrote
    assert dagster_ui.query("SELECT count(*) FROM v_fill_rate WHERE source = 'swap'")[0][0] > 0


def test_backfill_materialization_reports_counts_and_business_figures(dagster_ui, backfills):
    (latest,) = dagster_ui.materializations("swap_orders_by_created_day", partitions=ui_stack.SWAP_DAYS[-1:], limit=1)
    run_id = latest["runId"]
    assert run_id == backfills["swap_orders_by_created_day"]["runs"][0]["runId"]
    rows = dagster_ui.query("SELECT count(*) FROM swap_orders")[0][0]
    numbers = _numeric_metadata(dagster_ui, "swap_orders_by_created_day", ui_stack.SWAP_DAYS[-1])
    assert numbers["rows_received"] == numbers["inserted"] == numbers["dagster/row_count"] == rows
    assert numbers["requests"] >= 5 and numbers["retries"] == 0 and numbers["duration_s"] > 0
    assert {"earned_usd", "orders_open", "avg_fill_rate"} <= set(numbers)


METADATA = """
query Metadata($assetKey: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $assetKey) {
    ... on Asset {
      assetMaterializations(partitions: $partitions, limit: 1) {
        metadataEntries {
          label
          ... on IntMetadataEntry { intValue }
          ... on FloatMetadataEntry { floatValue }
        }
      }
    }
  }
}"""


def _numeric_metadata(ui, asset: str, partition: str) -> dict[str, float]:
    """The numeric metadata of a materialization, as the UI's asset page reads (and plots) it."""
    data = ui.graphql(METADATA, {"assetKey": {"path": [asset]}, "partitions": [partition]})
    (event,) = data["assetOrError"]["assetMaterializations"]
    numbers = {}
    for entry in event["metadataEntries"]:
        value = entry.get("intValue", entry.get("floatValue"))
        if value is not None:
            numbers[entry["label"]] = value
    return numbers
