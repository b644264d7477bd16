"""Bad input: schema drift, pagination that lies, bad lead files, bad configuration.

- Schema drift (every feed, through the sandbox's drift plan): an unknown field is kept in ``raw``,
  a missing optional field is NULL, a field of the wrong type sends its record to ``quarantine``
  with the reason naming the field (the rest of the run is loaded and the run succeeds), an
  unknown enum value keeps the row with ``status`` NULL and fails the ``*_known_statuses`` check.
- Pagination lies (each pagination style): an empty page before the end, a page repeating the one
  before, a total that changes between pages: no duplicates, no truncation, a warning in the
  run's metadata; a lie that persists is never taken silently for the end of a list.
- Lead CSV files: a huge file loads whole in one transaction with each bad line reported by number.
- Configuration: a malformed base URL, a non-numeric or unknown setting, a missing payouts file
  each give one clear sentence naming the variable.
"""

from __future__ import annotations

import json

import pytest
from reliability_fixtures import Site
from warehouse_compare import assert_same, integrity_problems

from pipelines.sandbox import cpamoe as cpamoe_api
from pipelines.sandbox import metapic as metapic_api
from pipelines.sandbox import onlytraffic_marketer as marketer_api
from pipelines.sandbox import onlytraffic_studio as studio_api
from pipelines.sandbox.faults import DriftPlan
from dagster_results import materializations

EXTRA = {"x_added_in_v2": {"rollout": "beta", "weight": 3}}


def checks(result) -> dict[str, object]:
    return {c.check_name: c for c in result.get_asset_check_evaluations()}


def materialization(result, asset: str) -> dict:
    (event,) = materializations(result, asset)
    return {k: v.value for k, v in event.metadata.items()}


# -- schema drift ------------------------------------------------------------------------------


def _cpamoe_truth(site: Site) -> list[dict]:
    return list(site.sandbox.dataset("cpamoe_leads").truth().values())


# feed -> (assets, table, drifted route, its drift fields, truth records, key column, optional
# column, column named by the wrong-type reason)
DRIFT_CASES = {
    "cpc": (["cpc_orders"], "cpc_orders", "/cpc/orders", marketer_api.DRIFT_FIELDS["/cpc/orders"],
            lambda s: s.sandbox.dataset("marketer_cpc").truth(), "order_id", "url", "clicks_ordered"),
    "cpl": (["cpl_orders"], "cpl_orders", "/cpl/orders", marketer_api.DRIFT_FIELDS["/cpl/orders"],
            lambda s: s.sandbox.dataset("marketer_cpl").truth(), "order_id", "campaign_url", "quantity_ordered"),
    "swap": (["swap_orders"], "swap_orders", "/swaps/orders", studio_api.DRIFT_FIELDS["/swaps/orders"],
             lambda s: s.sandbox.dataset("studio_swap").truth(), "order_id", "max_days", "quantity"),
    "cpamoe": (["cpamoe_lead_files", "cpamoe_leads"], "cpamoe_leads", "/ext/list.json",
               cpamoe_api.DRIFT_FIELDS["/ext/list.json"], _cpamoe_truth, "lead_id", "comment", "status"),
    "metapic_offers": (["metapic_offers"], "metapic_offers", "/v2/offers?", metapic_api.DRIFT_FIELDS["/v2/offers?"],
                       lambda s: s.sandbox.dataset("metapic").truth(), "offer_id", "token", "store_id"),
}


