"""Command line: ``affwh run | ui | status | query | sandbox | ...`` (also ``python -m pipelines.cli``).

``run`` executes the ``sync_all`` job in this process against a persistent Dagster instance
(``DAGSTER_HOME``, default ``.dagster_home`` in the project: the one instance of every route, see
:func:`ensure_dagster_home`), so its runs show in the UI afterwards. With no
credentials in the environment it first starts the built-in sandbox, points every source at it
and makes the warehouse clock follow the sandbox's simulated clock (``WAREHOUSE_CLOCK_URL``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipelines.allocator import limit_malloc_arenas
from pipelines.clock import CLOCK_URL_VARIABLE
from pipelines.settings import ALL_SOURCES, FIELDS, any_credentials_set, env, load_env_file

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The project's Dagster instance configuration, copied into DAGSTER_HOME (see pipelines/dagster_dev.py).
INSTANCE_CONFIG = PROJECT_ROOT / "dagster.yaml"


def dagster_home() -> Path:
    """DAGSTER_HOME if set (relative to the current folder), else the settings' default in the
    project root: the same folder whichever folder ``affwh`` or ``make`` is started from."""
    raw = os.environ.get("DAGSTER_HOME")
    return Path(raw).resolve() if raw else (PROJECT_ROOT / FIELDS["DAGSTER_HOME"].default).resolve()


def ensure_dagster_home() -> Path:
    """:func:`dagster_home`, created, holding the project's ``dagster.yaml``, and exported (so the
    processes started from here, ``dg dev`` and its run workers, use the same instance)."""
    home = dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    source = INSTANCE_CONFIG
    target = home / "dagster.yaml"
    if source.exists() and source.resolve() != target.resolve():
        if not target.exists() or target.read_text() != source.read_text():
            shutil.copyfile(source, target)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _data_dir() -> Path:
    """The folder of a local warehouse file (``data/`` by default)."""
    location = env("WAREHOUSE_PATH")
    if location.startswith(("md:", "motherduck:", "ducklake:")):
        return Path("data").resolve()
    return Path(location).resolve().parent


# The built-in sandbox starts this long before the current hour and is moved forward to it by
# catch_up_sandbox: on a fresh warehouse `affwh run` syncs in between, so the demo has history
# (closed status intervals, a day of earnings); every sandbox run starts the same way, so the world
# it syncs is generated the same way each time (a world generated at the current hour instead
# would undo some of the simulated day's status changes).
SANDBOX_DAY_BEFORE_HOURS = 24


@contextmanager
def sandbox_if_needed(scale: str, force: bool = False) -> Iterator[dict[str, str] | None]:
    """Start the sandbox in a subprocess when no credentials are set; yield its environment.

    Its clock starts SANDBOX_DAY_BEFORE_HOURS before the current hour: call catch_up_sandbox
    (after syncing the day before, if wanted) to bring it to the current hour."""
    if any_credentials_set() and not force:
        yield None
        return
    anchor = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=SANDBOX_DAY_BEFORE_HOURS)
    workdir = Path(tempfile.mkdtemp(prefix="affwh-sandbox-"))
    env_file = workdir / "env.json"
    # the register of leads "we submitted" in the sandbox world, beside the warehouse
    leads_dir = _data_dir() / "sandbox_cpamoe_leads"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "pipelines.sandbox", "--scale", scale, "--anchor", anchor.isoformat(),
            "--env-file", str(env_file), "--leads-dir", str(leads_dir),
        ],
        stdout=subprocess.DEVNULL,
        cwd=PROJECT_ROOT,
    )
    clock_before = os.environ.get(CLOCK_URL_VARIABLE)
    try:
        deadline = time.monotonic() + 120
        while not env_file.exists():
            if proc.poll() is not None:
                raise SystemExit("the sandbox failed to start")
            if time.monotonic() > deadline:
                raise SystemExit("the sandbox did not start within 120 s")
            time.sleep(0.1)
        sandbox_env = json.loads(env_file.read_text())
        # the warehouse clock follows the sandbox's simulated one (durations, alert due times and
        # earning days move with POST /_sandbox/advance); an env var so that the processes
        # `affwh ui` starts (code server, run workers) follow it too. WAREHOUSE_NOW still wins.
        sandbox_env[CLOCK_URL_VARIABLE] = sandbox_env["SANDBOX_URL"] + "/_sandbox/clock"
        os.environ.update(sandbox_env)
        yield sandbox_env
    finally:
        # this process may read the time after the sandbox is gone
        if clock_before is None:
            os.environ.pop(CLOCK_URL_VARIABLE, None)
        else:
            os.environ[CLOCK_URL_VARIABLE] = clock_before
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def catch_up_sandbox(sandbox_env: dict[str, str]) -> None:
    """Move the sandbox started by sandbox_if_needed to the current hour (POST /_sandbox/advance)."""
    request = urllib.request.Request(
        sandbox_env["SANDBOX_URL"] + "/_sandbox/advance",
        data=json.dumps({"hours": SANDBOX_DAY_BEFORE_HOURS}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=600) as response:
        response.read()


def _fresh_local_warehouse() -> bool:
    """True when the warehouse is a local file that no sync has written yet."""
    import duckdb

    from pipelines.warehouse import Warehouse

    warehouse = Warehouse(env("WAREHOUSE_PATH"), lock_timeout=0)
    if not warehouse.is_local_file:
        return False
    if not Path(warehouse.location).exists():
        return True
    try:
        with warehouse.connect(read_only=True) as con:
            return con.execute("SELECT count(*) FROM sync_state").fetchone()[0] == 0
    except duckdb.CatalogException:  # no schema yet
        return True
    except duckdb.Error:  # held by a writer: not worth guessing
        return False


def report_sources(sandbox_env: dict[str, str] | None) -> None:
    if sandbox_env is not None:
        print(
            "No API credentials found in the environment or .env: using the BUILT-IN SANDBOX "
            f"(simulated data) at {sandbox_env.get('SANDBOX_URL')}.\n"
            "Set the credential variables (see README) to sync the real APIs.\n"
        )
        return
    for source in ALL_SOURCES:
        missing = source.missing()
        state = "configured" if not missing else f"NOT CONFIGURED (set {', '.join(missing)})"
        print(f"  {source.source}: {state}")
    print()


def cmd_run(args: argparse.Namespace) -> int:
    import dagster as dg

    from pipelines import progress
    from pipelines.executor import start_fork_server
    from pipelines.run_recovery import recover_killed_runs
    from pipelines.warehouse.summary import print_summary

    ensure_dagster_home()
    first_sync = _never_synced()
    with sandbox_if_needed(args.scale, force=args.sandbox) as sandbox_env:
        report_sources(sandbox_env)
        print(f"Warehouse: {env('WAREHOUSE_PATH')}\n")
        if not args.verbose:
            # the progress display replaces Dagster's per-event console log; a failure is printed
            # in one line per failed feed by _sync_once (its stack trace stays in the run's log)
            progress.enable()
        start_fork_server()  # the environment the steps inherit is final from here
        from pipelines.definitions import full_refresh_run_config

        run_config = full_refresh_run_config() if args.full_refresh else {}
        if not args.verbose:
            run_config = {**run_config, "loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
        day_before = sandbox_env is not None and _fresh_local_warehouse()
        with dg.DagsterInstance.get() as instance:
            for run_id in recover_killed_runs(instance):
                print(f"  note: run {run_id} was killed before it finished: marked failed, its pool slots freed")
            if day_before:
                # a fresh warehouse on the sandbox: sync the simulated day before too, so that
                # durations, daily earnings and alerts have a day of history to show
                print(
                    f"Fresh warehouse on the sandbox: syncing the simulated state of {SANDBOX_DAY_BEFORE_HOURS} h ago "
                    "first, then the current one (the run is recorded in the Dagster instance; `make ui` shows it):"
                )
                if not _sync_once(run_config, instance):
                    return 1
            if sandbox_env is not None:
                catch_up_sandbox(sandbox_env)
            if not day_before:
                print("Syncing (the run is recorded in the Dagster instance; `make ui` shows it):")
            if not _sync_once(run_config, instance):
                return 1
        print_summary(env("WAREHOUSE_PATH"), first_sync=first_sync)
    return 0


def _never_synced() -> bool:
    """True when no stream has committed into the warehouse yet (its first sync is about to run)."""
    import duckdb

    from pipelines.warehouse.status import never_synced

    try:
        return never_synced(env("WAREHOUSE_PATH"), lock_timeout=0)
    except duckdb.Error:  # held by a writer: it has been synced
        return False


def _sync_once(run_config: dict, instance) -> bool:
    """Run ``sync_all`` once (one process per step, as every Dagster run of this project).

    When a feed fails, the other feeds still commit, but Dagster does not run a step downstream
    of a failed one: the views are then rebuilt by a second run of their own, so they
    are current and their latest materialization is not a failure. What failed is printed in one
    line per feed (the stack trace stays in the run's Dagster log, shown with ``--verbose``).
    """
    import dagster as dg

    from pipelines.definitions import INGESTION_KEYS, sync_all_job

    job = dg.reconstructable(sync_all_job)
    with dg.execute_job(job, instance, run_config=run_config, raise_on_error=False) as result:
        if result.success:
            return True
        failed = {e.step_key: _root_cause(e.step_failure_data.error) for e in result.all_events if e.is_step_failure}
        run_id = result.run_id
    for step, cause in sorted(failed.items()):
        print(f"FAILED {step}: {cause.removeprefix(f'{step}: ')}")
    interrupted = any("interrupted" in cause for cause in failed.values())
    if failed and set(failed) <= set(INGESTION_KEYS) and not interrupted:
        # the views only: a view is SQL over the committed tables; the daily snapshot and the
        # payouts wait for a sync without failures (a baseline taken now would miss the failed feed)
        job_def = sync_all_job()
        views = sorted(k for k in job_def.asset_layer.executable_asset_keys
                       if job_def.asset_layer.get(k).group_name == "views")
        downstream = {k: v for k, v in run_config.items() if k != "ops"}
        with dg.execute_job(job, instance, run_config=downstream, asset_selection=views, raise_on_error=False) as rebuilt:
            state = "rebuilt" if rebuilt.success else "NOT rebuilt (see `make ui`)"
        print(f"The other feeds committed; the views {state}. Run {run_id} in `make ui` has the details.")
    return False


def _root_cause(error) -> str:
    """The failure in one line: the FeedFailed message (it names the feed, the cause and, for a
    rejected credential, the variable to fix), else the innermost error Dagster wrapped."""
    while error.cause is not None and error.cls_name != "FeedFailed":
        error = error.cause
    if not error.message.strip():
        return error.cls_name
    line = error.message.strip().splitlines()[0]
    return line.split("FeedFailed: ", 1)[1] if "FeedFailed: " in line else line


def cmd_ui(args: argparse.Namespace) -> int:
    ensure_dagster_home()
    with sandbox_if_needed(args.scale, force=args.sandbox) as sandbox_env:
        if sandbox_env is not None:
            catch_up_sandbox(sandbox_env)
        report_sources(sandbox_env)
        command = [sys.executable, "-m", "pipelines.dagster_dev", "dev", "--port", str(args.port), "--host", args.host]
        print(f"Starting the Dagster UI: dg dev --port {args.port} --host {args.host}")
        # dg warns when the venv it runs from is not the "activated" one; make run/ui never activate
        child_env = {**os.environ, "VIRTUAL_ENV": sys.prefix} if sys.prefix != sys.base_prefix else None
        try:
            return subprocess.call(command, cwd=PROJECT_ROOT, env=child_env)
        except KeyboardInterrupt:
            return 0


QUERY_USAGE = (
    'usage: make query SQL="SELECT ..."   or   affwh query "SELECT ..." [--max-rows N]\n'
    "  runs one SQL statement read-only against the warehouse and prints a table, e.g.\n"
    '  make query SQL="SELECT source, currency, round(sum(earned), 2) AS earned FROM v_earnings_daily GROUP BY ALL"\n'
    "  tables and views: make query SQL=\"SHOW TABLES\""
)


def cmd_query(args: argparse.Namespace) -> int:
    from pipelines.warehouse.summary import run_query

    if not (args.sql or "").strip():
        print(QUERY_USAGE, file=sys.stderr)
        return 2
    return run_query(env("WAREHOUSE_PATH"), args.sql, max_rows=args.max_rows)


def cmd_status(args: argparse.Namespace) -> int:
    from pipelines.cli_status import run_status

    return run_status(env("WAREHOUSE_PATH"), as_json=args.json, wait_seconds=args.wait)


def cmd_report(args: argparse.Namespace) -> int:
    """Write the HTML report (pipelines/report); the warehouse is only read."""
    import duckdb

    from pipelines.report import write_report

    output = Path(args.output) if args.output else _data_dir() / "report.html"
    try:
        data = write_report(env("WAREHOUSE_PATH"), output)
    except duckdb.Error as exc:
        print(f"report failed: {exc}", file=sys.stderr)
        return 1
    state = "" if data.synced else " (no sync has written the warehouse yet: the page says so)"
    print(f"wrote {output}{state}")
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from pipelines.sandbox.__main__ import main as sandbox_main

    # the lead register and payouts of the sandbox world beside the warehouse, as `affwh run` does
    leads_dir = _data_dir() / "sandbox_cpamoe_leads"
    sandbox_main(["--scale", args.scale, "--port", str(args.port), "--leads-dir", str(leads_dir)])
    return 0


def cmd_submit_lead(args: argparse.Namespace) -> int:
    """Post one lead to cpa.moe add.json; record it (never its phone, e-mail, IP or name)."""
    import dagster as dg

    from pipelines.definitions import build_resources
    from pipelines.sources.http import ApiError
    from pipelines.resources import NotConfigured
    from pipelines.feeds.cpamoe import submit_lead
    from pipelines.sources.cpamoe import CpamoeError

    configured = build_resources()
    try:
        with dg.build_resources({k: configured[k] for k in ("cpamoe", "warehouse")}) as res:
            lead = submit_lead(
                res.cpamoe, res.warehouse.open(), lead_id=args.id, offer=args.offer, phone=args.phone,
                ip=args.ip, name=args.name, email=args.email, country=args.country, wm=args.wm,
            )
    except NotConfigured as exc:
        print(exc, file=sys.stderr)
        return 2
    except CpamoeError as exc:
        print(f"cpa.moe refused the lead: {exc.code} ({exc.description})", file=sys.stderr)
        return 1
    except (ApiError, ValueError) as exc:
        print(f"submit-lead failed: {exc}", file=sys.stderr)
        return 1
    print(f"submitted lead {lead.lead_id} (cpa.moe id {lead.uid}, offer {lead.offer_id}); recorded in cpamoe_leads")
    if lead.note:
        print(f"note: {lead.note}")
    return 0


def _bounded_int(name: str, low: int, high: int):
    """An argparse type: a whole number from ``low`` to ``high`` (the usage names the range)."""

    def parse(raw: str) -> int:
        try:
            number = int(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a whole number, not {raw!r}") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"{name} must be from {low} to {high}, not {number}")
        return number

    return parse


def _scale_option(parser: argparse.ArgumentParser) -> None:
    from pipelines.sandbox.world import SCALES  # the sandbox's presets are the one list

    parser.add_argument(
        "--scale", choices=list(SCALES), default=env("SANDBOX_SCALE"),
        help=f"size of the sandbox world when the sandbox is used (default: SANDBOX_SCALE, {env('SANDBOX_SCALE')})",
    )


def build_parser() -> argparse.ArgumentParser:
    """Every command and option, each with its help (defaults from :mod:`pipelines.settings`)."""
    parser = argparse.ArgumentParser(
        prog="affwh",
        description="Affiliate-network warehouse: sync the sources into DuckDB, look at what the syncs did.",
        epilog="Settings come from the environment or .env (README, Configuration). Without credentials, "
        "run and ui use the built-in sandbox.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run the sync_all job once (sandbox when no credentials are set)",
        description="Sync every configured source into the warehouse (the sync_all job, recorded in the "
        "Dagster instance of DAGSTER_HOME), then print a summary.",
    )
    _scale_option(run)
    run.add_argument("--sandbox", action="store_true", help="use the sandbox even if credentials are set")
    run.add_argument("--full-refresh", action="store_true", help="re-read every record (as the daily reconciliation does)")
    run.add_argument("--verbose", action="store_true", help="Dagster's full event log instead of the progress display")
    run.set_defaults(func=cmd_run)

    ui = sub.add_parser(
        "ui", help="start the Dagster UI (dg dev) with its daemon",
        description="Start the Dagster UI and daemon on this code location (schedules and sensors run while it does).",
    )
    _scale_option(ui)
    ui.add_argument("--sandbox", action="store_true", help="use the sandbox even if credentials are set")
    ui.add_argument(
        "--port", type=_bounded_int("port", 1, 65535), default=env("DAGSTER_UI_PORT"), metavar="{1..65535}",
        help=f"port of the UI (default: DAGSTER_UI_PORT, {env('DAGSTER_UI_PORT')})",
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    ui.set_defaults(func=cmd_ui)

    status = sub.add_parser(
        "status", help="what the last syncs did, per stream: counts, failures, quarantine, freshness",
        description="Per stream: the last committed run (when, full or incremental, records, inserted/updated/"
        "unchanged, requests, retries, warnings, duration), the last failure, rows in quarantine per reason "
        "and whether the stream is within its freshness policy. Read-only.",
    )
    status.add_argument("--json", action="store_true", help="print JSON for scripts instead of tables")
    status.add_argument(
        "--wait", type=float, default=30.0, metavar="SECONDS",
        help="how long to wait while a sync holds the warehouse (it does while it commits; default: 30)",
    )
    status.set_defaults(func=cmd_status)

    query = sub.add_parser(
        "query", help="run SQL against the warehouse (read-only) and print a table",
        description=QUERY_USAGE.removeprefix("usage: "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    query.add_argument("sql", nargs="?", default="", help='one SQL statement, e.g. "SELECT * FROM v_summary"')
    query.add_argument(
        "--max-rows", type=_bounded_int("--max-rows", 1, 1_000_000), default=100, metavar="{1..1000000}",
        help="rows printed at most (default: 100)",
    )
    query.set_defaults(func=cmd_query)

    report = sub.add_parser("report", help="write the warehouse as one self-contained HTML page (charts, alerts, syncs)")
    report.add_argument("--output", help="the HTML file to write (default: report.html beside the warehouse, data/report.html)")
    report.set_defaults(func=cmd_report)

    sandbox = sub.add_parser(
        "sandbox", help="serve the API sandbox alone and print the variables that point a sync at it",
        description="Serve the API sandbox (simulated APIs of every source) until Ctrl-C, and print "
        "`export VAR=value` lines for every variable a sync needs.",
    )
    _scale_option(sandbox)
    sandbox.add_argument(
        "--port", type=_bounded_int("port", 0, 65535), default=0, metavar="{0..65535}",
        help="TCP port to serve on (default: 0 = any free port, printed)",
    )
    sandbox.set_defaults(func=cmd_sandbox)

    submit = sub.add_parser("submit-lead", help="post a lead to cpa.moe (add.json) and register it")
    submit.add_argument("--id", default="auto", help="our lead id, or auto (default: cpa.moe generates one)")
    submit.add_argument("--offer", required=True, help="the cpa.moe offer id the lead is for")
    submit.add_argument("--phone", required=True, help="digits only; sent to cpa.moe, never stored")
    submit.add_argument("--ip", required=True, help="the customer's IP; sent, never stored")
    submit.add_argument("--name", help="the customer's name; sent, never stored")
    submit.add_argument("--email", help="the customer's e-mail; sent, never stored")
    submit.add_argument("--country", help="two-letter ISO code")
    submit.add_argument("--wm", help="our affiliate / source id")
    submit.set_defaults(func=cmd_submit_lead)

    return parser


def main(argv: list[str] | None = None) -> int:
    limit_malloc_arenas()  # before any thread starts: see pipelines/allocator.py
    load_env_file()
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("run", "ui"):
        from pipelines.config_check import config_problems

        problems = config_problems()
        for problem in problems:
            print(f"configuration error: {problem}", file=sys.stderr)
        if problems:
            return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
