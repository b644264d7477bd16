"""Metapic participants as one entity each, over real HTTP against the sandbox (issues 12 and 16):

- a pre-registered participant who signs up (gains ``id`` and ``user_id``, keeps serving its
  pre-registered identifier or e-mail) stays one row and one history entity; a participant no
  longer listed by a complete read leaves the table with its current interval closed; clicks count
  once in ``v_earnings``;
- an incomplete read of a list (a page lie, a list whose total moves, a failing page) removes
  nothing; the next complete read does;
- an offer whose participants were read after it became terminal is never asked for them again,
  whatever terminal status it moves to;
- rows an earlier version keyed ``id:``/``user:`` are re-keyed on upgrade, never duplicated;
- lists that change while they are read lose nothing: after churn-on syncs, a churn-off sync
  leaves the warehouse equal to the sandbox's truth.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from datetime import datetime, timedelta
from decimal import Decimal

import duckdb
import pytest
from test_metapic import api, assert_matches_truth, campaigns, expected_cpc, expected_key, run_daily_stats
from warehouse_compare import integrity_problems

PAGE_SIZE = 3
SYNC = ["metapic_offers", "metapic_participants"]
VIEWS = ["v_earnings", "v_fill_rate", "v_summary"]
HISTORY_CHECK = "status_history_metapic_participant_intervals"


@pytest.fixture
def pworld(world):
    """The shared sandbox world with Metapic pages of 3 records, so most lists span pages."""
    world.monkeypatch.setenv("METAPIC_PAGE_SIZE", str(PAGE_SIZE))
    return world


def now_of(w) -> datetime:
    return w.sandbox.world.now


def rows_by_key(w) -> dict[tuple[int, str], tuple]:
    return {
        (r[0], r[1]): r[2:]
        for r in w.query("SELECT offer_id, participant_key, participant_id, user_id, display_name FROM metapic_participants")
    }


def listed(w):
    """(offer, participant) of every participant the sandbox lists now."""
    c = campaigns(w)
    return [(o, p) for o in c.offers if o.created <= now_of(w) for p in c.joined(o)]


def key_of(w, offer, p) -> str:
    return expected_key(campaigns(w).render_participant(offer, p))


def entity(offer_id: int, key: str) -> str:
    return f"{offer_id}:{key}"


def history(w) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = defaultdict(list)
    for entity_id, status, start, end in w.query(
        "SELECT entity_id, source_status, valid_from, valid_to FROM status_history "
        "WHERE source = 'metapic_participant' ORDER BY entity_id, valid_from"
    ):
        out[entity_id].append((status, start, end))
    return out


def assert_history_continuous(w, result=None) -> None:
    """The warehouse's own check passes (when the run evaluated it), and independently: per
    entity, intervals follow each other without gap or overlap, no two consecutive ones hold the
    same status, and exactly the participants with a row have a current interval."""
    if result is not None:
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert checks[HISTORY_CHECK].passed, checks[HISTORY_CHECK].description
    current = set()
    for entity_id, intervals in history(w).items():
        for (status, _s, end), (next_status, next_start, _e) in zip(intervals, intervals[1:]):
            assert end == next_start, (entity_id, intervals)
            assert status != next_status, (entity_id, intervals)
        assert all(end is not None for _s, _f, end in intervals[:-1]), (entity_id, intervals)
        if intervals[-1][2] is None:
            current.add(entity_id)
    assert current == {entity(o, k) for o, k in rows_by_key(w)}


def assert_earnings_match_truth(w) -> None:
    """v_earnings (metapic_offer) and v_summary count every listed participant's clicks once."""
    offers = {o["id"]: o for o in campaigns(w).truth()}
    want: dict[int, Decimal] = defaultdict(Decimal)
    for o in offers:
        want[o] += 0
    for p in campaigns(w).participants_truth():
        offer = offers[p["offer_id"]]
        want[p["offer_id"]] += p["clicks"] * expected_cpc(offer) + Decimal(p["payment_amount"] or 0)
    got = {int(r[0]): r[1] for r in w.query("SELECT order_id, earned FROM v_earnings WHERE source = 'metapic_offer'")}
    assert got == dict(want)
    by_currency: dict[str, Decimal] = defaultdict(Decimal)
    for offer_id, earned in want.items():
        by_currency[offers[offer_id]["currency"]] += earned
    summary = dict(w.query("SELECT currency, sum(earned) FROM v_summary WHERE source = 'metapic_offer' GROUP BY ALL"))
    assert summary == dict(by_currency)