@pytest.mark.parametrize("feed", list(DRIFT_CASES))
def test_schema_drift_keeps_extra_fields_nulls_missing_ones_quarantines_wrong_types_flags_unknown_enums(site, monkeypatch, feed):
    assets, table, route, fields, truth_of, key_column, optional, typed_column = DRIFT_CASES[feed]
    typed, wrong = fields["typed"]
    enum, unknown = fields["enum"]
    every = 3 if feed == "metapic_offers" else 7  # a dozen campaigns in the tiny world
    plan = {"only": [route], "key": [fields["key"]], "every": every, "extra": EXTRA, "drop": [fields["optional"]],
                "wrong_type": {typed: wrong}, "unknown_enum": {enum: unknown}}
    site.register_leads()
    site.sandbox.set_drift(**plan)
    targets = {"wrong_type": set(), "unknown_enum": set(), None: set()}
    drift = DriftPlan.from_dict(plan)
    for record in truth_of(site):
        targets[drift.target(record)].add(str(record[fields["key"]]))
    assert targets["wrong_type"] and targets["unknown_enum"]

    result = site.sync(monkeypatch, assets=assets)

    assert result.success  # nothing aborted the run
    rows = {r[0]: r[1:] for r in site.query(
        f"SELECT CAST({key_column} AS VARCHAR), source_status, CAST(status AS VARCHAR), raw, {optional} FROM {table}"
    )}
    quarantined = {r[0]: r[1] for r in site.query(
        "SELECT entity_id, reason FROM quarantine WHERE stream = ?", [table]
    )}
    # the wrong type: quarantined with a reason naming the field, never coerced into the table
    assert set(quarantined) == targets["wrong_type"]
    assert all(typed_column in reason and "expected" in reason for reason in quarantined.values())
    if feed == "cpamoe":  # registered leads stay, never updated by the bad record
        assert all(rows[k][0] is None for k in targets["wrong_type"])
    else:
        assert not set(rows) & targets["wrong_type"]
    # the rest is loaded
    assert targets[None] <= set(rows) and targets["unknown_enum"] <= set(rows)
    # the unknown enum value: row kept with status NULL, named by the check
    assert {k for k, r in rows.items() if r[0] == unknown} == targets["unknown_enum"]
    assert all(rows[k][1] is None for k in targets["unknown_enum"])
    check = checks(result)[f"{table}_known_statuses"]
    assert not check.passed and unknown in check.description
    # the extra field kept in raw, the missing optional field NULL
    loaded = [r for k, r in rows.items() if k not in targets["wrong_type"]]
    assert all(json.loads(r[2])["x_added_in_v2"] == EXTRA["x_added_in_v2"] for r in loaded)
    assert all(r[3] is None for r in rows.values())
    assert materialization(result, assets[-1])["quarantined"] == len(targets["wrong_type"])
    assert not integrity_problems(site.warehouse_path)


def test_schema_drift_in_metapic_participants(site, monkeypatch):
    fields = metapic_api.DRIFT_FIELDS["/participants?"]
    plan = {"only": ["/participants?"], "key": list(fields["key"]), "every": 5, "extra": EXTRA, "drop": [fields["optional"]],
                "wrong_type": {"clicks": "many"}, "unknown_enum": {"status": "invited"}}
    site.sandbox.set_drift(**plan)
    drift = DriftPlan.from_dict(plan)
    keyed = [p for p in site.sandbox.dataset("metapic").participants_truth()
             if any(p.get(k) for k in ("id", "user_id", "pre_registered_identifier", "pre_registered_email"))]
    wrong = [p for p in keyed if drift.target(p) == "wrong_type"]
    unknown = [p for p in keyed if drift.target(p) == "unknown_enum"]
    assert wrong and unknown

    result = site.sync(monkeypatch, assets=["metapic_offers", "metapic_participants"])

    assert result.success
    reasons = [r[0] for r in site.query(
        "SELECT reason FROM quarantine WHERE stream = 'metapic_participants' AND reason LIKE 'clicks%'"
    )]
    assert len(reasons) == len(wrong) and all("expected integer, got VARCHAR: many" in r for r in reasons)
    assert site.scalar("SELECT count(*) FROM metapic_participants") == len(keyed) - len(wrong)
    assert site.scalar(
        "SELECT count(*) FROM metapic_participants WHERE source_status = 'invited' AND status IS NULL"
    ) == len(unknown)
    assert site.scalar("SELECT count(*) FROM metapic_participants WHERE display_name IS NOT NULL") == 0
    assert site.scalar(
        "SELECT count(*) FROM metapic_participants WHERE json_extract_string(raw, '$.x_added_in_v2.rollout') = 'beta'"
    ) == len(keyed) - len(wrong)
    check = checks(result)["metapic_participants_known_statuses"]
    assert not check.passed and "invited" in check.description


# -- pagination lies ---------------------------------------------------------------------------

# pagination style -> (assets, the route the lie is told on, tables to compare, history source,
# stream). metapic_offers is not compared: a participants list that looked incomplete is, rightly,
# not marked as read for the last time (participants_final_read_at), and will be read again.
LIE_CASES = {
    "offset": (["cpc_orders"], "/cpc/orders", ["cpc_orders"], "cpc", "cpc_orders"),
    "pages": (["swap_orders"], "/swaps/orders", ["swap_orders", "swap_order_sides"], "swap", "swap_orders"),
    "laravel": (["metapic_offers", "metapic_participants"], "/participants?", ["metapic_participants"],
                "metapic_participant", "metapic_participants"),
}
LIES = [
    ("offset", "empty_page"), ("offset", "repeat_page"),
    ("pages", "empty_page"), ("pages", "repeat_page"), ("pages", "total_changes"),
    ("laravel", "empty_page"), ("laravel", "repeat_page"), ("laravel", "total_changes"),
]


def run_warnings(site: Site, stream: str) -> str:
    """Every warning the stream's runs recorded in ``sync_runs``."""
    rows = site.query("SELECT warnings FROM sync_runs WHERE stream = ?", [stream])
    return "\n".join(w for (text,) in rows for w in json.loads(text or "[]"))


