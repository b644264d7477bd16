"""Concurrency: a scheduled sync and a backfill started at the same time, and readers meanwhile.

Both are started with ``dg launch`` (as a schedule's or an operator's run would be; in the site's
folder, with the allow-listed environment, so no developer's ``.env`` is read) against one
persistent Dagster home holding the project's ``dagster.yaml``: its ``duckdb_writer`` pool (limit
1, op granularity) queues the steps that hold the warehouse file throughout, one at a time across
both runs, while feed steps wait for the file only to commit. Both runs succeed side by side,
neither fails on DuckDB's file lock, and the warehouse ends as a single uninterrupted sync would
leave it. A reader keeps opening the warehouse read-only meanwhile: it is
refused while a writer holds the file (and retries), and every state it does see is a committed
one.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import duckdb
import pytest
from reliability_fixtures import PROJECT_ROOT
from warehouse_compare import assert_same, integrity_problems

DG = str(Path(sys.executable).with_name("dg"))
# `dg launch` run in the site's folder, pointed at the definitions by module: never in the project
# root, where the project (and Dagster's CLI) would load the developer's `.env`.
LAUNCH = [DG, "launch", "--module-name", "pipelines.definitions"]
RANGE = "2025-11-01...2026-01-15"  # every day the standard world created swap orders on
TABLES = ("cpc_orders", "cpl_orders", "swap_orders", "swap_order_sides", "cpamoe_leads",
          "metapic_offers", "metapic_participants", "status_history")

# What a committed state always satisfies (each query returns the number of violations).
INVARIANTS = {
    "an order without exactly one current history row matching its status": """
        SELECT count(*) FROM (
            SELECT 'cpc' AS source, order_id, source_status FROM cpc_orders
            UNION ALL SELECT 'cpl', order_id, source_status FROM cpl_orders
            UNION ALL SELECT 'swap', order_id, source_status FROM swap_orders) AS o
        WHERE (SELECT count(*) FROM status_history AS h WHERE h.source = o.source
               AND h.entity_id = o.order_id AND h.valid_to IS NULL AND h.source_status = o.source_status) <> 1""",
    "a swap order without both sides, or a side without its order": """
        SELECT (SELECT count(*) FROM swap_orders AS o WHERE
                   (SELECT count(*) FROM swap_order_sides AS s WHERE s.order_id = o.order_id) <> 2)
             + (SELECT count(*) FROM swap_order_sides AS s WHERE s.order_id NOT IN (SELECT order_id FROM swap_orders))""",
    "a cursor without the rows it covers": """
        SELECT count(*) FROM sync_state AS s WHERE
            (s.stream = 'cpc_orders' AND NOT EXISTS (SELECT 1 FROM cpc_orders))
         OR (s.stream = 'swap_orders' AND NOT EXISTS (SELECT 1 FROM swap_orders))""",
}


@dataclass
class Reader:
    """Opens the warehouse read-only again and again until stopped; records what it saw."""

    path: Path
    seen: list[dict[str, int]] = field(default_factory=list)
    refused: int = 0
    violations: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                con = duckdb.connect(str(self.path), read_only=True)
            except (duckdb.IOException, duckdb.ConnectionException, duckdb.CatalogException):
                self.refused += 1  # a writer holds the file (or it does not exist yet): retry
                time.sleep(0.05)
                continue
            try:
                existing = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
                if set(TABLES) <= existing | {"status_history"} and "sync_state" in existing:
                    self.seen.append({t: con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES})
                    for name, sql in INVARIANTS.items():
                        if con.execute(sql).fetchone()[0]:
                            self.violations.append(name)
            except duckdb.CatalogException:
                pass  # the schema is being created
            finally:
                con.close()
            time.sleep(0.1)


@pytest.mark.slow
def test_a_sync_and_a_backfill_started_together_both_finish_and_lose_nothing(site, reference):
    site.register_leads()
    home = site.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    with dg.DagsterInstance.from_config(str(home)) as instance:  # an existing instance, as in production
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1
    reader = Reader(site.warehouse_path)
    thread = threading.Thread(target=reader.run, daemon=True)
    thread.start()

    scheduled = site.spawn([*LAUNCH, "--job", "sync_all"], name="scheduled")
    backfill = site.spawn([*LAUNCH, "--job", "swap_orders_by_created_day_job", "--partition-range", RANGE], name="backfill")
    codes = (scheduled.wait(300), backfill.wait(300))
    reader.stop.set()
    thread.join(10)

    assert codes == (0, 0), (scheduled.output[-3000:], backfill.output[-3000:])
    for run in (scheduled, backfill):
        assert "Could not set lock" not in run.output and "Conflicting lock" not in run.output
    # They ran at the same time: feed steps hold the file only to read a cursor and to commit, and
    # wait for it then (pipelines/warehouse.py), so they are in no pool; the steps holding the
    # file throughout (views, marts, backfills) still take turns through the duckdb_writer pool.
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = {r.dagster_run.job_name: r for r in instance.get_run_records()}
        assert {runs[j].dagster_run.status for j in ("sync_all", "swap_orders_by_created_day_job")} == {
            dg.DagsterRunStatus.SUCCESS}
        assert max(r.start_time for r in runs.values()) < min(r.end_time for r in runs.values())
        assert not instance.event_log_storage.get_concurrency_run_ids()  # every slot given back
    got = site.dump()
    assert_same(got, reference.first, tables=[t for t in reference.first if t != "sync_state"])
    streams = {r[0] for r in got["sync_state"].rows}
    assert streams == {r[0] for r in reference.first["sync_state"].rows} | {"swap_orders_by_created_day"}
    assert not integrity_problems(site.warehouse_path)

    # the reader only ever saw committed states: invariants held, counts never went back
    print(f"reader: {len(reader.seen)} states read, refused {reader.refused} time(s) while a writer held the file")
    assert len(reader.seen) >= 3, (reader.seen, reader.refused)
    assert not reader.violations, sorted(set(reader.violations))
    for before, after in zip(reader.seen, reader.seen[1:], strict=False):
        assert all(after[t] >= before[t] for t in TABLES), (before, after)
    assert reader.seen[-1] == {t: len(got[t].rows) for t in TABLES}