def run_warnings(w, stream: str = "metapic_participants") -> str:
    return " ".join(
        str(r[0]) for r in w.query("SELECT warnings FROM sync_runs WHERE stream = ? ORDER BY finished_at DESC LIMIT 1", [stream])
    )


# -- sign-ups and removals -------------------------------------------------------------------------


def test_sign_ups_and_removals_keep_one_row_per_listed_participant(pworld):
    w = pworld
    c = campaigns(w)
    c.signups_per_day, c.removals_per_day = 3.0, 0.4  # the default world does both, more rarely
    w.sync(assets=SYNC)
    first = now_of(w)
    before = rows_by_key(w)
    first_history = history(w)

    for _ in range(2):
        w.advance(hours=12)
        result = w.sync(assets=[*SYNC, *VIEWS])

    # one row per listed participant, as the sandbox lists it now
    assert_matches_truth(w)
    truth = listed(w)
    assert w.scalar("SELECT count(*) FROM metapic_participants") == len(truth)

    # participants the warehouse knew as pre-registered signed up since: the same row and entity
    signed = [(o, p) for o, p in truth if p.signed_up is not None and p.signed_up > first and p.joined <= first]
    assert signed, "some pre-registered participants should have signed up"
    rows = rows_by_key(w)
    for o, p in signed:
        key = key_of(w, o, p)
        assert not key.startswith(("id:", "user:")), key  # still its pre-registered key
        assert (o.id, key) in before and before[(o.id, key)][0] is None
        assert rows[(o.id, key)] == (50_000 + p.n, 3000 + p.n, None)
        assert [k for (oid, k), r in rows.items() if oid == o.id and r[0] == 50_000 + p.n] == [key]
        ent = entity(o.id, key)
        # the history goes on from the first sync: the same first interval (closed since if the
        # participant's status moved on after signing up)
        assert history(w)[ent][0][:2] == first_history[ent][0][:2]
        assert not w.query("SELECT 1 FROM status_history WHERE entity_id LIKE ?", [f"{o.id}:id:%{50_000 + p.n}"])

    # removed participants the warehouse had: gone, their last interval closed
    removed = [(o, p) for o in c.offers for p in o.participants if p.removed is not None and p.joined <= first]
    assert removed, "some participants should have been removed"
    for o, p in removed:
        rendered = dict(c.render_participant(o, p))
        key = expected_key(rendered)
        assert (o.id, key) in before and (o.id, key) not in rows
        last = history(w)[entity(o.id, key)][-1]
        assert last[2] is not None and p.removed <= last[2] <= now_of(w)

    assert_history_continuous(w, result)
    assert_earnings_match_truth(w)


def test_daily_stats_of_a_signed_up_participant_take_its_participant_key(pworld):
    """participants-stats carry no pre_registered_* fields: a signed-up participant's stats come
    with its id, and take the key its participants row has (the pre-registered one)."""
    w = pworld
    c = campaigns(w)
    c.signups_per_day = c.removals_per_day = 0.0
    w.sync(assets=SYNC)
    day = now_of(w).date()
    offer, p = next(
        (o, p) for o, p in listed(w)
        if o.status_at(now_of(w)) == "active" and p.identifier and c.daily_clicks(o, p, day - timedelta(days=1))
    )
    key = key_of(w, offer, p)
    c.sign_up(p)
    w.advance(hours=1)
    w.sync(assets=SYNC)

    run_daily_stats(w, (day - timedelta(days=1)).isoformat())

    stats = w.query(
        "SELECT participant_key, participant_id, user_id, clicks FROM metapic_participant_daily_stats WHERE offer_id = ?",
        [offer.id],
    )
    mine = [r for r in stats if r[1] == 50_000 + p.n]
    assert mine == [(key, 50_000 + p.n, 3000 + p.n, c.daily_clicks(offer, p, day - timedelta(days=1)))]
    # every stats key of the offer names a participant of the participants table
    assert {r[0] for r in stats} <= {k for (o, k) in rows_by_key(w) if o == offer.id}