@pytest.mark.parametrize(("style", "lie"), LIES)
def test_pagination_lies_lose_nothing_duplicate_nothing_and_warn(site, reference, monkeypatch, style, lie):
    assets, route, tables, source, stream = LIE_CASES[style]
    site.sandbox.set_lies(kind=lie, only=[route])
    page_size = {"ONLYTRAFFIC_STUDIO_PAGE_SIZE": "20", "METAPIC_PAGE_SIZE": "3"}

    result = site.sync(monkeypatch, assets=assets, **page_size)

    assert result.success
    assert site.sandbox.lies.told.get(lie, 0) > 0
    got = site.dump()
    assert_same(got, reference.first, tables=tables)  # nothing lost, nothing doubled
    history = got["status_history"].where(source=source)
    assert history == reference.first["status_history"].where(source=source)
    assert not integrity_problems(site.warehouse_path)
    words = {"empty_page": "empty", "repeat_page": "repeat", "total_changes": "total"}[lie]
    assert words in run_warnings(site, stream)
    assert words in materialization(result, stream).get("warning_messages", "")


def listed_truth(site: Site, style: str) -> dict[str, set[str]]:
    """The sandbox's truth per list the walk reads: list name (as the walk's warnings name it) ->
    the keys that list holds now."""
    lists: dict[str, set[str]] = {}
    if style == "offset":
        for r in site.sandbox.dataset("marketer_cpc").truth():
            lists.setdefault(f"cpc_orders:{r['status']}", set()).add(str(r["order_id"]))
    elif style == "pages":
        swap = site.sandbox.dataset("studio_swap")
        for o in swap.orders:
            lists.setdefault(f"swap_orders:{swap.status_of(o.order_id)}", set()).add(str(o.order_id))
    else:  # participants, counted (#1, #2, ...): the keyless ones are quarantined, not listed
        for p in site.sandbox.dataset("metapic").participants_truth():
            if any(p.get(k) for k in ("id", "user_id", "pre_registered_identifier", "pre_registered_email")):
                keys = lists.setdefault(f"participants:{p['offer_id']}", set())
                keys.add(f"#{len(keys) + 1}")
    return lists


def landed(site: Site, style: str) -> dict[str, set[str]]:
    """What the warehouse holds per list, named and keyed as :func:`listed_truth` names them."""
    if style == "offset":
        rows = site.query("SELECT 'cpc_orders:' || source_status, CAST(order_id AS VARCHAR) FROM cpc_orders")
    elif style == "pages":
        rows = site.query("SELECT 'swap_orders:' || source_status, CAST(order_id AS VARCHAR) FROM swap_orders")
    else:
        rows = site.query(
            "SELECT 'participants:' || offer_id, '#' || row_number() OVER (PARTITION BY offer_id) "
            "FROM metapic_participants"
        )
    got: dict[str, set[str]] = {}
    for name, key in rows:
        got.setdefault(name, set()).add(key)
    return got


@pytest.mark.parametrize(("style", "lie"), [("offset", "empty_page"), ("pages", "empty_page"), ("laravel", "repeat_page")])
def test_a_persistent_lie_is_reported_never_taken_silently_for_the_end(site, monkeypatch, style, lie):
    """Every list the lie is told on either lands whole or is named by a warning saying it is not
    complete. The world has a list longer than one page and shorter than two more (51-100 orders
    at 50 a page, 21-40 at 20): a page 2 that stays empty cannot be told from the end of the list by
    the probe of page 3, so only a warning keeps its orders from being dropped silently."""
    assets, route, _tables, _source, stream = LIE_CASES[style]
    page = {"offset": 50, "pages": 20, "laravel": 3}[style]
    truth = listed_truth(site, style)
    assert any(page < len(keys) <= 2 * page for keys in truth.values()), {k: len(v) for k, v in truth.items()}
    site.sandbox.set_lies(kind=lie, only=[route], persistent=True)

    result = site.sync(monkeypatch, assets=assets, ONLYTRAFFIC_STUDIO_PAGE_SIZE="20", METAPIC_PAGE_SIZE="3")

    assert result.success
    warnings = run_warnings(site, stream).splitlines()
    got = landed(site, style)
    short = {name for name, keys in truth.items() if len(keys) > page}  # the lie reaches these lists
    assert short and site.sandbox.lies.told.get(lie, 0) >= len(short)
    for name, keys in truth.items():
        whole = keys <= got.get(name, set())
        named = [w for w in warnings if w.startswith(f"{name}:") and "not complete" in w]
        assert whole or named, f"{name}: {len(got.get(name, ()))} of {len(keys)} landed, no warning names it"
    assert not integrity_problems(site.warehouse_path)


# -- lead CSV files ------------------------------------------------------------------------------


