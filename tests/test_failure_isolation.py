"""One API failing does not take the others down (README, "Each feed is its own step").

``affwh run`` in a process of its own, as ``make run`` runs it, against the test's sandbox with
one credential wrong: every other table commits and its checks pass, the views are rebuilt and
not marked failed, the run fails naming the feed and the variable to fix, in a few lines. And a
feed whose transient errors outlive the HTTP layer's retries is retried by its Dagster
RetryPolicy.
"""

from __future__ import annotations

import dagster as dg
import pytest
from reliability_fixtures import Site
from warehouse_compare import assert_same, integrity_problems

CLI = ["run"]
OTHER_FEEDS = ["cpc_orders", "cpl_orders", "cpamoe_lead_files", "cpamoe_leads", "metapic_offers", "metapic_participants"]


def _events(instance: dg.DagsterInstance, run_id: str, kind: dg.DagsterEventType) -> list:
    return [r.event_log_entry for r in instance.get_records_for_run(run_id, of_type=kind).records]


@pytest.mark.slow
def test_a_wrong_key_fails_only_its_feed_and_make_run_says_so_in_a_few_lines(site: Site, reference):
    site.register_leads()
    site.api("metapic").rate_limit = 100_000

    run = site.run_cli(*CLI, name="wrong-key", ONLYTRAFFIC_STUDIO_API_KEY="wrong-studio-key-77")

    assert run.returncode != 0
    output = run.output
    failure_lines = [line for line in output.splitlines() if "FAILED" in line or "Traceback" in line or "  File " in line]
    assert 1 <= len(failure_lines) <= 5, output[-3000:]
    final = [line for line in failure_lines if line.startswith("FAILED ")]
    assert final == [line for line in final if line.startswith("FAILED swap_orders: AuthError: ")] and len(final) == 1
    assert "ONLYTRAFFIC_STUDIO_API_KEY" in final[0]
    assert "Traceback" not in output and "wrong-studio-key-77" not in output
    assert "the views rebuilt" in output
    assert len(output.splitlines()) < 40, output  # progress lines, the failure, nothing more

    # every other table committed, as an uninterrupted sync would have it
    assert_same(site.dump(), reference.first,
                tables=["cpc_orders", "cpl_orders", "cpamoe_leads", "metapic_offers", "metapic_participants"])
    assert site.scalar("SELECT count(*) FROM swap_orders") == 0
    assert not integrity_problems(site.warehouse_path)

    with dg.DagsterInstance.from_config(str(site.dagster_home)) as instance:
        records = instance.get_run_records()
        sync = [r.dagster_run for r in records if r.dagster_run.job_name == "sync_all" and r.dagster_run.asset_selection is None]
        (failed,) = [r for r in sync if r.status == dg.DagsterRunStatus.FAILURE]
        materialized = {e.dagster_event.asset_key.to_user_string()
                        for e in _events(instance, failed.run_id, dg.DagsterEventType.ASSET_MATERIALIZATION)}
        assert set(OTHER_FEEDS) <= materialized and "swap_orders" not in materialized
        checks = _events(instance, failed.run_id, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        by_asset: dict[str, list[bool]] = {}
        for entry in checks:
            data = entry.dagster_event.event_specific_data
            by_asset.setdefault(data.asset_key.to_user_string(), []).append(data.passed)
        for feed in ("cpc_orders", "cpl_orders", "cpamoe_leads", "metapic_offers", "metapic_participants"):
            assert by_asset.get(feed) and all(by_asset[feed]), (feed, by_asset.get(feed))

        # the views: their latest materialization is newer than the failed run's commits, by a
        # run that succeeded
        views = [k for k in instance.get_asset_keys() if k.to_user_string().startswith("v_")]
        assert len(views) >= 7
        failed_end = max(e.timestamp for e in _events(instance, failed.run_id, dg.DagsterEventType.ASSET_MATERIALIZATION))
        for view in views:
            latest = instance.get_latest_materialization_event(view)
            assert latest is not None and latest.timestamp > failed_end, view
            assert instance.get_run_by_id(latest.run_id).status == dg.DagsterRunStatus.SUCCESS, view


@pytest.mark.slow
def test_a_feed_step_whose_requests_keep_failing_is_retried_by_its_retry_policy(site: Site):
    """Every attempt of the HTTP layer fails for the first step attempt of cpc_orders only (2
    attempts, then the faults run out): Dagster retries the step, which then commits."""
    site.register_leads()
    site.api("metapic").rate_limit = 100_000
    site.sandbox.set_faults(rate=1.0, kinds=["503"], only=["/cpc/orders"], max_faults=2, retry_after=0)

    run = site.run_cli(*CLI, name="retried", HTTP_MAX_ATTEMPTS="2", FEED_STEP_RETRIES="1",
                       FEED_STEP_RETRY_DELAY_SECONDS="1")

    assert run.returncode == 0, run.output[-3000:]
    assert site.sandbox.faults.injected == {"503": 2}
    assert site.scalar("SELECT count(*) FROM cpc_orders") > 0
    with dg.DagsterInstance.from_config(str(site.dagster_home)) as instance:
        (record,) = [r for r in instance.get_run_records() if r.dagster_run.job_name == "sync_all"]
        retried = _events(instance, record.dagster_run.run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
        assert [e.step_key for e in retried] == ["cpc_orders"]
