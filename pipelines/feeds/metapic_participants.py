"""The Metapic participants feed: one list per campaign that can still change, read concurrently,
merged into ``metapic_participants`` with the participants' own steps (:mod:`pipelines.feeds.metapic_snapshot`).

Assumptions where the docs are silent:

- A campaign's participants no longer change once it has ended or been deleted: after one complete
  read made once it is terminal, its list is never asked for again (``ended`` -> ``deleted`` too).
"""

from __future__ import annotations

from datetime import datetime

import duckdb

from pipelines.feeds.metapic_keys import PARTICIPANT_KEY_VERSION, quarantine_keyless
from pipelines.feeds.metapic_snapshot import continue_relisted, find_relisted, rekey_signed_up, remove_unlisted
from pipelines.feeds.metapic_specs import OFFERS, PARTICIPANTS, PARTICIPANTS_SUMMARY_SQL
from pipelines.feeds.run import Fetched, SyncReport, run_stream
from pipelines.page import Page
from pipelines.sources.fetch import Emit, run_producers
from pipelines.sources.metapic import TERMINAL_OFFER_STATUSES, Fetcher, ListWalk, LogFn
from pipelines.warehouse import Warehouse
from pipelines.warehouse.loader import CommitStep, StepResult, StreamLoad, summary_step


def _offers_to_read_sql() -> str:
    """Every known offer: is it terminal, and were its participants read since it became so?

    "Since" is measured against the offer's last non-terminal status: the final read counts unless
    the offer was in a non-terminal status after it (reopened, then ended again: another final
    read). Moving from one terminal status to another (``ended`` -> ``deleted``) changes nothing
    a participant list can show, so it asks for no request.
    """
    terminal = ", ".join(f"'{s}'" for s in TERMINAL_OFFER_STATUSES)
    return f"""
        SELECT o.offer_id,
               coalesce(o.source_status IN ({terminal}), false) AS terminal,
               o.participants_final_read_at IS NOT NULL AND NOT EXISTS (
                   SELECT 1 FROM wh.main.status_history AS h
                   WHERE h.source = '{OFFERS.source}' AND h.entity_id = CAST(o.offer_id AS VARCHAR)
                     AND coalesce(h.source_status NOT IN ({terminal}), true)
                     AND (h.valid_to IS NULL OR h.valid_to > o.participants_final_read_at)) AS final_read
        FROM wh.main.metapic_offers AS o"""


def sync_participants(*, warehouse: Warehouse, fetcher: Fetcher, run_id: str, full_refresh: bool = False) -> SyncReport:
    """Read the participants of every offer that can still change, and once more of every offer
    that became terminal since its participants were last read; concurrently, one list per offer.

    The "read once more" mark (``metapic_offers.participants_final_read_at``) is written in the
    same transaction as those participants, and only when the list was read completely.
    """
    client = fetcher.client
    mode = "full" if full_refresh else "incremental"

    def fetch(load: StreamLoad) -> Fetched:
        state = load.read_state({"offers": _offers_to_read_sql()})
        # a warehouse whose participants an earlier key rule wrote reads every list once more
        # (terminal offers included), so rows keyed the old way are re-keyed everywhere
        upgrade = bool(state) and state.get("key_version") != PARTICIPANT_KEY_VERSION
        chosen = load.query(
            "SELECT offer_id, terminal FROM offers WHERE ? OR NOT terminal OR NOT final_read ORDER BY offer_id",
            [full_refresh or upgrade],
        )
        if not chosen:
            fetcher.log("metapic_participants: no offers in the warehouse to read participants of")
        if upgrade:
            fetcher.log("metapic_participants: participants keyed by an earlier rule: every offer's list is read once")
        fetcher.log(
            f"metapic_participants: reading {len(chosen)} offer(s), "
            f"{sum(1 for _, t in chosen if t)} of them terminal (final read)"
        )

        def reader(offer_id: int):
            def produce(emit: Emit[Page]) -> ListWalk:
                return fetcher.participants(offer_id, emit)

            return produce

        walks = run_producers([reader(o) for o, _ in chosen], load.add, max_workers=fetcher.max_workers)
        warnings = [w for walk in walks for w in walk.warnings]  # type: ignore[union-attr]
        final = [
            offer_id
            for (offer_id, is_terminal), walk in zip(chosen, walks, strict=True)
            if is_terminal and (walk.complete or walk.not_found)  # type: ignore[union-attr]
        ]
        # the offers whose list this run read whole: the snapshot rule applies to them only
        complete = [offer_id for (offer_id, _), walk in zip(chosen, walks, strict=True) if walk.complete]  # type: ignore[union-attr]
        return Fetched(
            # the stream's position is per campaign (participants_final_read_at, written in this
            # transaction); how many lists this run read is in the log and sync_runs.requests
            cursor={"position": "metapic_offers.participants_final_read_at", "key_version": PARTICIPANT_KEY_VERSION},
            mode=mode,
            warnings=warnings,
            full_walk=full_refresh,
            steps=participant_steps(run_id, complete, final, fetcher.log),
        )

    return run_stream(
        warehouse=warehouse, stream=PARTICIPANTS.table, specs=[PARTICIPANTS], run_id=run_id, fetch=fetch,
        client=client, on_progress=fetcher.progress,
    )


