"""Faults, every feed: the warehouse stays exactly right when the APIs misbehave.

- With every kind of fault at a realistic rate, ``sync_all`` completes and the warehouse equals a
  fault-free sync of the same world, row for row, after a full and after an incremental run.
- Retries are bounded: when a request made after others brought data keeps failing (a later page,
  a terminal list, a later batch; every feed), it is tried ``HTTP_MAX_ATTEMPTS`` times, then the
  asset fails naming the endpoint (never a credential) and the warehouse is exactly as the sync
  before left it.
- ``Retry-After`` is honoured, measured on the sandbox's side; without it (the sandbox's default,
  as no API doc promises it) a rate-limit error is retried after the client's own backoff.
- 401/403 fail at once, naming the variables to fix, without a retry storm.
"""

from __future__ import annotations

from collections import Counter

import httpx
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


# case -> (feed, fault kind, requests it hits (``only``), how many of those pass first (``skip``),
# settings of both runs). Each fails a request the run makes after others have brought data: a
# later page of a terminal list, a terminal list, a later page of an open list, the second lead
# batch, a later page of the offers, a participant list after three others. The participant lists
# fail in a run of their asset alone: the offers, a separate asset, commit on their own beside it.
PARTIAL_FAILURES = {
    "cpc-completed-page-2": ("cpc", "503", ["status=completed"], 1, {}),
    "cpc-rejected-timeout": ("cpc", "timeout", ["status=rejected"], 0, {}),
    "cpl-cancelled": ("cpl", "malformed", ["status=cancelled"], 0, {}),
    "swap-accepted-page-2": ("swap", "drop", ["status=accepted"], 1, {"ONLYTRAFFIC_STUDIO_PAGE_SIZE": "20"}),
    "cpamoe-second-batch": ("cpamoe", "error_200", ["/ext/list.json"], 1, {}),
    "metapic-offers-page-2": ("metapic", "429", ["/v2/offers?"], 1, {"METAPIC_PAGE_SIZE": "5"}),
    "metapic-fourth-participant-list": ("metapic", "500", ["/participants?"], 3, {}),
}
FAILING_ASSETS = {"metapic-fourth-participant-list": ["metapic_participants"]}
FEED_TABLES = {"cpc": ["cpc_orders"], "cpl": ["cpl_orders"], "swap": ["swap_orders", "swap_order_sides"],
               "cpamoe": ["cpamoe_leads"], "metapic": ["metapic_offers", "metapic_participants"]}


@pytest.mark.parametrize("case", list(PARTIAL_FAILURES))
def test_retries_are_bounded_then_the_asset_fails_naming_the_endpoint_and_commits_nothing(site, reference, monkeypatch, case):
    """A sync, a day later a sync whose later request keeps failing: it is tried HTTP_MAX_ATTEMPTS
    times, the asset fails naming the endpoint, and the warehouse is exactly as the first sync
    left it although the failed run had fetched changes; the next run brings them."""
    feed, kind, only, skip, settings = PARTIAL_FAILURES[case]
    f = FEEDS[feed]
    site.register_leads()
    site.sync(monkeypatch, assets=list(f.assets), **settings)
    before = site.dump()
    assert all(before[t].rows for t in FEED_TABLES[feed])  # a warehouse with data, not an empty one
    site.advance(days=1)
    site.sandbox.stats.reset()
    timeouts = {"HTTP_TIMEOUT_SECONDS": "1"} if kind == "timeout" else {}
    site.sandbox.set_faults(rate=1.0, kinds=[kind], only=only, skip=skip, slow_seconds=2.5)

    result = site.sync(
        monkeypatch, assets=FAILING_ASSETS.get(case, list(f.assets)), raise_on_error=False,
        HTTP_MAX_ATTEMPTS="3", **{f.concurrency_var: "1"}, **settings, **timeouts,
    )

    assert not result.success
    (message,) = failures(result).values()
    assert f.endpoint.format(base=site.sandbox.base_url) in message
    assert "gave up after 3 attempts" in message
    for secret in site.secrets():
        assert secret not in message
    arrivals = site.sandbox.stats.arrivals_for(f.route)
    faulted = [a for a in arrivals if a.fault]
    assert site.sandbox.faults.injected == {kind: 3}  # the sandbox's own count: one request, 3 tries
    assert [a.fault for a in faulted] == [kind] * 3 and len({a.target for a in faulted}) == 1
    assert arrivals.index(faulted[0]) >= max(skip, 1)  # answers with data came first
    assert_same(site.dump(), before)  # tables, history and cursors as the first sync left them

    site.sandbox.set_faults()
    site.sync(monkeypatch, assets=list(f.assets), **settings)
    after = site.dump()
    assert any(after[t].rows != before[t].rows for t in FEED_TABLES[feed])  # the failed run had changes
    assert_same(after, reference.second, tables=FEED_TABLES[feed])


