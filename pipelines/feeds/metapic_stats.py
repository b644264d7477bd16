"""The Metapic participant daily stats feed: one UTC day of participants-stats per stream, one list
per campaign live that day, into ``metapic_participant_daily_stats``; several days of a backfill
make one report (:func:`combine_reports`)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import duckdb

from pipelines.feeds.metapic_keys import PARTICIPANT_ALIASES_SQL, quarantine_keyless
from pipelines.feeds.metapic_specs import DAILY_STATS, OFFERS
from pipelines.feeds.run import Fetched, SyncReport, run_stream
from pipelines.page import Page
from pipelines.sources.fetch import Emit, run_producers
from pipelines.sources.metapic import TERMINAL_OFFER_STATUSES, Fetcher, ListWalk
from pipelines.warehouse import Warehouse
from pipelines.warehouse.loader import CommitStep, LoadResult, StreamLoad, TableResult


def live_offers_sql(day: date) -> str:
    """Offers that may have statistics on ``day``: within their validity dates (when known) and
    not already observed ended/deleted before the day began."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    terminal = ", ".join(f"'{s}'" for s in TERMINAL_OFFER_STATUSES)
    return f"""
        SELECT o.offer_id FROM wh.main.metapic_offers AS o
        WHERE (o.valid_from IS NULL OR o.valid_from < TIMESTAMPTZ '{end.isoformat()}')
          AND (o.valid_until IS NULL OR o.valid_until >= TIMESTAMPTZ '{start.isoformat()}')
          AND NOT EXISTS (
              SELECT 1 FROM wh.main.status_history AS h
              WHERE h.source = '{OFFERS.source}' AND h.entity_id = CAST(o.offer_id AS VARCHAR)
                AND h.valid_to IS NULL AND h.source_status IN ({terminal})
                AND h.valid_from < TIMESTAMPTZ '{start.isoformat()}')
        ORDER BY o.offer_id"""


def sync_daily_stats(*, warehouse: Warehouse, fetcher: Fetcher, run_id: str, day: date) -> SyncReport:
    """One day of participants-stats (``start_date = end_date = day``, one list per live offer),
    as its own stream ``metapic_participant_daily_stats:<day>``.

    Re-running a day replaces that day's rows of every offer read completely: unchanged rows stay
    as they are, rows the API no longer returns for the day are deleted.
    """
    client = fetcher.client
    stream = f"{DAILY_STATS.table}:{day.isoformat()}"
    requests_before, retries_before = client.stats.requests, client.stats.retries

    def fetch(load: StreamLoad) -> Fetched:
        load.read_state({"live_offers": live_offers_sql(day), "participant_aliases": PARTICIPANT_ALIASES_SQL})
        offer_ids = [r[0] for r in load.query("SELECT offer_id FROM live_offers")]
        if not offer_ids:
            fetcher.log(f"{stream}: no offer in the warehouse was live that day (materialize metapic_offers first?)")

        def reader(offer_id: int):
            def produce(emit: Emit[Page]) -> ListWalk:
                return fetcher.participant_stats(offer_id, day, emit)

            return produce

        walks = run_producers([reader(o) for o in offer_ids], load.add, max_workers=fetcher.max_workers)
        warnings = [w for walk in walks for w in walk.warnings]  # type: ignore[union-attr]
        complete = [o for o, walk in zip(offer_ids, walks, strict=True) if walk.complete]  # type: ignore[union-attr]

        def replace_day(con: duckdb.DuckDBPyConnection, now: datetime) -> None:
            con.execute(
                f"""
                DELETE FROM wh.main.{DAILY_STATS.table} AS t
                WHERE t.date = $day AND list_contains($ids, t.offer_id)
                  AND NOT EXISTS (SELECT 1 FROM cur_{DAILY_STATS.table} AS c
                                  WHERE c.offer_id = t.offer_id AND c.participant_key = t.participant_key
                                    AND c.date = t.date)
                """,
                {"day": day, "ids": complete},
            )

        return Fetched(
            cursor={"date": day.isoformat(), "offers_read": len(offer_ids), "complete": len(complete)},
            mode="partition",
            warnings=warnings,
            full_walk=len(complete) == len(offer_ids),
            steps=[
                quarantine_keyless(DAILY_STATS.table, run_id),
                CommitStep("delete the day's rows no longer listed by offers read whole", replace_day),
            ],
            requests=client.stats.requests - requests_before,
            retries=client.stats.retries - retries_before,
        )

    return run_stream(
        warehouse=warehouse, stream=stream, specs=[DAILY_STATS], run_id=run_id, fetch=fetch, client=client,
        report_stream=DAILY_STATS.table, on_progress=fetcher.progress,
    )


def combine_reports(stream: str, reports: list[SyncReport]) -> SyncReport:
    """One report for several days of one table (a single-run backfill)."""
    total = TableResult(stream)
    for report in reports:
        if report.result is None:
            continue
        for t in report.result.tables.values():
            for name in ("received", "inserted", "updated", "unchanged", "quarantined", "status_changes"):
                setattr(total, name, getattr(total, name) + getattr(t, name))
    committed = max((r.result.committed_at for r in reports if r.result), default=datetime.now(UTC))
    result = LoadResult(stream, committed, {stream: total}, {"days": float(len(reports))})
    return SyncReport(
        stream=stream,
        mode="partition" if len(reports) == 1 else "partition range",
        result=result,
        requests=sum(r.requests for r in reports),
        retries=sum(r.retries for r in reports),
        seconds=sum(r.seconds for r in reports),
        warnings=[w for r in reports for w in r.warnings],
    )