def test_the_warehouse_integrity_check_accepts_a_removal_and_nothing_looser(pworld, tmp_path):
    """The load tests' ``integrity_problems`` agrees with the snapshot rule: a participant removed
    by a complete read keeps its history with no current interval, which is consistent (it flagged
    every removal as "not current" before). It stays strict: a removed participant whose interval
    is open again, or a listed one whose interval was closed, is reported."""
    w = pworld
    c = campaigns(w)
    c.signups_per_day = c.removals_per_day = 0.0
    w.sync(assets=SYNC)
    now = now_of(w)
    (o1, gone), (o2, kept) = [(o, p) for o, p in listed(w) if o.status_at(now) == "active"][:2]
    c.remove(gone)
    w.advance(hours=1)
    result = w.sync(assets=SYNC)

    removed, listed_one = entity(o1.id, key_of(w, o1, gone)), entity(o2.id, key_of(w, o2, kept))
    assert history(w)[removed][-1][2] is not None and listed_one in {entity(*k) for k in rows_by_key(w)}
    assert_history_continuous(w, result)
    assert integrity_problems(w.warehouse_path) == []

    broken = tmp_path / "broken.duckdb"
    broken.write_bytes(w.warehouse_path.read_bytes())
    with duckdb.connect(str(broken)) as con:
        for entity_id in (removed, listed_one):  # reopen the removed one, close the listed one
            con.execute(
                "UPDATE status_history "
                "SET valid_to = CASE WHEN valid_to IS NULL THEN valid_from + INTERVAL 1 MINUTE END "
                "WHERE source = 'metapic_participant' AND entity_id = ? AND valid_from = "
                "(SELECT max(valid_from) FROM status_history WHERE source = 'metapic_participant' AND entity_id = ?)",
                [entity_id, entity_id],
            )
    assert sorted(integrity_problems(broken)) == [
        "metapic_participants: 1 row(s) whose status has no current history interval",
        "status_history metapic_participant: 1 current interval(s) of an entity without a row",
        "status_history metapic_participant: 1 interval(s) overlap, leave a gap or are not current",
    ]


def test_participant_lists_are_read_through_server_429s_that_carry_no_retry_after(pworld):
    """The docs show ``x-ratelimit-limit``/``-remaining`` and no ``Retry-After``: the sandbox's 429s
    carry none unless switched on. A client allowed more than the server allows (another process
    spends the same account) is refused, waits on ``x-ratelimit-remaining: 0`` for its own window,
    and still reads every list whole."""
    import httpx

    w = pworld
    c = campaigns(w)
    c.signups_per_day = c.removals_per_day = 0.0
    metapic = api(w)
    metapic.rate_limit, metapic.rate_window = 8, 1.0
    metapic.limiter.reset()
    w.monkeypatch.setenv("METAPIC_RATE_LIMIT", "1000")  # the client's own limiter never holds it back
    w.monkeypatch.setenv("METAPIC_RATE_WINDOW_SECONDS", "1.5")

    result = w.sync(assets=SYNC)

    assert result.success
    assert metapic.limiter.rejected > 0, "the server's limit should have refused some requests"
    assert w.sandbox.stats.snapshot()["total_requests"] > 3 * metapic.rate_limit
    assert_matches_truth(w)
    assert_history_continuous(w, result)

    env = w.sandbox.env()
    url = env["METAPIC_BASE_URL"] + "/v2/offers"
    params = {"created_by": env["METAPIC_USER_ID"]}

    def refused() -> httpx.Response:
        metapic.limiter.reset()
        with httpx.Client(headers={"Authorization": env["METAPIC_ACCESS_TOKEN"]}) as http:
            answers = [http.get(url, params=params) for _ in range(metapic.rate_limit + 1)]
        assert [a.status_code for a in answers] == [200] * metapic.rate_limit + [429]
        return answers[-1]

    plain = refused()
    assert plain.headers["x-ratelimit-remaining"] == "0" and plain.headers["x-ratelimit-limit"] == "8"
    assert "retry-after" not in plain.headers and "x-ratelimit-reset" not in plain.headers
    metapic.retry_after_on_limit = True
    assert "retry-after" in refused().headers


# -- incomplete reads ------------------------------------------------------------------------------