def participant_steps(run_id: str, complete: list[int], final: list[int], log: LogFn) -> list[CommitStep]:
    """The participants' own writes in the commit's transaction, in order: re-key rows an earlier
    key rule wrote and find participants listed again (before the merge); then quarantine keyless
    records, join relisted participants' history, apply the snapshot rule to the lists read whole,
    and mark the terminal offers read once more (after it)."""
    counts: dict[str, int] = {}

    def rekey(con: duckdb.DuckDBPyConnection, now: datetime) -> StepResult:
        counts["rekeyed"] = rekey_signed_up(con, now)
        return StepResult(metrics={"participants_rekeyed": float(counts["rekeyed"])})

    def relisted(con: duckdb.DuckDBPyConnection, now: datetime) -> StepResult:
        counts["relisted"] = find_relisted(con)
        return StepResult(metrics={"participants_relisted": float(counts["relisted"])})

    def continue_history(con: duckdb.DuckDBPyConnection, now: datetime) -> None:
        if counts.get("relisted"):
            continue_relisted(con, now)

    def snapshot_rule(con: duckdb.DuckDBPyConnection, now: datetime) -> StepResult:
        counts["removed"] = remove_unlisted(con, now, complete)
        if counts["removed"] or counts.get("rekeyed") or counts.get("relisted"):
            log(
                f"metapic_participants: {counts['removed']} participant(s) no longer listed removed, "
                f"{counts.get('relisted', 0)} listed again, {counts.get('rekeyed', 0)} row(s) keyed the old way re-keyed"
            )
        return StepResult(metrics={"participants_removed": float(counts["removed"])})

    def mark_final_read(con: duckdb.DuckDBPyConnection, now: datetime) -> None:
        if final:
            con.execute(
                "UPDATE wh.main.metapic_offers SET participants_final_read_at = $now WHERE list_contains($ids, offer_id)",
                {"now": now, "ids": final},
            )

    return [
        CommitStep("re-key participants keyed by an earlier rule", rekey, before_merge=True),
        CommitStep("find participants listed again", relisted, before_merge=True),
        quarantine_keyless(PARTICIPANTS.table, run_id),
        CommitStep("continue the history of participants listed again", continue_history),
        CommitStep("remove participants no longer listed (snapshot rule)", snapshot_rule),
        CommitStep("mark terminal offers' participants as read once more", mark_final_read),
        summary_step(PARTICIPANTS_SUMMARY_SQL),
    ]