@pytest.mark.parametrize(
    ("feed", "kind"),
    [("cpc", "429"), ("cpl", "error_200"), ("swap", "429"), ("swap", "error_200"), ("cpamoe", "429"), ("metapic", "429")],
)
def test_retry_after_is_honoured(site, reference, monkeypatch, feed, kind):
    f = FEEDS[feed]
    site.register_leads()
    site.sandbox.set_faults(rate=1.0, kinds=[kind], retry_after=1, retry_after_on=[kind], max_faults=1, only=[f.route])

    site.sync(monkeypatch, assets=list(f.assets), HTTP_BACKOFF_BASE_SECONDS="0", **{f.concurrency_var: "1"})

    arrivals = site.sandbox.stats.arrivals_for(f.route)
    (faulted,) = [i for i, a in enumerate(arrivals) if a.fault]
    retry = next(a for a in arrivals[faulted + 1 :] if a.target == arrivals[faulted].target)
    assert retry.at - arrivals[faulted].at >= 1.0  # measured where the server sees it
    assert retry.fault is None
    assert_same(site.dump(), reference.first, tables=FEED_TABLES[feed])


@pytest.mark.parametrize(
    ("feed", "kind"),
    [("cpc", "error_200"), ("cpl", "429"), ("swap", "error_200"), ("cpamoe", "error_200"), ("metapic", "error_200"),
     ("metapic", "429")],
)
def test_rate_limit_errors_without_retry_after_are_retried_with_our_own_backoff(site, reference, monkeypatch, feed, kind):
    """No API doc promises ``Retry-After``, so the sandbox sends none unless told: a rate-limit
    error without it is retried after the client's own backoff, and the sync is as without faults."""
    f = FEEDS[feed]
    site.register_leads()
    site.sandbox.set_faults(rate=1.0, kinds=[kind], max_faults=1)
    probe = httpx.get(f"{site.sandbox.base_url}/onlytraffic/api/marketer/cpc/orders?status=active", timeout=30)
    assert site.sandbox.faults.injected == {kind: 1} and "retry-after" not in probe.headers
    site.sandbox.stats.reset()
    site.sandbox.set_faults(rate=1.0, kinds=[kind], max_faults=3, only=[f.route], seed=3)

    result = site.sync(monkeypatch, assets=list(f.assets), HTTP_BACKOFF_BASE_SECONDS="0.2", **{f.concurrency_var: "1"})

    assert result.success
    arrivals = site.sandbox.stats.arrivals_for(f.route)
    faulted = [i for i, a in enumerate(arrivals) if a.fault]
    assert site.sandbox.faults.injected == {kind: 3} and len(faulted) == 3
    if feed != "cpamoe":  # list.json requests differ by their body only
        for i in faulted:  # each faulted request asked again, and answered
            assert any(a.target == arrivals[i].target and not a.fault for a in arrivals[i + 1 :])
    # each fault the sandbox injected was noticed and retried, none taken for data
    assert site.scalar("SELECT sum(retries) FROM sync_runs") == sum(site.sandbox.faults.injected.values())
    assert_same(site.dump(), reference.first, tables=FEED_TABLES[feed])


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