INCOMPLETE = {
    "empty-page-2": {"lies": {"kind": "empty_page", "at_page": 2, "persistent": True}},
    "repeated-page-2": {"lies": {"kind": "repeat_page", "at_page": 2, "persistent": True}},
    "total-changes-on-page-2": {"lies": {"kind": "total_changes", "at_page": 2}},
    "failing-page-2": {"faults": {"rate": 1.0, "kinds": ["500"], "skip": 1}},
}


@pytest.mark.parametrize("case", list(INCOMPLETE))
def test_an_incomplete_read_removes_nothing(pworld, case):
    w = pworld
    c = campaigns(w)
    c.signups_per_day = c.removals_per_day = 0.0
    w.sync(assets=SYNC)
    now = now_of(w)
    open_offers = [o for o in c.offers if o.created <= now and o.status_at(now) in ("active", "paused", "scheduled")]
    lying = max(open_offers, key=lambda o: len(c.joined(o)))
    assert len(c.joined(lying)) > 2 * PAGE_SIZE, "the list should span three pages"
    other = next(o for o in open_offers if o is not lying and len(c.joined(o)) > 1)
    gone, control = c.joined(lying)[0], c.joined(other)[-1]
    gone_key, control_key = key_of(w, lying, gone), key_of(w, other, control)
    c.remove(gone)
    c.remove(control)
    before = rows_by_key(w)
    target = f"/v2/offers/{lying.id}/participants?"
    plan = INCOMPLETE[case]
    if "lies" in plan:
        w.sandbox.set_lies(only=[target], **plan["lies"])
    else:
        w.sandbox.set_faults(only=[target], retry_after=0, **plan["faults"])
        w.monkeypatch.setenv("HTTP_MAX_ATTEMPTS", "2")
    w.advance(hours=1)

    result = w.sync(assets=SYNC, raise_on_error=False)

    after = rows_by_key(w)
    assert {k for k in after if k[0] == lying.id} == {k for k in before if k[0] == lying.id}
    assert (lying.id, gone_key) in after  # the read was incomplete: nothing removed
    assert w.query(
        "SELECT valid_to FROM status_history WHERE entity_id = ? AND valid_to IS NULL", [entity(lying.id, gone_key)]
    ) == [(None,)]
    if "lies" in plan:
        assert result.success
        assert f"participants:{lying.id}:" in run_warnings(w)
        assert (other.id, control_key) not in after  # a complete read of another list did remove
    else:
        assert not result.success and after == before  # the asset failed: nothing committed

    w.sandbox.set_lies()
    w.sandbox.set_faults()
    result = w.sync(assets=SYNC)

    rows = rows_by_key(w)
    assert (lying.id, gone_key) not in rows and (other.id, control_key) not in rows
    assert_matches_truth(w)
    assert_history_continuous(w, result)


# -- terminal offers ------------------------------------------------------------------------------


def test_terminal_offer_moving_to_another_terminal_status_is_not_read_again(pworld):
    w = pworld
    c = campaigns(w)
    now = now_of(w)
    ended = next(o for o in c.offers if o.status_at(now) == "ended" and o.deleted_at is None and c.joined(o))
    active = next(o for o in c.offers if o.status_at(now) == "active" and o.pause is None and c.joined(o))
    ended.deleted_at = now + timedelta(hours=1)  # ended -> deleted during the next two hours
    active.valid_until = now + timedelta(hours=1)  # active -> ended, then ended -> deleted
    active.deleted_at = now + timedelta(hours=3)

    def participant_requests(offer) -> int:
        return len(w.sandbox.stats.arrivals_for(f"/v2/offers/{offer.id}/participants?"))

    w.sync(assets=SYNC)
    assert participant_requests(ended) >= 1 and participant_requests(active) >= 1
    w.sandbox.stats.reset()
    w.advance(hours=2)

    w.sync(assets=SYNC)  # ended -> deleted: no request; active -> ended: read once more

    assert participant_requests(ended) == 0
    assert participant_requests(active) >= 1
    w.sandbox.stats.reset()
    w.advance(hours=2)

    w.sync(assets=SYNC)  # ended -> deleted: no request

    assert participant_requests(active) == 0 and participant_requests(ended) == 0
    for offer, statuses in ((ended, ["ended", "deleted"]), (active, ["active", "ended", "deleted"])):
        got = [r[0] for r in w.query(
            "SELECT source_status FROM status_history WHERE source = 'metapic_offer' AND entity_id = ? ORDER BY valid_from",
            [str(offer.id)],
        )]
        assert got == statuses, offer.id  # the warehouse saw each terminal -> terminal move
    assert_matches_truth(w)


