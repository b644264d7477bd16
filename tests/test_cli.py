"""The CLI explains itself (README, "Commands"): help and choices on every command and option,
usage instead of a traceback, errors on stderr with a non-zero exit, tables that read well, a
``make run`` summary that says "first sync" and points to quarantine, ``affwh sandbox`` printing
every variable a sync needs, one Dagster home for every route, and a ``.env.example`` that matches
the settings model. Output is read from real processes (the CLI, make, Dagster's own CLI).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from conftest import clean_env
from reliability_fixtures import Site

from pipelines import settings
from pipelines.cli import INSTANCE_CONFIG, PROJECT_ROOT, build_parser
from pipelines.sandbox.world import SCALES

CLI = [sys.executable, "-m", "pipelines.cli"]


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)


# -- help, choices, usage ------------------------------------------------------------------------


def _subcommands():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    return sub.choices, {a.dest: a.help for a in sub._choices_actions}


def test_every_command_and_option_has_help_text():
    commands, helps = _subcommands()
    assert set(commands) >= {"run", "ui", "status", "query", "sandbox", "submit-lead"}
    for name, parser in commands.items():
        assert helps.get(name), f"{name} has no help"
        for action in parser._actions:
            if action.dest != "help":
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"


def test_help_shows_the_choices_and_ranges(tmp_path):
    scales = "{" + ",".join(SCALES) + "}"
    for command in ("run", "ui", "sandbox"):
        shown = cli(command, "--help", cwd=tmp_path)
        assert shown.returncode == 0 and scales in shown.stdout, shown.stdout
    assert "{0..65535}" in cli("sandbox", "--help", cwd=tmp_path).stdout
    assert "{1..1000000}" in cli("query", "--help", cwd=tmp_path).stdout
    assert "--json" in cli("status", "--help", cwd=tmp_path).stdout

    refused = cli("query", "--max-rows", "0", "SELECT 1", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stdout == "" and "--max-rows must be from 1 to 1000000" in refused.stderr
    refused = cli("run", "--scale", "huge", cwd=tmp_path)
    assert refused.returncode == 2 and "invalid choice: 'huge'" in refused.stderr


def test_make_query_without_sql_prints_usage_not_a_traceback(tmp_path):
    # -o: the venv stamp is taken as up to date (no reinstall from a test); PY: this interpreter
    run = subprocess.run(["make", "-s", "-o", ".venv/.installed", "query", f"PY={sys.executable}"], cwd=PROJECT_ROOT,
                         env=clean_env(WAREHOUSE_PATH=str(tmp_path / "none.duckdb")), capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0 and run.stdout == ""
    assert run.stderr.startswith('usage: make query SQL="SELECT ..."') and "Traceback" not in run.stderr


# -- tables and errors ---------------------------------------------------------------------------


def test_query_prints_numbers_right_aligned_money_with_two_decimals_and_errors_on_stderr(site: Site, monkeypatch):
    site.register_leads()
    site.api("metapic").rate_limit = 100_000
    assert site.sync(monkeypatch).success
    sql = "SELECT source, currency, orders, earned FROM v_summary WHERE earned IS NOT NULL ORDER BY source, status, currency"

    run = site.run_cli("query", sql, name="query")
    assert run.returncode == 0 and run.stderr == "", run.output
    header, rule, *rows = run.stdout.splitlines()
    expected = site.query(sql)
    assert len(rows) == len(expected) > 3
    end_orders, end_earned = header.index("orders") + len("orders"), len(header)
    for line, (_source, _currency, orders, earned) in zip(rows, expected, strict=True):
        # right-aligned: every number ends where its column's header ends
        assert line[:end_orders].endswith(str(orders)) and line[:end_earned].endswith(f"{earned:.2f}"), line
        assert re.fullmatch(r"-?\d+\.\d\d", line.split()[-1])

    missing = site.run_cli("query", "SELECT * FROM no_such_table", name="bad-query")
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.startswith("error: Catalog Error") and "Traceback" not in missing.stderr


def test_a_query_against_no_warehouse_says_so_on_stderr(tmp_path):
    run = cli("query", "SELECT 1", cwd=tmp_path, env=clean_env(WAREHOUSE_PATH=str(tmp_path / "none.duckdb")))
    assert run.returncode == 1 and run.stdout == "" and "no warehouse at" in run.stderr
    assert not (tmp_path / "none.duckdb").exists()


# -- the make run summary ------------------------------------------------------------------------


def test_the_run_summary_says_first_sync_once_and_points_to_quarantine(site: Site):
    site.register_leads()
    site.api("metapic").rate_limit = 100_000
    from pipelines.sandbox import onlytraffic_marketer as marketer_api

    fields = marketer_api.DRIFT_FIELDS["/cpc/orders"]
    typed, wrong = fields["typed"]
    site.sandbox.set_drift(only=["/cpc/orders"], key=[fields["key"]], every=7, wrong_type={typed: wrong})

    first = site.run_cli("run", name="first")
    assert first.returncode == 0, first.output[-3000:]
    assert "First sync of this warehouse" in first.stdout
    # one line per feed, printed by the step processes: they inherited the progress switch, set
    # before the CLI started the executor's fork server early (pipelines.executor.start_fork_server)
    for feed in ("cpc_orders", "cpl_orders", "swap_orders", "cpamoe_leads", "metapic_participants"):
        assert re.search(rf"^  {feed}: \w+ sync, \d+ requests", first.output, re.M), (feed, first.output[-3000:])
    quarantined = site.scalar("SELECT count(*) FROM quarantine")
    assert quarantined > 0
    assert f"{quarantined:,} records are in quarantine (cpc_orders {quarantined:,})" in first.stdout
    assert "`make status`" in first.stdout

    site.sandbox.set_drift()  # the source sends clean records again: quarantine keeps what it holds
    second = site.run_cli("run", name="second")
    assert second.returncode == 0, second.output[-3000:]
    assert "First sync" not in second.stdout and "records are in quarantine" in second.stdout


# -- the sandbox's variables -----------------------------------------------------------------------


def test_affwh_sandbox_prints_every_variable_a_sync_needs_and_a_sync_with_them_fills_payouts(tmp_path):
    warehouse = tmp_path / "data" / "warehouse.duckdb"
    env = clean_env(WAREHOUSE_PATH=str(warehouse), PYTHONUNBUFFERED="1")
    server = subprocess.Popen([*CLI, "sandbox", "--scale", "tiny"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        exported = {}
        for line in server.stdout:
            if line.startswith("export "):
                name, value = line.removeprefix("export ").rstrip("\n").split("=", 1)
                exported[name] = value
            if "WAREHOUSE_CLOCK_URL" in exported and "CPAMOE_PAYOUTS_FILE" in exported:
                break
        credentials = {v for source in settings.ALL_SOURCES for v in source.variables}
        base_urls = {v for v in settings.VARIABLES if v.endswith("_BASE_URL")}
        needed = credentials | base_urls | {"CPAMOE_LEADS_DIR", "CPAMOE_PAYOUTS_FILE", "WAREHOUSE_CLOCK_URL"}
        assert needed <= set(exported), needed - set(exported)
        assert set(exported) - {"SANDBOX_URL"} <= set(settings.VARIABLES)
        # beside the warehouse, as `affwh run` puts them
        assert Path(exported["CPAMOE_LEADS_DIR"]) == warehouse.parent / "sandbox_cpamoe_leads"
        assert Path(exported["CPAMOE_PAYOUTS_FILE"]).is_file()

        # a sync in a shell with exactly those variables (credentials set: not the built-in sandbox)
        home = tmp_path / "dagster_home"
        run = cli("run", cwd=tmp_path, env={**env, **exported, "DAGSTER_HOME": str(home)}, timeout=600)
        assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
        assert "BUILT-IN SANDBOX" not in run.stdout
        with duckdb.connect(str(warehouse), read_only=True) as con:
            assert con.execute("SELECT count(*) FROM cpamoe_payouts").fetchone()[0] > 0
            assert con.execute("SELECT count(*) FROM cpamoe_leads").fetchone()[0] > 0
    finally:
        os.killpg(server.pid, 15)
        server.wait(30)


# -- one Dagster home ------------------------------------------------------------------------------


def test_every_route_has_one_dagster_home(tmp_path):
    default = (PROJECT_ROOT / settings.FIELDS["DAGSTER_HOME"].default).resolve()
    # affwh (and make, which only runs affwh): the settings' default, from any folder
    code = "from pipelines.cli import dagster_home; print(dagster_home())"
    shown = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(), capture_output=True, text=True)
    assert Path(shown.stdout.strip()) == default
    assert not re.search(r"^\s*(export\s+)?DAGSTER_HOME\s*[:?]?=", (PROJECT_ROOT / "Makefile").read_text(), re.M)

    # dg (Dagster's CLI reads .env from its folder before opening the instance): .env.example's
    # value is the same folder when run from the project root
    project = tmp_path / "project"
    project.mkdir()
    shutil.copyfile(PROJECT_ROOT / ".env.example", project / ".env")
    (project / ".dagster_home").mkdir()
    dagster = Path(sys.executable).with_name("dagster")
    info = subprocess.run([str(dagster), "instance", "info"], cwd=project, env=clean_env(PWD=str(project)),
                          capture_output=True, text=True, timeout=120)
    assert f"$DAGSTER_HOME: {project / '.dagster_home'}\n" in info.stdout, info.stdout + info.stderr

    assert INSTANCE_CONFIG == PROJECT_ROOT / "dagster.yaml" and INSTANCE_CONFIG.is_file()


def _first_lines_of_dg_dev(command: list[str], home: Path) -> str:
    """Start ``dg dev`` from the project root (as ``make ui`` does), read its output until it starts
    its services (the instance warning comes before), then stop it."""
    proc = subprocess.Popen(
        [*command, "dev", "--port", "0", "--host", "127.0.0.1"], cwd=PROJECT_ROOT,
        env=clean_env(DAGSTER_HOME=str(home), VIRTUAL_ENV=sys.prefix), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Launching Dagster services" in line or "Serving dagster-webserver" in line:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    return "".join(lines)


def test_make_ui_starts_dg_dev_without_the_instance_config_warning(tmp_path):
    """``dg dev`` in the project root warns that the root's dagster.yaml "will not be used" (its copy
    in DAGSTER_HOME is); ``make ui`` starts it through pipelines/dagster_dev.py, which drops that
    one warning. Plain dg shows it in the same setting, so the check can fail."""
    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(INSTANCE_CONFIG, home / "dagster.yaml")
    plain = _first_lines_of_dg_dev([str(Path(sys.executable).with_name("dg"))], home)
    ours = _first_lines_of_dg_dev([sys.executable, "-m", "pipelines.dagster_dev"], home)
    assert "will not be used" in plain, plain
    assert "Launching Dagster services" in ours and "will not be used" not in ours, ours


def test_ensure_dagster_home_copies_the_instance_config(tmp_path):
    home = tmp_path / "home"
    code = "from pipelines.cli import ensure_dagster_home; print(ensure_dagster_home())"
    shown = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=clean_env(DAGSTER_HOME=str(home)),
                           capture_output=True, text=True)
    assert Path(shown.stdout.strip()) == home
    assert (home / "dagster.yaml").read_text() == INSTANCE_CONFIG.read_text()


# -- .env.example ----------------------------------------------------------------------------------


def _example_lines() -> dict[str, tuple[str, bool]]:
    """variable -> (value, commented out) of every assignment in .env.example."""
    found = {}
    for line in (PROJECT_ROOT / ".env.example").read_text().splitlines():
        match = re.fullmatch(r"(# )?([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            assert match[2] not in found, f"{match[2]} twice"
            found[match[2]] = (match[3].strip('"'), bool(match[1]))
    return found


def test_env_example_lists_every_setting_once_with_its_default_and_no_secret():
    example = _example_lines()
    assert list(example) == list(settings.VARIABLES)
    for name, (value, commented) in example.items():
        default = settings.FIELDS[name].default
        if name == "DAGSTER_HOME":  # set, for dg: the default folder, absolute from the project root
            assert not commented and value == "${PWD}/" + default
        elif default is None:
            assert value == "", f"{name} has a value in .env.example"
        else:
            assert commented and value == (default if isinstance(default, str) else f"{default:g}"), name
    # uncommented, every value passes the model's own checks
    values = {n: v for n, (v, _) in example.items() if v and "$" not in v}
    assert settings.problems(values) == []


@pytest.mark.parametrize("name", [n for n in settings.VARIABLES if n in settings.SECRET_VARIABLES])
def test_env_example_holds_no_secret_value(name):
    assert _example_lines()[name][0] == ""