def test_a_huge_lead_file_loads_whole_with_each_bad_line_reported_by_number(site, monkeypatch):
    lines = 150_000
    site.leads_dir.mkdir(parents=True, exist_ok=True)
    bad = {}
    with (site.leads_dir / "huge.csv").open("w") as f:
        f.write("id,offer,submitted_at,phone,email\n")
        for n in range(2, lines + 2):  # line numbers as the file counts them (header = 1)
            if n % 10_007 == 0:
                f.write(f"bad id {n},217,,7999{n:07d},x{n}@example.com\n")
                bad[n] = "id may only contain"
            elif n % 10_009 == 0:
                f.write(f"L{n - 1},217,,7999{n:07d},x{n}@example.com\n")  # repeats the line before
                bad[n] = f"duplicate id L{n - 1}: first on line {n - 1}"
            elif n % 10_037 == 0:
                f.write(f"L{n},soon,,7999{n:07d},x{n}@example.com\n")
                bad[n] = "offer is not a whole number"
            else:
                f.write(f"L{n},217,2026-01-0{1 + n % 9}T00:00:00Z,7999{n:07d},x{n}@example.com\n")

    result = site.sync(monkeypatch, assets=["cpamoe_lead_files"])

    assert result.success
    assert site.scalar("SELECT count(*) FROM cpamoe_leads") == lines - len(bad)
    errors = dict(site.query("SELECT line, error FROM cpamoe_lead_file_errors"))
    assert sorted(errors) == sorted(bad)
    assert all(expected in errors[n] for n, expected in bad.items())
    assert site.query("SELECT outcome, rows_loaded, rows_rejected FROM cpamoe_lead_files") == [
        ("loaded", lines - len(bad), len(bad))
    ]
    # the phone and e-mail columns are never read into the warehouse
    assert site.scalar(
        "SELECT count(*) FROM cpamoe_leads WHERE regexp_matches(concat_ws('|', lead_id, raw::VARCHAR), "
        "'7999[0-9]{7}|@example[.]com')"
    ) == 0


# -- configuration -------------------------------------------------------------------------------


BAD_SETTINGS = [
    ("ONLYTRAFFIC_MARKETER_BASE_URL", "onlytraffic.com/api", "is not an http:// or https:// URL"),
    ("ONLYTRAFFIC_STUDIO_BASE_URL", "http://bad host/api", "has no valid host name"),
    ("METAPIC_BASE_URL", "https://api.metapic.dev:99999", "is not an http:// or https:// URL"),
    ("HTTP_MAX_ATTEMPTS", "many", "is not a whole number"),
    ("HTTP_TIMEOUT_SECONDS", "-1", "must be more than 0"),
    ("METAPIC_PAGE_SIZE", "ten", "is not a whole number"),
    ("CPAMOE_CONCURRENCY", "0", "must be at least 1"),
    ("SWAP_PARTITIONS_START", "01/02/2025", "is not a date (YYYY-MM-DD)"),
    ("WAREHOUSE_NOW", "yesterday", "is not an ISO-8601 timestamp"),
    ("SANDBOX_SCALE", "huge", "is not one of tiny, small, medium, large"),
]


@pytest.mark.parametrize(("variable", "value", "problem"), BAD_SETTINGS)
def test_a_bad_setting_stops_the_cli_with_one_sentence_naming_the_variable(site, variable, value, problem):
    run = site.run_cli("run", name="config", timeout=120, **{variable: value})

    assert run.returncode == 2
    (line,) = run.stderr.strip().splitlines()  # one sentence, no stack trace
    assert line.startswith(f"configuration error: {variable}={value!r} {problem}")
    assert run.stdout == ""  # nothing ran


def test_settings_checked_inside_a_run_name_the_variable_too(site, monkeypatch):
    """Runs started from the UI or ``dg launch`` skip the CLI's check: the assets name the variable."""
    for variable, value, problem in (
        ("HTTP_TIMEOUT_SECONDS", "-1", "must be more than 0"),
        ("ONLYTRAFFIC_MARKETER_BASE_URL", "onlytraffic.com/api", "must start with http:// or https://"),
    ):
        result = site.sync(monkeypatch, assets=["cpc_orders"], raise_on_error=False, **{variable: value})

        assert not result.success
        error = next(e for e in result.all_events if e.is_step_failure).step_failure_data.error
        while error.cause is not None:
            error = error.cause
        assert f"{variable}={value!r} {problem}" in error.message


def test_a_missing_payouts_file_is_named_and_changes_nothing(site, monkeypatch):
    result = site.sync(monkeypatch, assets=["cpamoe_payouts"], CPAMOE_PAYOUTS_FILE=str(site.root / "nope.csv"))

    assert result.success
    meta = materialization(result, "cpamoe_payouts")
    assert f"CPAMOE_PAYOUTS_FILE={site.root / 'nope.csv'}: no such file" in meta["error"]
    assert site.scalar("SELECT count(*) FROM cpamoe_payouts") == 0