# -- upgrade ---------------------------------------------------------------------------------------


def test_rows_keyed_the_old_way_are_rekeyed_not_duplicated(pworld):
    """An earlier version keyed a participant by ``id:``/``user:`` once it had one. Two states it
    left: a stale pre-registered row beside the ``id:`` row of the same participant (it saw the
    sign-up), and an ``id:`` row alone (it first saw the participant signed up). Offers already
    read after they ended are read once more on upgrade, so their rows are re-keyed too."""
    w = pworld
    c = campaigns(w)
    c.signups_per_day = c.removals_per_day = 0.0
    w.sync(assets=SYNC)
    first = now_of(w)
    live = [(o, p) for o, p in listed(w) if o.status_at(first) == "active" and (p.identifier or p.email) and p.id is None]
    (o1, p1), (o2, p2) = live[0], next((o, p) for o, p in live[1:] if bool(p.email) != bool(live[0][1].email))
    o3, p3 = next((o, p) for o, p in listed(w) if o.status_at(first) == "ended" and (p.identifier or p.email))
    keys = {}
    for o, p in ((o1, p1), (o2, p2), (o3, p3)):
        keys[p.n] = key_of(w, o, p)
        c.sign_up(p, at=min(first, o.frozen_at - timedelta(minutes=1)))
    history_before = history(w)

    # what the earlier version left behind, written as it would have
    with duckdb.connect(str(w.warehouse_path)) as con:
        con.execute("SET TimeZone = 'UTC'")
        old1, old2, old3 = (f"id:{50_000 + p.n}" for p in (p1, p2, p3))
        for o, p, old in ((o1, p1, old1), (o3, p3, old3)):
            con.execute(  # 1: the stale pre-registered row stays, an id: row is added, its own entity
                "INSERT INTO metapic_participants SELECT * REPLACE (? AS participant_key, ? AS participant_id, "
                "? AS user_id, NULL AS display_name) FROM metapic_participants WHERE offer_id = ? AND participant_key = ?",
                [old, 50_000 + p.n, 3000 + p.n, o.id, keys[p.n]],
            )
            con.execute(
                "INSERT INTO status_history SELECT * REPLACE (? AS entity_id) FROM status_history "
                "WHERE source = 'metapic_participant' AND entity_id = ? AND valid_to IS NULL",
                [entity(o.id, old), entity(o.id, keys[p.n])],
            )
        con.execute(  # 2: only an id: row, its history under that entity
            "UPDATE metapic_participants SET participant_key = ?, participant_id = ?, user_id = ?, display_name = NULL "
            "WHERE offer_id = ? AND participant_key = ?",
            [old2, 50_000 + p2.n, 3000 + p2.n, o2.id, keys[p2.n]],
        )
        con.execute(
            "UPDATE status_history SET entity_id = ? WHERE source = 'metapic_participant' AND entity_id = ?",
            [entity(o2.id, old2), entity(o2.id, keys[p2.n])],
        )
        # the cursor the earlier version wrote (no key version)
        con.execute(
            "UPDATE sync_state SET cursor = ? WHERE stream = 'metapic_participants'",
            ['{"position": "metapic_offers.participants_final_read_at"}'],
        )
    assert w.scalar("SELECT count(*) FROM metapic_participants") == len(listed(w)) + 2
    w.advance(hours=1)
    w.sandbox.stats.reset()

    result = w.sync(assets=[*SYNC, *VIEWS])

    assert_matches_truth(w)  # one row each, under the pre-registered key
    rows = rows_by_key(w)
    assert w.scalar("SELECT count(*) FROM metapic_participants") == len(listed(w))
    assert rows[(o1.id, keys[p1.n])] == (50_000 + p1.n, 3000 + p1.n, None)
    assert rows[(o2.id, keys[p2.n])] == (50_000 + p2.n, 3000 + p2.n, None)
    after = history(w)
    # 2: the id: row's history went on under the pre-registered key, from the first sync
    assert entity(o2.id, old2) not in after
    assert after[entity(o2.id, keys[p2.n])][0] == history_before[entity(o2.id, keys[p2.n])][0]
    # 1: the duplicate entity is closed, the pre-registered one goes on
    assert after[entity(o1.id, old1)][-1][2] is not None
    assert after[entity(o1.id, keys[p1.n])][0] == history_before[entity(o1.id, keys[p1.n])][0]
    assert_history_continuous(w, result)
    assert_earnings_match_truth(w)
    # 3: the ended offer's list was read once more, and is not read again
    assert rows[(o3.id, keys[p3.n])] == (50_000 + p3.n, 3000 + p3.n, None) and (o3.id, old3) not in rows
    assert w.sandbox.stats.arrivals_for(f"/v2/offers/{o3.id}/participants?")
    w.sandbox.stats.reset()
    w.sync(assets=SYNC)
    assert not w.sandbox.stats.arrivals_for(f"/v2/offers/{o3.id}/participants?")
    assert_matches_truth(w)


