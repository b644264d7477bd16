"""Metapic offers, participants and daily stats end to end: sandbox over HTTP -> DuckDB tables."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import dagster as dg
import httpx
import pytest

from models.status import STATUS_MAPPINGS
from pipelines.sources.http import ApiError, AuthError
from pipelines.sources.metapic import metapic_envelope

PAGE_SIZE = 4
SYNC = ["metapic_offers", "metapic_participants"]
STATS_JOB = "metapic_participant_daily_stats_job"
DAY = "2026-01-10"


@pytest.fixture
def mworld(world):
    """The shared sandbox world with Metapic pages of 4 records, so every list spans pages."""
    world.monkeypatch.setenv("METAPIC_PAGE_SIZE", str(PAGE_SIZE))
    return world


def api(world):
    return next(m for m in world.sandbox.modules if m.name == "metapic")


def campaigns(world):
    return world.sandbox.dataset("metapic")


def email_key(address: str) -> str:
    return "email:" + hashlib.sha256(address.strip().lower().encode()).hexdigest()


def expected_key(record: dict) -> str | None:
    """The documented participant_key, re-derived independently of the SQL that computes it: the
    pre-registered identifier or e-mail while the record carries one (it survives a sign-up), else
    id, else user_id, else display_name."""
    if record.get("pre_registered_identifier"):
        value = record["pre_registered_identifier"]
        return email_key(value) if "@" in value else f"pre:{value}"
    if record.get("pre_registered_email"):
        return email_key(record["pre_registered_email"])
    if record.get("id") is not None:
        return f"id:{record['id']}"
    if record.get("user_id") is not None:
        return f"user:{record['user_id']}"
    if record.get("display_name"):
        value = record["display_name"]
        return email_key(value) if "@" in value else f"pre:{value}"
    return None


def expected_cpc(offer: dict) -> Decimal:
    costs = offer["traffic_sources_costs"]
    general = next((c for c in costs if c["source"] == 0), costs[0])
    if "cpc_v2" in general:
        return Decimal(general["cpc_v2"]["amount"])
    return Decimal(general["cpc"]) / 100


def participants_truth(world) -> dict[tuple[int, str], dict]:
    return {
        (p["offer_id"], expected_key(p)): p
        for p in campaigns(world).participants_truth()
        if expected_key(p) is not None
    }


def assert_matches_truth(world) -> None:
    offers = {o["id"]: o for o in campaigns(world).truth()}
    rows = {
        r[0]: r
        for r in world.query(
            "SELECT offer_id, campaign_title, store_id, store_name, currency, type, token, "
            "has_product_seeding, has_onetime_payment, cpc, cpa, source_status, CAST(status AS VARCHAR), "
            "valid_from, valid_until FROM metapic_offers"
        )
    }
    assert set(rows) == set(offers)
    for offer_id, o in offers.items():
        general = next(c for c in o["traffic_sources_costs"] if c["source"] == 0)
        assert rows[offer_id][1:] == (
            o["campaign_title"], o["store_id"], o["store_name"], o["currency"], o["type"], o["token"],
            o["has_product_seeding"], o["has_onetime_payment"], expected_cpc(o), Decimal(str(general["cpa"])),
            o["status"], STATUS_MAPPINGS["metapic_offer"][o["status"]].value,
            datetime.fromisoformat(o["valid_from"]).replace(tzinfo=UTC),
            datetime.fromisoformat(o["valid_until"]).replace(tzinfo=UTC),
        ), offer_id

    truth = participants_truth(world)
    got = {
        (r[0], r[1]): r
        for r in world.query(
            "SELECT offer_id, participant_key, participant_id, user_id, display_name, clicks, "
            "payment_amount, source_status, CAST(status AS VARCHAR) FROM metapic_participants"
        )
    }
    assert set(got) == set(truth)
    for key, p in truth.items():
        display = p["display_name"] if p["display_name"] and "@" not in p["display_name"] else None
        payment = Decimal(p["payment_amount"]) if p["payment_amount"] is not None else None
        assert got[key][2:] == (
            p["id"], p["user_id"], display, p["clicks"], payment,
            p["status"], STATUS_MAPPINGS["metapic_participant"][p["status"]].value,
        ), key


def assert_no_email_stored(world) -> None:
    for table in ("metapic_offers", "metapic_participants", "metapic_participant_daily_stats",
                  "quarantine", "status_history", "sync_runs", "sync_state"):
        assert not world.query(f"SELECT 1 FROM {table} AS t WHERE CAST(t AS VARCHAR) LIKE '%@%'"), table


def requests_for(world, offer_id: int, kind: str = "participants") -> int:
    return world.sandbox.stats.snapshot()["requests"].get(f"metapic/offers/{offer_id}/{kind}", 0)


def run_daily_stats(world, first: str, last: str | None = None) -> dg.ExecuteInProcessResult:
    from pipelines.definitions import build_defs

    world.apply_env()
    job = build_defs().resolve_job_def(STATS_JOB)
    if last is None:
        return job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), partition_key=first)
    tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
    return job.execute_in_process(instance=dg.DagsterInstance.ephemeral(), tags=tags)


# -- full sync -------------------------------------------------------------------------------------


def test_full_sync_matches_sandbox_truth_across_pages(mworld):
    # no doc shows a participant with nothing to key it by: the sandbox has some only when asked
    assert all(expected_key(p) for p in campaigns(mworld).participants_truth())
    assert campaigns(mworld).set_keyless(every=40)
    mworld.sync(assets=SYNC)

    assert_matches_truth(mworld)
    statuses = {r[0] for r in mworld.query("SELECT DISTINCT source_status FROM metapic_offers")}
    assert statuses == {"scheduled", "active", "paused", "ended", "deleted"}

    # every status was asked for explicitly, in pages of 4 (12 offers: 3 pages)
    stats = mworld.sandbox.stats.snapshot()
    truth = campaigns(mworld).truth()
    assert stats["records"]["metapic/offers|active,deleted,ended,paused,scheduled"] == len(truth)
    assert stats["requests"]["metapic/offers"] == math.ceil(len(truth) / PAGE_SIZE)
    assert any(len(campaigns(mworld).joined(o)) > PAGE_SIZE for o in campaigns(mworld).offers)

    # cpc in currency units: the "General" source's cpc_v2, or its minor-unit cpc / 100
    legacy = [o for o in truth if "cpc_v2" not in next(c for c in o["traffic_sources_costs"] if c["source"] == 0)]
    assert legacy, "the sandbox should have offers without cpc_v2"
    for o in legacy:
        general = next(c for c in o["traffic_sources_costs"] if c["source"] == 0)
        assert mworld.scalar("SELECT cpc FROM metapic_offers WHERE offer_id = ?", [o["id"]]) == Decimal(general["cpc"]) / 100

    # participants without an id are keyed stably: by user, identifier, or a hash of the e-mail
    kinds = {r[0] for r in mworld.query("SELECT DISTINCT split_part(participant_key, ':', 1) FROM metapic_participants")}
    assert kinds == {"id", "user", "pre", "email"}
    assert_no_email_stored(mworld)

    # a participant with nothing to key it by is quarantined, not dropped silently nor crashed on
    keyless = [p for p in campaigns(mworld).participants_truth() if expected_key(p) is None]
    assert keyless
    assert mworld.scalar("SELECT count(*) FROM quarantine WHERE stream = 'metapic_participants'") == len(keyless)

    # raw keeps fields we do not model; one open history interval per offer and participant
    raw = mworld.scalar("SELECT raw FROM metapic_offers ORDER BY offer_id LIMIT 1")
    assert '"campaign_text"' in raw and '"traffic_sources_costs"' in raw
    assert mworld.scalar("SELECT count(*) FROM status_history WHERE source = 'metapic_offer'") == len(truth)
    assert mworld.scalar("SELECT count(*) FROM status_history WHERE source = 'metapic_participant'") == len(
        participants_truth(mworld)
    )
    assert mworld.scalar("SELECT count(*) FROM status_history WHERE valid_to IS NOT NULL") == 0


def test_sandbox_requires_created_by_and_lists_only_active_by_default(mworld):
    env = mworld.sandbox.env()
    headers = {"Authorization": env["METAPIC_ACCESS_TOKEN"]}
    base = env["METAPIC_BASE_URL"] + "/v2/offers"
    with httpx.Client(headers=headers) as http:
        missing = http.get(base)
        assert missing.status_code == 422
        assert "created_by" in missing.json()["errors"]

        default = http.get(base, params={"created_by": env["METAPIC_USER_ID"], "size": 100}).json()
        assert {o["status"] for o in default["data"]} == {"active"}
        assert default["meta"]["total"] < len(campaigns(mworld).truth())

        # the docs' example requests send filters as a JSON body: accepted too
        body = {"created_by": int(env["METAPIC_USER_ID"]), "statuses": ["ended"], "size": 100}
        ended = http.request("GET", base, json=body).json()
        assert ended["data"] and {o["status"] for o in ended["data"]} == {"ended"}

        assert httpx.get(base).json() == {"message": "Unauthenticated."}

    # and the pipeline's own requests carried created_by and every status
    mworld.sandbox.stats.reset()
    mworld.sync(assets=["metapic_offers"])
    listed = [q for q in mworld.sandbox.stats.recent if q.startswith("metapic/offers?")]
    assert listed and all(f"created_by={env['METAPIC_USER_ID']}" in q for q in listed)
    assert all(q.count("statuses%5B%5D=") == 5 for q in listed)


def test_envelope_turns_laravel_errors_into_api_errors():
    metapic_envelope({"data": [], "meta": {}}, 200)
    with pytest.raises(AuthError):
        metapic_envelope({"message": "Unauthenticated."}, 200)
    with pytest.raises(ApiError, match="created_by") as err:
        metapic_envelope({"message": "The created by field is required.", "errors": {"created_by": ["required"]}}, 200)
    assert not err.value.retryable
    with pytest.raises(ApiError) as err:
        metapic_envelope({"message": "Too Many Attempts."}, 200)  # never an empty page
    assert err.value.retryable
    with pytest.raises(ApiError):
        metapic_envelope([], 200)


# -- incremental behaviour -------------------------------------------------------------------------


def test_second_run_adds_nothing_and_skips_finished_offers(mworld):
    mworld.sync(assets=SYNC)
    tables = ("metapic_offers", "metapic_participants", "status_history", "quarantine")
    before = {t: mworld.query(f"SELECT * EXCLUDE (run_id) FROM {t} ORDER BY ALL") for t in tables}
    terminal = [r[0] for r in mworld.query("SELECT offer_id FROM metapic_offers WHERE source_status IN ('ended', 'deleted')")]
    assert terminal and mworld.scalar("SELECT count(*) FROM metapic_offers WHERE participants_final_read_at IS NULL AND source_status IN ('ended', 'deleted')") == 0
    mworld.sandbox.stats.reset()

    mworld.sync(assets=SYNC)

    for table, rows in before.items():
        assert mworld.query(f"SELECT * EXCLUDE (run_id) FROM {table} ORDER BY ALL") == rows, table
    for stream in SYNC:
        inserted, updated = mworld.query(
            "SELECT inserted, updated FROM sync_runs WHERE stream = ? ORDER BY finished_at DESC LIMIT 1", [stream]
        )[0]
        assert (inserted, updated) == (0, 0), stream
    # participants of offers already read after they ended are not requested again
    assert all(requests_for(mworld, o) == 0 for o in terminal)
    open_offers = mworld.query("SELECT offer_id FROM metapic_offers WHERE source_status NOT IN ('ended', 'deleted')")
    assert all(requests_for(mworld, o) >= 1 for (o,) in open_offers)


def test_advancing_time_updates_rows_history_and_reads_ended_offers_once_more(mworld):
    mworld.sync(assets=SYNC)
    first_offers = dict(mworld.query("SELECT offer_id, source_status FROM metapic_offers"))
    first_participants = {(o, k): s for o, k, s in mworld.query("SELECT offer_id, participant_key, source_status FROM metapic_participants")}
    mworld.sandbox.stats.reset()

    mworld.advance(days=2)
    mworld.sync(assets=SYNC)

    assert_matches_truth(mworld)
    now = mworld.scalar("SELECT max(last_synced_at) FROM sync_state")
    offers = {o["id"]: o for o in campaigns(mworld).truth()}
    changed = {k for k, o in offers.items() if k in first_offers and first_offers[k] != o["status"]}
    newly_terminal = {k for k in changed if offers[k]["status"] in ("ended", "deleted")}
    assert newly_terminal, "some campaigns should end within two days"
    for offer_id in changed:
        rows = mworld.query(
            "SELECT source_status, valid_from, valid_to FROM status_history "
            "WHERE source = 'metapic_offer' AND entity_id = ? ORDER BY valid_from",
            [str(offer_id)],
        )
        assert [r[0] for r in rows] == [first_offers[offer_id], offers[offer_id]["status"]]
        assert rows[0][2] == now and rows[1][1] == now and rows[1][2] is None
    truth = participants_truth(mworld)
    moved = {k for k, p in truth.items() if k in first_participants and first_participants[k] != p["status"]}
    assert moved, "some participants should have moved on"
    expected_history = len(first_participants) + len(moved) + len(set(truth) - set(first_participants))
    assert mworld.scalar("SELECT count(*) FROM status_history WHERE source = 'metapic_participant'") == expected_history

    # offers that ended since the last run: their participants were read once more (every page);
    # offers that had ended before: not at all
    for offer_id, offer in offers.items():
        joined = len(campaigns(mworld).joined(campaigns(mworld).by_id[offer_id]))
        if offer_id in newly_terminal:
            assert requests_for(mworld, offer_id) == max(1, math.ceil(joined / PAGE_SIZE)), offer_id
        elif first_offers.get(offer_id) in ("ended", "deleted"):
            assert requests_for(mworld, offer_id) == 0, offer_id

    # ... and never again
    mworld.sandbox.stats.reset()
    mworld.advance(hours=6)
    mworld.sync(assets=SYNC)
    terminal = [o for o, s in mworld.query("SELECT offer_id, source_status FROM metapic_offers") if s in ("ended", "deleted")]
    finished_before = [o for o in terminal if o in newly_terminal or first_offers.get(o) in ("ended", "deleted")]
    assert finished_before and all(requests_for(mworld, o) == 0 for o in finished_before)
    assert_matches_truth(mworld)


def test_unknown_participant_status_is_kept_and_the_check_names_it(mworld):
    offer = next(o for o in campaigns(mworld).offers if o.participants and o.participants[0].id is not None)
    offer.participants[0].forced_status = "waitlisted"

    result = mworld.sync(assets=SYNC)

    key = f"id:{offer.participants[0].id}"
    row = mworld.query(
        "SELECT source_status, status FROM metapic_participants WHERE offer_id = ? AND participant_key = ?",
        [offer.id, key],
    )
    assert row == [("waitlisted", None)]
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["metapic_participants_known_statuses"].passed
    assert "waitlisted" in checks["metapic_participants_known_statuses"].description
    assert checks["metapic_offers_known_statuses"].passed


# -- failures --------------------------------------------------------------------------------------


def test_error_in_http_200_body_is_retried_not_loaded_as_empty(mworld):
    mworld.sandbox.set_faults(rate=1.0, kinds=["error_200"], max_faults=3, retry_after=0)

    mworld.sync(assets=SYNC)

    assert mworld.sandbox.faults.injected == {"error_200": 3}
    assert_matches_truth(mworld)
    assert mworld.scalar("SELECT sum(retries) FROM sync_runs") == 3


def test_failed_participant_read_commits_nothing_and_next_run_catches_up(mworld):
    mworld.sync(assets=["metapic_offers"])
    ended = mworld.scalar("SELECT min(offer_id) FROM metapic_offers WHERE source_status = 'ended'")
    mworld.sandbox.set_faults(rate=1.0, kinds=["500"], only=[f"/v2/offers/{ended}/participants"], retry_after=0)

    result = mworld.sync(assets=["metapic_participants"], raise_on_error=False)

    assert not result.success
    assert mworld.scalar("SELECT count(*) FROM metapic_participants") == 0
    assert mworld.scalar("SELECT count(*) FROM metapic_offers WHERE participants_final_read_at IS NOT NULL") == 0
    message = result.failure_data_for_node("metapic_participants").error.to_string()
    assert "gave up after" in message and mworld.sandbox.env()["METAPIC_ACCESS_TOKEN"] not in message

    mworld.sandbox.set_faults(rate=0)
    mworld.sync(assets=["metapic_participants"])
    assert_matches_truth(mworld)
    assert mworld.scalar("SELECT participants_final_read_at IS NOT NULL FROM metapic_offers WHERE offer_id = ?", [ended])


def test_wrong_token_fails_at_once_naming_the_variable(mworld):
    mworld.monkeypatch.setattr(mworld, "env", lambda: {**type(mworld).env(mworld), "METAPIC_ACCESS_TOKEN": "wrong-token-123"})

    result = mworld.sync(assets=["metapic_offers"], raise_on_error=False)

    assert not result.success
    message = result.failure_data_for_node("metapic_offers").error.to_string()
    assert "METAPIC_ACCESS_TOKEN" in message and "wrong-token-123" not in message
    assert mworld.sandbox.stats.snapshot()["requests"]["metapic/offers"] == 1


# -- rate limit ------------------------------------------------------------------------------------


def test_sync_never_exceeds_the_rate_limit_window(mworld):
    from pipelines.defs.metapic.assets import metapic_offers, metapic_participants
    from pipelines.definitions import build_resources
    from pipelines.defs.metapic.resources import MetapicResource

    metapic_api = api(mworld)
    limit, window = 12, 1.5
    metapic_api.rate_limit, metapic_api.rate_window = limit, window
    metapic_api.limiter.reset()
    env = mworld.sandbox.env()
    resources = {
        **build_resources(),
        "metapic": MetapicResource(
            base_url=env["METAPIC_BASE_URL"],
            access_token=env["METAPIC_ACCESS_TOKEN"],
            user_id=env["METAPIC_USER_ID"],
            page_size=2,
            max_concurrency=4,
            rate_limit=limit,
            rate_window_seconds=window,
        ),
    }

    result = dg.materialize(
        [metapic_offers, metapic_participants], resources=resources,
        instance=dg.DagsterInstance.ephemeral(),
    )

    assert result.success
    served = mworld.sandbox.stats.snapshot()["total_requests"]
    assert served > 2 * limit, "the sync should need several windows"
    assert metapic_api.limiter.rejected == 0  # not a single 429
    assert metapic_api.limiter.max_hits <= limit
    assert mworld.scalar("SELECT sum(retries) FROM sync_runs") == 0
    assert_matches_truth(mworld)


# -- daily stats -----------------------------------------------------------------------------------


def live_on(world, day: date) -> list[int]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return sorted(
        o.id for o in campaigns(world).offers
        if o.created <= world.sandbox.world.now and o.valid_from < start + timedelta(days=1) and o.valid_until >= start
    )


def stats_truth(world, day: date) -> dict[tuple[int, str], dict]:
    return {
        (offer_id, expected_key(s)): s
        for offer_id in live_on(world, day)
        for s in campaigns(world).stats_truth(offer_id, day)
        if expected_key(s) is not None
    }


def test_daily_stats_partition_loads_exactly_that_day_and_rerun_adds_nothing(mworld):
    mworld.sync(assets=["metapic_offers"])
    day = date.fromisoformat(DAY)

    run_daily_stats(mworld, DAY)

    truth = stats_truth(mworld, day)
    rows = {
        (r[0], r[1]): r
        for r in mworld.query(
            "SELECT offer_id, participant_key, date, participant_id, user_id, clicks, links_created, "
            "estimated_gp, source_status, CAST(status AS VARCHAR) FROM metapic_participant_daily_stats"
        )
    }
    assert set(rows) == set(truth) and truth
    assert sum(s["clicks"] for s in truth.values()) > 0
    for key, s in truth.items():
        gp = Decimal(str(s["estimated_gp"])) if s["estimated_gp"] is not None else None
        assert rows[key][2:] == (
            day, s["id"], s["user_id"], s["clicks"], s["links_created"], gp,
            s["status"], STATUS_MAPPINGS["metapic_participant"][s["status"]].value,
        ), key
    # one call per live offer and day (pages of 4), none for offers not live that day
    for offer in campaigns(mworld).offers:
        expected = len(campaigns(mworld).stats_truth(offer.id, day)) if offer.id in live_on(mworld, day) else None
        calls = requests_for(mworld, offer.id, "participants-stats")
        assert calls == (max(1, math.ceil(expected / PAGE_SIZE)) if expected is not None else 0), offer.id
    assert all(f"start_date={DAY}&end_date={DAY}" in q for q in mworld.sandbox.stats.recent if "participants-stats" in q)
    assert_no_email_stored(mworld)

    before = mworld.query("SELECT * FROM metapic_participant_daily_stats ORDER BY ALL")
    run_daily_stats(mworld, DAY)
    assert mworld.query("SELECT * FROM metapic_participant_daily_stats ORDER BY ALL") == before
    assert mworld.query(
        "SELECT inserted, updated FROM sync_runs WHERE stream = ? ORDER BY finished_at DESC LIMIT 1",
        [f"metapic_participant_daily_stats:{DAY}"],
    ) == [(0, 0)]

    # a participant the API no longer reports for that day disappears from that day, nothing else
    offer = next(o for o in campaigns(mworld).offers if o.id in live_on(mworld, day) and o.participants[0].id)
    gone = offer.participants.pop(0)
    run_daily_stats(mworld, DAY)
    after = mworld.query("SELECT * FROM metapic_participant_daily_stats ORDER BY ALL")
    assert [r for r in before if (r[0], r[1]) != (offer.id, f"id:{gone.id}")] == after
    assert len(after) == len(before) - 1


def test_daily_stats_range_backfills_in_one_run(mworld):
    mworld.sync(assets=["metapic_offers"])

    result = run_daily_stats(mworld, "2026-01-08", "2026-01-10")

    assert result.success
    days = [date(2026, 1, 8), date(2026, 1, 9), date(2026, 1, 10)]
    got = dict(mworld.query("SELECT date, count(*) FROM metapic_participant_daily_stats GROUP BY date"))
    assert got == {d: len(stats_truth(mworld, d)) for d in days}
    runs = mworld.query("SELECT DISTINCT run_id FROM sync_runs WHERE stream LIKE 'metapic_participant_daily_stats:%'")
    assert len(runs) == 1


def test_daily_stats_skip_offers_already_deleted_or_ended_before_the_day(mworld):
    mworld.sync(assets=["metapic_offers"])  # observes the deleted offers at the anchor (Jan 15, 12:00)
    mworld.advance(days=2)
    day = date(2026, 1, 16)
    deleted = [o for o in campaigns(mworld).offers if o.deleted_at and o.deleted_at < mworld.sandbox.world.anchor]
    assert deleted and all(o.id in live_on(mworld, day) for o in deleted), "valid dates alone would include them"
    mworld.sandbox.stats.reset()

    run_daily_stats(mworld, day.isoformat())

    assert all(requests_for(mworld, o.id, "participants-stats") == 0 for o in deleted)
    requested = {o.id for o in campaigns(mworld).offers if requests_for(mworld, o.id, "participants-stats")}
    known = {o.id for o in campaigns(mworld).offers if o.created <= mworld.sandbox.world.anchor}
    assert requested == (set(live_on(mworld, day)) & known) - {o.id for o in deleted}


def test_an_error_names_the_endpoint_whole_when_the_user_id_is_part_of_it(mworld):
    """Only secret credentials are redacted: the user id (sent as ``created_by``) is no secret, and
    hiding its digits would mangle the endpoint an error names wherever they recur (here the port;
    it once made a failure message read ``http://127.0.0.1:***1/...``). The token stays hidden."""
    from pipelines.defs.metapic.resources import MetapicResource

    env = mworld.sandbox.env()
    port = env["METAPIC_BASE_URL"].split(":")[2].split("/")[0]
    token = "wrong-token-" + port
    client = MetapicResource(base_url=env["METAPIC_BASE_URL"], access_token=token, user_id=port,
                             max_concurrency=1).client()
    with pytest.raises(AuthError) as failed:
        client.get("/v2/offers", params={"created_by": port})
    message = str(failed.value)
    assert f"{env['METAPIC_BASE_URL']}/v2/offers" in message, message
    assert token not in message
