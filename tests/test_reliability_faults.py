"""Faults, every feed: the warehouse stays exactly right when the APIs misbehave.

- With every kind of fault at a realistic rate, ``sync_all`` completes and the warehouse equals a
  fault-free sync of the same world, row for row, after a full and after an incremental run.
- Retries are bounded: with every request failing, each is tried ``HTTP_MAX_ATTEMPTS`` times,
  then the asset fails naming the endpoint (never a credential) and commits nothing.
- ``Retry-After`` is honoured, measured on the sandbox's side.
- 401/403 fail at once, naming the variables to fix, without a retry storm.
"""

from __future__ import annotations

from collections import Counter

import pytest
from reliability_fixtures import FEEDS, REALISTIC_ENV, REALISTIC_FAULTS
from warehouse_compare import assert_same

from pipelines.sandbox.faults import ALL_KINDS

assert set(REALISTIC_FAULTS["kinds"]) == set(ALL_KINDS)


def failures(result) -> dict[str, str]:
    """Failed step -> the error's full text (message, cause, stack), as the run records it."""
    return {e.step_key: e.step_failure_data.error.to_string() for e in result.all_events if e.is_step_failure}


def retries_recorded(site, since_runs: set[str]) -> int:
    rows = site.query("SELECT run_id, retries FROM sync_runs")
    return sum(r for run, r in rows if run not in since_runs)


def test_sync_under_faults_equals_a_fault_free_sync(site, reference, monkeypatch):
    site.register_leads()
    kinds: Counter = Counter()
    for step, expected in enumerate((reference.first, reference.second)):
        if step:
            site.advance(days=1)
        runs_before = {r[0] for r in site.query("SELECT run_id FROM sync_runs")} if step else set()
        site.sandbox.set_faults(**REALISTIC_FAULTS, seed=11 + step)

        result = site.sync(monkeypatch, **REALISTIC_ENV)

        assert result.success
        injected = site.sandbox.faults.injected
        kinds.update(injected)
        # every fault was noticed and retried (none was read as data, none as an empty page)
        assert retries_recorded(site, runs_before) == sum(injected.values()) > 0
        assert_same(site.dump(), expected)
    assert sum(kinds.values()) >= 15 and len(kinds) >= 6, kinds


@pytest.mark.parametrize(
    ("feed", "kind"),
    [("cpc", "503"), ("cpc", "timeout"), ("cpl", "malformed"), ("swap", "drop"), ("cpamoe", "error_200"), ("metapic", "429")],
)
def test_retries_are_bounded_then_the_asset_fails_naming_the_endpoint_and_commits_nothing(site, monkeypatch, feed, kind):
    f = FEEDS[feed]
    site.register_leads()
    site.sync(monkeypatch, assets=list(f.assets))
    site.advance(days=1)
    before = site.dump()
    site.sandbox.stats.reset()
    site.sandbox.set_faults(rate=1.0, kinds=[kind], retry_after=0, slow_seconds=1.0)

    result = site.sync(
        monkeypatch, assets=list(f.assets), raise_on_error=False,
        HTTP_MAX_ATTEMPTS="3", HTTP_TIMEOUT_SECONDS="0.5", **{f.concurrency_var: "1"},
    )

    assert not result.success
    (message,) = failures(result).values()
    assert f.endpoint.format(base=site.sandbox.base_url) in message
    assert "gave up after 3 attempts" in message
    for secret in site.secrets():
        assert secret not in message
    arrivals = site.sandbox.stats.arrivals_for(f.route)
    assert {a.fault for a in arrivals} == {kind}  # nothing got through
    assert list(Counter(a.target for a in arrivals).values()) == [3]  # one request, tried 3 times
    assert_same(site.dump(), before)  # tables, history and cursors untouched


@pytest.mark.parametrize(
    ("feed", "kind"),
    [("cpc", "429"), ("cpl", "error_200"), ("swap", "429"), ("swap", "error_200"), ("cpamoe", "429"), ("metapic", "429")],
)
def test_retry_after_is_honoured(site, reference, monkeypatch, feed, kind):
    f = FEEDS[feed]
    site.register_leads()
    site.sandbox.set_faults(rate=1.0, kinds=[kind], retry_after=1, max_faults=1, only=[f.route])

    site.sync(monkeypatch, assets=list(f.assets), HTTP_BACKOFF_BASE_SECONDS="0", **{f.concurrency_var: "1"})

    arrivals = site.sandbox.stats.arrivals_for(f.route)
    (faulted,) = [i for i, a in enumerate(arrivals) if a.fault]
    retry = next(a for a in arrivals[faulted + 1 :] if a.target == arrivals[faulted].target)
    assert retry.at - arrivals[faulted].at >= 1.0  # measured where the server sees it
    assert retry.fault is None
    tables = {"cpc": ["cpc_orders"], "cpl": ["cpl_orders"], "swap": ["swap_orders", "swap_order_sides"],
              "cpamoe": ["cpamoe_leads"], "metapic": ["metapic_offers", "metapic_participants"]}[feed]
    assert_same(site.dump(), reference.first, tables=tables)


# 401 and 403 injected for every feed; a real wrong key where test_cpamoe.py / test_metapic.py
# do not already send one.
REJECTIONS = [(feed, kind) for kind in ("auth", "403") for feed in FEEDS] + [
    ("cpc", "wrong_key"), ("cpl", "wrong_key"), ("swap", "wrong_key")
]


@pytest.mark.parametrize(("feed", "kind"), REJECTIONS)
def test_rejected_credentials_fail_at_once_naming_the_variables(site, monkeypatch, feed, kind):
    f = FEEDS[feed]
    site.register_leads()
    overrides = {f.concurrency_var: "2"}
    if kind == "wrong_key":
        overrides[f.credential_vars[-1]] = "wrong-key-0d1e"
    else:
        site.sandbox.set_faults(rate=1.0, kinds=[kind])

    result = site.sync(monkeypatch, assets=list(f.assets), raise_on_error=False, **overrides)

    assert not result.success
    (message,) = failures(result).values()
    assert " or ".join(f.credential_vars) in message
    assert "gave up" not in message
    for secret in [*site.secrets(), "wrong-key-0d1e"]:
        assert secret not in message
    arrivals = site.sandbox.stats.arrivals_for(f.route)
    assert 1 <= len(arrivals) <= 2  # at most one request per worker (2 here), none retried
    if feed != "cpamoe":  # list.json requests differ by their body only
        assert len({a.target for a in arrivals}) == len(arrivals)
    assert site.scalar("SELECT count(*) FROM sync_state WHERE stream NOT LIKE 'cpamoe_lead_files%'") == 0