# -- lists that move while they are read (issue 16) ------------------------------------------------


def test_lists_that_change_while_read_lose_nothing(pworld):
    w = pworld
    c = campaigns(w)
    metapic = api(w)
    moved_offers: set[int] = set()
    churned: Counter = Counter()
    for step, hours in enumerate((0, 6, 6)):
        if hours:
            w.advance(hours=hours)
        metapic.set_churn(share=0.7, seed=11 + step)
        before = rows_by_key(w) if step else {}
        w.sync(assets=SYNC)
        churned.update(metapic.churned)
        warnings = run_warnings(w)
        moved = {o.id for o in c.offers if f"participants:{o.id}: total changed" in warnings}
        moved_offers |= moved
        after = rows_by_key(w)
        # a walk that saw its list move is not complete: it removed nothing
        for key in before:
            if key[0] in moved:
                assert key in after, (step, key)
    assert set(churned) == {"status", "signup", "remove"}, churned
    assert moved_offers, "churn should have moved some lists while they were read"
    removed_live = [p for o in c.offers for p in o.participants if p.removed is not None]
    assert removed_live

    metapic.set_churn()
    result = w.sync(assets=[*SYNC, *VIEWS])

    assert_matches_truth(w)
    assert_history_continuous(w, result)
    assert_earnings_match_truth(w)


def test_a_participant_listed_again_continues_its_history(pworld):
    """Removed by a complete read, then listed again (re-invited, or a list that moved unseen):
    one entity whose intervals stay contiguous, its last status taken to have lasted until it was
    seen again; a status it comes back with opens the next interval."""
    w = pworld
    c = campaigns(w)
    c.signups_per_day = c.removals_per_day = 0.0
    w.sync(assets=SYNC)
    now = now_of(w)
    live = [(o, p) for o, p in listed(w) if o.status_at(now) == "active" and not p.forced_status]
    (o1, same), (o2, moved) = live[0], next((o, p) for o, p in live[1:] if o is not live[0][0])
    keys = {p.n: key_of(w, o, p) for o, p in ((o1, same), (o2, moved))}
    statuses = {p.n: c.participant_status(o, p, now) for o, p in ((o1, same), (o2, moved))}
    for p in (same, moved):
        c.remove(p)
    w.advance(hours=1)
    w.sync(assets=SYNC)
    assert all((o.id, keys[p.n]) not in rows_by_key(w) for o, p in ((o1, same), (o2, moved)))
    for p in (same, moved):
        p.removed = None
    moved.forced_status = next(s for s in ("store_denied", "done") if s != statuses[moved.n])
    same._clicks_cache = None
    w.advance(hours=1)

    result = w.sync(assets=SYNC)

    assert_matches_truth(w)
    assert_history_continuous(w, result)
    first = history(w)
    assert [s for s, _f, _t in first[entity(o1.id, keys[same.n])]][-1] == statuses[same.n]
    assert first[entity(o1.id, keys[same.n])][-1][2] is None
    assert [s for s, _f, _t in first[entity(o2.id, keys[moved.n])]][-2:] == [statuses[moved.n], moved.forced_status]
