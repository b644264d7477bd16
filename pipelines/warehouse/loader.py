"""The one loader: stage pages locally, then merge them into the warehouse in ONE transaction.

How a sync of one stream flows:

1. :meth:`StreamLoad.read_state` briefly attaches the warehouse read-only and copies what the
   fetch plan needs (the stream's cursor, the entities still open) into the staging database.
2. Each page's raw body is appended, as it arrives, to an NDJSON *chunk file* in the run's
   staging folder (one line per page: its sequence number, listed status, label and records path,
   then the body as it came; no parse, nothing kept in Python). A full chunk (bounded in bytes,
   records and pages) is handed to one background worker thread, which reads it with DuckDB's
   JSON reader (explicit column types), splits the bodies into records, and types and validates
   them in SQL (:mod:`pipelines.warehouse.staging`) into an in-memory *staging* DuckDB database:
   a few statements per chunk of thousands of records (their planning no longer dominates), while
   the main thread keeps fetching (DuckDB releases the GIL). :meth:`StreamLoad.flush` (before a
   query of the feed's and before the commit) waits for every chunk. Memory stays flat whatever
   the history size: chunks are bounded, beyond ``memory_limit`` DuckDB spills to the run's
   folder, and pages are not kept in Python. (Not Arrow or pandas: handing either to DuckDB
   imports pandas, +110 MB of RSS per sync for no speed gain.)
3. :meth:`StreamLoad.commit` attaches the warehouse and, in one transaction, writes quarantined
   records, upserts only the rows whose content changed, closes and opens ``status_history``
   intervals, and advances the stream's cursor in ``sync_state``. A crash or a failed request
   before that commit leaves the warehouse and the cursor exactly as they were; readers never
   see half a sync.

The warehouse file is locked only during steps 1 and 3, not while the APIs are being read.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import duckdb

from models.status import LIFECYCLE_STATUSES
from pipelines.clock import utc_now
from pipelines.page import Page
from pipelines.warehouse.staging import TableSpec, typed_select_sql
from pipelines.warehouse.staging_dirs import StagingDir
from pipelines.warehouse import Warehouse, configure

log = logging.getLogger(__name__)

WH = "wh"
# DuckDB's JSON functions parse a whole vector (up to 2,048 records) at a time into an arena per
# thread, so the memory a chunk's typing needs grows with the threads and the record size, not
# with the chunk (chunks past 2,048 records cost no more). On one thread, chunks of an eighth of
# the memory limit fit in it (swap orders, ~1.7 KB each, the widest records, typed 20 MB chunks
# at 160 MB and 16 MB chunks at 128 MB; two threads ran out at 3 MB), and each chunk's fixed cost
# (planning the swap sides' typing statement takes ~55 ms, the orders' ~20 ms) is paid per chunk:
# 200,000 swap orders replayed in-process at 160 MB staged in 17.0 s in chunks of a twentieth of
# the limit (44 chunks) and in 14.4 s in chunks of an eighth (20 chunks, the record bound), with the
# process tree's peak RSS unchanged. The other core keeps fetching. (A feed with two tables types
# them at once on two connections, one thread each: swap orders, ~1.7 KB, beside their sides,
# ~0.75 KB, peaked no higher; see StreamLoad._type_batch. Two chunks typed at once, on two
# connections, ran out of 160 MB at 10 MB chunks and, at 6 MB, staged in 13.1 s for 25.4 CPU
# seconds instead of 17.6.)
TYPING_THREADS = 1
BATCH = "batch"  # schema of the batch being staged
DATA_RECORDS = "$.data[*]"  # the records path of most pages (Page's default)


@dataclass
class TableResult:
    table: str
    received: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0
    status_changes: int = 0


@dataclass
class LoadResult:
    stream: str
    committed_at: datetime
    tables: dict[str, TableResult] = field(default_factory=dict)
    business: dict[str, float] = field(default_factory=dict)

    @property
    def primary(self) -> TableResult:
        return next(iter(self.tables.values()))


@dataclass
class StepResult:
    """What a commit step reports: records it sent to ``quarantine`` (counted on the stream's
    primary table) and metrics for the run's metadata (e.g. ``participants_removed``)."""

    quarantined: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CommitStep:
    """A feed's own set-based write, run by name inside the commit's transaction.

    Feeds write to the warehouse only through these (never outside :meth:`StreamLoad.commit`), so
    their writes commit or roll back with the stream's rows, history and cursor. ``run(con, now)``
    may read the staging tables (``cur_<table>``, ``typed_<table>``, the feed's own) and writes
    to ``wh.main.*``; ``now`` is the commit's observation time. ``before_merge`` steps run before
    the tables are merged (e.g. re-keying warehouse rows so the merge matches them).
    """

    name: str
    run: Callable[[duckdb.DuckDBPyConnection, datetime], StepResult | None]
    before_merge: bool = False


def summary_step(sql: str, name: str = "summary") -> CommitStep:
    """A step reading one row of business metrics (``SELECT ... AS name, ...``) after the merge.

    ``sql`` names warehouse tables as ``wh.main.<table>`` (``{wh}.<table>`` is accepted too).
    """
    query = sql.replace("{wh}", f"{WH}.main")

    def run(con: duckdb.DuckDBPyConnection, now: datetime) -> StepResult:
        cur = con.execute(query)
        row = cur.fetchone()
        names = [d[0] for d in cur.description]
        return StepResult(metrics={n: float(v) for n, v in zip(names, row or []) if v is not None})

    return CommitStep(name, run)


def merge_quarantine(
    con: duckdb.DuckDBPyConnection,
    stream: str,
    rows_sql: str,
    *,
    now: datetime,
    run_id: str,
    params: dict[str, Any] | None = None,
) -> int:
    """The one writer of ``quarantine``: ``rows_sql`` yields ``row_hash, entity_id, reason, raw``.

    A record already quarantined for this stream (same ``row_hash``) only has ``last_seen_at`` and
    ``run_id`` moved on, so a bad record read every run is one row. Returns how many distinct
    records the query yielded.
    """
    rows = f"SELECT DISTINCT ON (row_hash) row_hash, entity_id, reason, raw FROM ({rows_sql})"
    all_params = {**(params or {}), "q_stream": stream, "q_now": now, "q_run": run_id}
    count = con.execute(f"SELECT count(*) FROM ({rows})", params or {}).fetchone()[0]
    if count:
        con.execute(
            f"""
            MERGE INTO {WH}.main.quarantine AS q
            USING ({rows}) AS s
            ON q.stream = $q_stream AND q.row_hash = s.row_hash
            WHEN MATCHED THEN UPDATE SET last_seen_at = $q_now, run_id = $q_run
            WHEN NOT MATCHED THEN INSERT (stream, row_hash, entity_id, reason, raw, first_seen_at, last_seen_at, run_id)
                VALUES ($q_stream, s.row_hash, s.entity_id, s.reason, s.raw, $q_now, $q_now, $q_run)
            """,
            all_params,
        )
    return count


def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


class StreamLoad:
    """Stages and commits one sync of one stream. Use as a context manager."""

    def __init__(
        self,
        warehouse: Warehouse,
        stream: str,
        specs: list[TableSpec],
        *,
        run_id: str,
        key_path: str | None = None,
        created_path: str | None = None,
        keep_records: bool = True,
        batch_bytes: int | None = None,
        batch_records: int = 10_000,
        batch_pages: int = 1000,
        batch_tables: dict[str, str] | None = None,
        on_progress: Callable[[str, int], None] | None = None,
    ) -> None:
        self.warehouse = warehouse
        self.stream = stream
        self.specs = specs
        self.run_id = run_id
        # ``recs.key`` and ``recs.created``: the texts at these paths of each record, read in one
        # parse as its batch is split (the feed's whole-run queries then read columns, not JSON)
        self.record_texts = [p for p in (key_path, created_path) if p]
        self._key_at = f"_texts[{self.record_texts.index(key_path) + 1}]" if key_path else "NULL"
        self._created_at = f"_texts[{self.record_texts.index(created_path) + 1}]" if created_path else "NULL"
        # False: ``recs`` keeps a record's JSON only while its batch is typed (``batch.recs``), and
        # NULL after, so a run's records are not staged twice (``typed_<table>.raw`` holds them;
        # on 200,000 swap orders, 340 MB less to spill and read back). For feeds whose whole-run
        # queries read only ``key``, ``created``, ``listed_status``, ``seq`` of ``recs``.
        self.keep_records = keep_records
        # By default a chunk's bodies are an eighth of the memory limit (20 MB at 160 MB), between
        # 1 and 32 MB, and at most ``batch_records`` records: see TYPING_THREADS.
        self.batch_bytes = batch_bytes or chunk_bytes_for(warehouse.memory_limit)
        self.batch_records = batch_records
        self.batch_pages = batch_pages
        self._batch_records = 0
        self._batch_pages = 0
        self.on_progress = on_progress
        self.records_received = 0
        self.pages_received = 0
        self._batch_size = 0
        self._seq = 0
        # the chunk file being written, and the worker typing closed chunks (see add/flush)
        self._chunk: IO[bytes] | None = None
        self._chunk_path: Path | None = None
        self._chunk_n = 0
        self._chunk_longest = 0  # bytes of its longest line: the JSON reader's object size bound
        self._worker: ThreadPoolExecutor | None = None
        # a second connection and its thread, typing a batch's first spec beside the others
        self._side: tuple[duckdb.DuckDBPyConnection, ThreadPoolExecutor] | None = None
        self._create_lock = threading.Lock()  # see _append
        self._pending: list[Future] = []
        # False once the caller waits for the staging (flush): no page is coming, the fetch no
        # longer needs the other core, and the typing may take it (see _type_batch)
        self._fetching = True
        self._failure: BaseException | None = None
        self.con: duckdb.DuckDBPyConnection | None = None
        self._dir: Path | None = None
        self._staging: StagingDir | None = None
        self._typed: set[str] = set()  # the typed_<table> staging tables created so far
        # name -> query over ``recs``: a table a feed derives from its records, built batch by
        # batch (``batch.<name>`` holds the current batch's rows) so its JSON work stays bounded
        self.batch_tables = dict(batch_tables or {})
        self._batch_tables_made: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> StreamLoad:
        # This run's own folder (the folders of killed runs are removed first: staging_dirs).
        self._staging = StagingDir(self.warehouse.staging_root, prefix=f"{self.stream}-")
        self._dir = self._staging.path
        # In memory, spilling to this run's own folder beyond memory_limit: no file to create,
        # write and checkpoint for data that lives only until the commit.
        self.con = duckdb.connect(":memory:")
        # Chunks are typed on one thread (see TYPING_THREADS), the commit on every core.
        configure(self.con, self.warehouse.memory_limit, TYPING_THREADS)
        self.con.execute(f"SET temp_directory = '{self._dir / 'spill'}'")
        # No checkpoints of the staging database: DuckDB would otherwise re-compress its growing
        # in-memory tables every time their new data passes the threshold (16 MB), a pause that
        # grows with the table (seconds each on 200,000 swap orders) for data that lives only
        # until the commit. Beyond memory_limit it still spills to the run's folder.
        self.con.execute("SET checkpoint_threshold = '1000TB'")
        enum_values = ", ".join(f"'{v}'" for v in LIFECYCLE_STATUSES)
        self.con.execute(f"CREATE TYPE lifecycle_status AS ENUM ({enum_values})")
        self.con.execute(
            "CREATE TABLE recs (seq BIGINT, pos BIGINT, listed_status VARCHAR, label VARCHAR, "
            "key VARCHAR, created VARCHAR, rec JSON)"
        )
        # The current batch's records and derived tables, under the same names (see _batch_scope).
        self.con.execute(f"CREATE SCHEMA {BATCH}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._chunk is not None:
            self._chunk.close()
            self._chunk = None
        if self._worker is not None:
            # a failed fetch: chunks not started are dropped, the one being typed is waited for
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._worker = None
        if self._side is not None:
            self._side[1].shutdown(wait=True)
            self._side[0].close()
            self._side = None
        if self.con is not None:
            self.con.close()
            self.con = None
        if self._staging is not None:
            self._staging.remove()
            self._staging = None

    @property
    def staging_dir(self) -> Path:
        """This run's own folder (removed with the run): where a feed may stage files of its own."""
        assert self._dir is not None, "the load is not open"
        return self._dir

    # -- before fetching ---------------------------------------------------------------------

    def read_state(self, snapshots: dict[str, str] | None = None) -> dict[str, Any]:
        """Return the stream's cursor and copy ``snapshots`` (name -> query over ``wh.main.*``)
        into staging tables, with the warehouse attached read-only for as short as possible."""
        assert self.con is not None
        with self.warehouse.attach(self.con, WH, read_only=True):
            row = self.con.execute(
                f"SELECT cursor FROM {WH}.main.sync_state WHERE stream = ?", [self.stream]
            ).fetchone()
            for name, query in (snapshots or {}).items():
                self.con.execute(f"CREATE OR REPLACE TABLE {_q(name)} AS {query}")
        if row is None or row[0] is None:
            return {}
        value = row[0]
        return json.loads(value) if isinstance(value, str) else dict(value)

    # -- while fetching ----------------------------------------------------------------------

    def add(self, page: Page) -> None:
        """Stage a page: its raw body is appended to the current chunk file (one line, no parse,
        nothing kept in Python); full chunks are typed by the background worker."""
        self.pages_received += 1
        self.records_received += page.records
        self._fetching = True
        if not page.records:
            return
        if self._failure is not None:
            raise self._failure  # a chunk failed to type: stop fetching, the sync fails
        body = page.body.encode() if isinstance(page.body, str) else page.body
        self._seq += 1
        if self._chunk is None:
            self._chunk_n += 1
            assert self._dir is not None
            self._chunk_path = self._dir / f"pages-{self._chunk_n:06d}.ndjson"
            self._chunk = self._chunk_path.open("wb")
        # One line per page: its metadata, then the body as it came (a JSON document's raw line
        # breaks are whitespace; inside strings JSON escapes them).
        head = json.dumps({"q": self._seq, "s": page.listed_status, "l": page.label, "p": page.records_path})
        # The common layout (records under ``data``) goes in as "d", which the reader types as
        # STRUCT(data JSON[]): one parse yields the records; any other layout as "b" (JSON).
        field = b',"d":' if page.records_path == DATA_RECORDS else b',"b":'
        line = head[:-1].encode() + field + body.replace(b"\n", b" ").replace(b"\r", b" ") + b"}\n"
        self._chunk.write(line)
        self._chunk_longest = max(self._chunk_longest, len(line))
        self._batch_size += len(body)
        self._batch_records += page.records
        self._batch_pages += 1
        # Chunks are bounded in bytes, records and pages: the JSON reader parses a chunk's pages
        # (up to 2,048 of them at once) into one arena, and TYPING_THREADS explains the records.
        if (
            self._batch_size >= self.batch_bytes
            or self._batch_records >= self.batch_records
            or self._batch_pages >= self.batch_pages
        ):
            self._hand_over()
        if self.on_progress:
            self.on_progress(page.label or self.stream, page.records)

    def _hand_over(self) -> None:
        """Close the current chunk file and queue it for the worker (chunks are typed in order)."""
        if self._chunk is None:
            return
        self._chunk.close()
        path, longest = self._chunk_path, self._chunk_longest
        self._chunk, self._chunk_longest = None, 0
        self._batch_size = self._batch_records = self._batch_pages = 0
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"stage-{self.stream}")
        self._pending.append(self._worker.submit(self._stage_chunk, path, longest))

    def flush(self) -> None:
        """Type everything staged so far and wait for it: ``recs``, the ``typed_*`` and batch
        tables are then complete (a query or the commit reads them)."""
        self._fetching = False
        self._hand_over()
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()  # the worker's first error, if any, is raised here
        if self._failure is not None:
            raise self._failure
        self._make_batch_tables()

    def _stage_chunk(self, path: Path, longest: int) -> None:
        """In the worker thread: split a chunk's pages into records, derive, type (few statements
        for thousands of records), append. The main thread keeps fetching meanwhile and never
        uses the connection until :meth:`flush` has waited for this."""
        if self._failure is not None:
            return  # an earlier chunk failed: later ones would be typed out of order
        try:
            self._load_chunk(path, longest)
        except BaseException as exc:
            self._failure = exc
            raise
        finally:
            path.unlink(missing_ok=True)

    def _load_chunk(self, path: Path, longest: int) -> None:
        assert self.con is not None
        literal_file = "'" + str(path).replace("'", "''") + "'"
        # DuckDB's JSON reader reads the file (one page per line) with explicit types: the
        # metadata as a list, the body kept as JSON for the records path to split.
        self.con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE page_batch AS
            SELECT q AS seq, s AS listed_status, l AS label, p AS path, d.data AS records, b AS body
            FROM read_ndjson({literal_file}, maximum_object_size = {max(longest + 1024, 16 * 2**20)},
                             columns = {{'q': 'BIGINT', 's': 'VARCHAR', 'l': 'VARCHAR', 'p': 'VARCHAR',
                                         'd': 'STRUCT(data JSON[])', 'b': 'JSON'}})
            """
        )
        # One statement per records path: DuckDB splits every body into records, into a table of
        # this chunk alone (typed next), then appended to ``recs``.
        self.con.execute(f"CREATE OR REPLACE TABLE {BATCH}.recs AS SELECT * FROM main.recs LIMIT 0")
        paths = [r[0] for r in self.con.execute("SELECT DISTINCT path FROM page_batch ORDER BY path").fetchall()]
        listed = ", ".join("'" + p.replace("'", "''") + "'" for p in self.record_texts)
        texts = f"json_extract_string(rec, [{listed}])" if self.record_texts else "NULL"
        for records_path in paths:
            literal = "'" + records_path.replace("'", "''") + "'"
            records = "records" if records_path == DATA_RECORDS else f"json_extract(body, {literal})"
            self.con.execute(
                f"""
                INSERT INTO {BATCH}.recs
                SELECT seq, pos, listed_status, label, {self._key_at} AS key, {self._created_at} AS created, rec
                FROM (SELECT *, {texts} AS _texts
                      FROM (SELECT seq, generate_subscripts(l, 1) AS pos, listed_status, label, unnest(l) AS rec
                            FROM (SELECT seq, listed_status, label, {records} AS l
                                  FROM page_batch WHERE path = {literal})))
                """
            )
        self.con.execute("DROP TABLE page_batch")
        self._derive_batch_tables()
        self._type_batch()
        kept = "*" if self.keep_records else "* REPLACE (NULL AS rec)"
        self.con.execute(f"INSERT INTO main.recs SELECT {kept} FROM {BATCH}.recs")

    @contextmanager
    def _batch_scope(self, con: duckdb.DuckDBPyConnection | None = None) -> Iterator[None]:
        """Within it, a feed's SQL naming ``recs`` or one of its ``batch_tables`` reads the current
        batch's rows (schema ``batch`` first on the search path); snapshots and everything else
        resolve to ``main`` as always. The feed's SQL is run as written, never rewritten."""
        con = con or self.con
        assert con is not None
        con.execute(f"SET search_path = '{BATCH},main'")  # a setting of this connection alone
        try:
            yield
        finally:
            con.execute("RESET search_path")

    def _derive_batch_tables(self) -> None:
        """Append this batch's rows of every ``batch_tables`` table (and keep them as ``batch.<name>``)."""
        assert self.con is not None
        for name, query in self.batch_tables.items():
            with self._batch_scope():
                self.con.execute(f"CREATE OR REPLACE TABLE {BATCH}.{_q(name)} AS {query}")
            self._append(name, f"SELECT * FROM {BATCH}.{_q(name)}", self._batch_tables_made)

    def _append(self, table: str, select: str, made: set[str], con: duckdb.DuckDBPyConnection | None = None) -> None:
        """Append ``select``'s rows to ``table``, creating it on the run's first batch.

        Both typing connections may append to one table at once (halves of a batch: DuckDB's
        appends do not conflict); its creation is under a lock, so it is created once."""
        con = con or self.con
        assert con is not None
        if table not in made:
            with self._create_lock:
                if table not in made:
                    con.execute(f"CREATE OR REPLACE TABLE {_q(table)} AS {select}")
                    made.add(table)
                    return
        con.execute(f"INSERT INTO {_q(table)} {select}")

    def _make_batch_tables(self) -> None:
        """Create (empty) the ``batch_tables`` no batch has created: the feed may query them."""
        assert self.con is not None
        for name, query in self.batch_tables.items():
            if name not in self._batch_tables_made:
                self._append(name, f"{query} LIMIT 0", self._batch_tables_made)

    def _type_batch(self) -> None:
        """Type and validate the records of the batch (``batch.recs``) into ``typed_<table>``.

        Done batch by batch while the next pages are being fetched, so the typing work overlaps
        the APIs' latency and each statement works on a batch, not on the whole run (DuckDB's
        JSON functions hold their parse buffers for a whole statement). A spec's ``records_sql``
        is run over the batch (:meth:`_batch_scope`); a load that stages no pages (the lead
        register) types everything at commit, over the whole tables.

        With several specs (swap orders and their sides), the first is typed on a second
        connection of the same database while this thread types the others: each statement runs
        on one thread (see TYPING_THREADS), so one batch uses two cores where there are two
        (200,000 swap orders replayed: typing 38.3 s -> 32.4 s, the process's peak RSS the
        same). Each spec writes its own table, so the two never touch the same rows.

        Once the fetch is over (:meth:`flush`), the chunks still waiting are typed with both
        threads busy: the other specs' records are split in two halves (by ``pos``), and the second
        connection types one half after its own spec. During the fetch it does not: the fetch
        and the API need that core, and each half is one more statement to plan (~55 ms for swap
        sides).
        """
        assert self.con is not None
        if len(self.specs) == 1:
            self._type_specs(self.con, self.specs)
            return
        if self._side is None:
            self._side = (self.con.cursor(), ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"type-{self.stream}"))
        side_con, side_pool = self._side
        futures = [side_pool.submit(self._type_specs, side_con, self.specs[:1])]
        try:
            if self._fetching:
                self._type_specs(self.con, self.specs[1:])
            else:
                for spec in self.specs[1:]:
                    relation = self._spec_records(self.con, spec, shared=True)
                    halves = [f"SELECT * FROM ({relation}) WHERE pos % 2 = {half}" for half in (0, 1)]
                    futures.append(side_pool.submit(self._type_relation, side_con, spec, halves[0]))
                    self._type_relation(self.con, spec, halves[1])
        finally:
            for future in futures:
                future.result()  # waited for whatever happened here; its own error is raised

    def _spec_records(self, con: duckdb.DuckDBPyConnection, spec: TableSpec, *, shared: bool = False) -> str:
        """The relation of the batch's records of ``spec``: ``batch.recs``, or its ``records_sql``
        materialized first (inlined, DuckDB would re-evaluate the JSON the feed builds, e.g.
        json_merge_patch, for every use of ``rec`` in the typing, and hold each result). A TEMP
        table belongs to its connection (each typing connection has its own); ``shared`` puts it
        in the batch's schema, where the other connection reads it too."""
        if spec.records_sql is None:
            return f"SELECT seq, pos, listed_status, rec FROM {BATCH}.recs"
        table = f"{BATCH}.records_{spec.table}" if shared else "records_batch"
        with self._batch_scope(con):
            con.execute(f"CREATE OR REPLACE {'' if shared else 'TEMP '}TABLE {table} AS {spec.records_sql}")
        return f"SELECT * FROM {table}"

    def _type_relation(self, con: duckdb.DuckDBPyConnection, spec: TableSpec, relation: str) -> None:
        self._append("typed_" + spec.table, typed_select_sql(spec, relation), self._typed, con)

    def _type_specs(self, con: duckdb.DuckDBPyConnection, specs: list[TableSpec]) -> None:
        for spec in specs:
            self._type_relation(con, spec, self._spec_records(con, spec))

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        """Run a read query against staging (flushes pending pages first)."""
        self.flush()
        assert self.con is not None
        return self.con.execute(sql, params or []).fetchall()

    # -- commit ------------------------------------------------------------------------------

    def commit(
        self,
        *,
        cursor: dict[str, Any] | None,
        mode: str,
        started_at: datetime,
        requests: int = 0,
        retries: int = 0,
        warnings: list[str] | None = None,
        full_walk: bool = False,
        steps: Sequence[CommitStep] = (),
    ) -> LoadResult:
        """Type, validate and merge everything staged, in one warehouse transaction.

        ``steps`` are the feed's own set-based writes (:class:`CommitStep`), run by name in that
        same transaction: the ``before_merge`` ones before the tables are merged, the others after.
        What they report (records they quarantined, metrics) is added to the result here, so the
        run's log in ``sync_runs`` counts them too.
        """
        self.flush()
        assert self.con is not None
        con = self.con
        # set-based work over the whole run: every core
        con.execute(f"SET threads = {max(self.warehouse.threads, os.cpu_count() or 1)}")
        for spec in self.specs:
            if "typed_" + spec.table not in self._typed:
                # typed at commit: a spec over a table the feed derives at the end, or nothing
                # was staged (an empty typed table)
                relation = spec.records_sql or "SELECT seq, pos, listed_status, rec FROM recs"
                self._append("typed_" + spec.table, typed_select_sql(spec, relation), self._typed)
            _dedupe(con, spec)

        with self.warehouse.attach(con, WH):
            now = self._observation_time()
            result = LoadResult(self.stream, now)
            con.execute("BEGIN TRANSACTION")
            try:
                before = [self._run_step(s, now) for s in steps if s.before_merge]
                for spec in self.specs:
                    result.tables[spec.table] = self._merge_table(spec, now)
                after = [self._run_step(s, now) for s in steps if not s.before_merge]
                for outcome in (*before, *after):
                    result.primary.quarantined += outcome.quarantined
                    result.business.update(outcome.metrics)
                self._write_state(cursor, now, full_walk)
                self._write_run(result, mode, started_at, requests, retries, warnings or [])
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return result

    def _run_step(self, step: CommitStep, now: datetime) -> StepResult:
        assert self.con is not None
        try:
            outcome = step.run(self.con, now)
        except Exception as exc:
            exc.add_note(f"in commit step {step.name!r} of stream {self.stream}")
            raise
        return outcome if outcome is not None else StepResult()

    def _observation_time(self) -> datetime:
        """Now, but never before the last committed sync (keeps history intervals ordered)."""
        assert self.con is not None
        now = utc_now()
        row = self.con.execute(f"SELECT max(last_synced_at) FROM {WH}.main.sync_state").fetchone()
        last = row[0] if row else None
        return max(now, last) if last is not None else now

    def _merge_table(self, spec: TableSpec, now: datetime) -> TableResult:
        con = self.con
        assert con is not None
        target = f"{WH}.main.{_q(spec.table)}"
        typed = _q("typed_" + spec.table)
        cur = _q("cur_" + spec.table)
        res = TableResult(spec.table)
        res.received = con.execute(f"SELECT count(*) FROM {cur}").fetchone()[0]

        # Records with a field of the wrong type: quarantined with the reason, never coerced.
        res.quarantined = con.execute(f"SELECT count(*) FROM {typed} WHERE _reason IS NOT NULL").fetchone()[0]
        if res.quarantined:  # a record on two pages (read-ahead overlap, a list that moved) counts once
            res.quarantined = merge_quarantine(
                con,
                spec.table,
                f"SELECT row_hash, entity_id, _reason AS reason, raw FROM {typed} WHERE _reason IS NOT NULL",
                now=now,
                run_id=self.run_id,
            )

        key_join = _key_join(spec, "t", "c")
        first_key = _q(spec.key[0])
        prev_status = "t.source_status" if spec.has_status else "NULL"
        # ``raw`` (the bulk of a row) only for changed rows: new rows, all of a first sync, read
        # it from their typed row (``_typed_row``) as they are inserted, so their JSON is copied
        # once, into the warehouse. (Changed rows keep theirs here: joining them back to the typed
        # rows by rowid cost more than the copy.)
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE delta AS
            SELECT c.* REPLACE (CASE WHEN t.{first_key} IS NOT NULL THEN c.raw END AS raw),
                   t.{first_key} IS NULL AS is_new, {prev_status} AS prev_source_status
            FROM {cur} AS c LEFT JOIN {target} AS t ON {key_join}
            WHERE t.{first_key} IS NULL OR t.row_hash <> c.row_hash
            """
        )
        res.inserted, res.updated = con.execute(
            "SELECT count(*) FILTER (WHERE is_new), count(*) FILTER (WHERE NOT is_new) FROM delta"
        ).fetchone()
        res.unchanged = res.received - res.inserted - res.updated

        if spec.has_status:
            res.status_changes = self._write_history(spec, now)

        columns = spec.columns
        base = [*columns]
        status_cols = ["source_status", "status"] if spec.has_status else []
        insert_cols = [*base, *status_cols, "raw", "row_hash", "first_seen_at", "synced_at", "run_id"]
        select_cols = [*(f"r.{_q(c)}" for c in base), *(f"CAST(r.{c} AS VARCHAR)" for c in status_cols), "r.raw", "r.row_hash", "$now", "$now", "$run"]
        con.execute(
            f"INSERT INTO {target} ({', '.join(_q(c) for c in insert_cols)}) "
            f"SELECT {', '.join(select_cols)} FROM {typed} AS r "
            f"WHERE r.rowid IN (SELECT _typed_row FROM delta WHERE is_new)",
            {"now": now, "run": self.run_id},
        )
        if res.updated:
            self._replace_changed_rows(spec, target, status_cols, now, res.updated)
        return res

    def _replace_changed_rows(
        self, spec: TableSpec, target: str, status_cols: list[str], now: datetime, changed: int
    ) -> None:
        """Rewrite the changed rows as delete + insert, not UPDATE: DuckDB keeps an UPDATE's old
        values in memory until the commit (a first poll of 500 000 leads needs more than 384 MB),
        while deleted rows are markers and inserted rows spill. Columns the feed does not update
        (``first_seen_at``, what another feed wrote) are carried over from the old row.

        When a large share of the table changed, the table is rebuilt instead (see
        :func:`rebuild_sql`): DuckDB's primary-key index makes a commit that re-inserts keys it
        deleted in the same transaction slow (~12 µs a row: 6.2 s for 500 000 leads), while
        writing the whole table afresh costs ~3 µs a row."""
        con = self.con
        assert con is not None
        updatable = [c for c in (spec.update_columns or spec.columns) if c not in spec.key]
        replace = [f"d.{_q(c)} AS {_q(c)}" for c in updatable]
        replace += [f"CAST(d.{c} AS VARCHAR) AS {c}" for c in status_cols]
        replace += ["d.raw AS raw", "d.row_hash AS row_hash", "$now AS synced_at", "$run AS run_id"]
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE replaced AS SELECT t.* REPLACE ({', '.join(replace)}) "
            f"FROM {target} AS t JOIN delta AS d ON {_key_join(spec, 't', 'd')} WHERE NOT d.is_new",
            {"now": now, "run": self.run_id},
        )
        rebuild = rebuild_sql(con, spec.table, _key_join(spec, "t", "d"), changed)
        if rebuild is not None:
            for statement in rebuild:
                con.execute(statement)
        else:
            con.execute(f"DELETE FROM {target} USING delta AS d WHERE {_key_join(spec, target, 'd')} AND NOT d.is_new")
            con.execute(f"INSERT INTO {target} SELECT * FROM replaced")
        con.execute("DROP TABLE replaced")

    def _write_history(self, spec: TableSpec, now: datetime) -> int:
        """Close the current interval of every entity whose raw status changed; open a new one.

        A new entity first seen in an initial status (e.g. waiting) is dated from its own
        ``created_at``: it has been in that status since creation. Otherwise an interval starts
        when the change was observed.
        """
        con = self.con
        assert con is not None
        history = f"{WH}.main.status_history"
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE changes AS
            SELECT entity_id, source_status, status, is_new, {created} AS created_at
            FROM delta
            WHERE source_status IS NOT NULL AND entity_id IS NOT NULL
              AND (is_new OR prev_source_status IS DISTINCT FROM source_status)
            """.format(created=_q(spec.created_field) if spec.created_field in spec.columns else "NULL")
        )
        changed = con.execute("SELECT count(*) FROM changes").fetchone()[0]
        if not changed:
            return 0
        con.execute(
            f"""
            UPDATE {history} SET valid_to = greatest($now, valid_from)
            FROM changes AS c
            WHERE {history}.source = $src AND {history}.entity_id = c.entity_id
              AND {history}.valid_to IS NULL
            """,
            {"now": now, "src": spec.source},
        )
        initial = ", ".join(f"'{s}'" for s in sorted(spec.initial_statuses)) or "NULL"
        con.execute(
            f"""
            INSERT INTO {history} (source, entity_id, source_status, status, valid_from, valid_to, run_id)
            SELECT $src, c.entity_id, c.source_status, CAST(c.status AS VARCHAR),
                   CASE WHEN c.is_new AND CAST(c.status AS VARCHAR) IN ({initial})
                             AND c.created_at IS NOT NULL AND c.created_at <= $now
                             AND NOT EXISTS (SELECT 1 FROM {history} h
                                             WHERE h.source = $src AND h.entity_id = c.entity_id)
                        THEN c.created_at ELSE $now END,
                   NULL, $run
            FROM changes AS c
            """,
            {"now": now, "src": spec.source, "run": self.run_id},
        )
        return changed

    def _write_state(self, cursor: dict[str, Any] | None, now: datetime, full_walk: bool) -> None:
        assert self.con is not None
        self.con.execute(
            f"""
            MERGE INTO {WH}.main.sync_state AS s
            USING (SELECT ? AS stream) AS n ON s.stream = n.stream
            WHEN MATCHED THEN UPDATE SET cursor = ?, last_synced_at = ?, last_run_id = ?,
                last_full_walk_at = CASE WHEN ? THEN ? ELSE s.last_full_walk_at END
            WHEN NOT MATCHED THEN INSERT (stream, cursor, last_synced_at, last_full_walk_at, last_run_id)
                VALUES (n.stream, ?, ?, CASE WHEN ? THEN ? END, ?)
            """,
            [
                self.stream,
                json.dumps(cursor) if cursor is not None else None,
                now,
                self.run_id,
                full_walk,
                now,
                json.dumps(cursor) if cursor is not None else None,
                now,
                full_walk,
                now,
                self.run_id,
            ],
        )

    def _write_run(
        self,
        result: LoadResult,
        mode: str,
        started_at: datetime,
        requests: int,
        retries: int,
        warnings: list[str],
    ) -> None:
        assert self.con is not None
        primary = result.primary if result.tables else TableResult(self.stream)
        quarantined = sum(t.quarantined for t in result.tables.values())
        self.con.execute(
            f"""
            INSERT OR REPLACE INTO {WH}.main.sync_runs
                (run_id, stream, mode, started_at, finished_at, records_received, inserted, updated,
                 unchanged, quarantined, requests, retries, warnings)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
            """,
            [
                self.run_id,
                self.stream,
                mode,
                started_at,
                datetime.now(UTC),  # wall clock: run timings are not observations
                self.records_received,
                primary.inserted,
                primary.updated,
                primary.unchanged,
                quarantined,
                requests,
                retries,
                json.dumps(warnings),
            ],
        )


# Rebuild a table when at least this share of its rows is replaced (delete + insert costs ~12 µs
# a replaced row at the commit, a rebuild ~3 µs a row of the table).
REBUILD_SHARE = 0.25


def rebuild_sql(con: duckdb.DuckDBPyConnection, table: str, key_join: str, replaced: int) -> list[str] | None:
    """Statements that write ``wh.main.<table>`` afresh as its rows that ``delta`` does not replace
    (``key_join`` over ``t``, the table, and ``d``, the delta: the delete's own condition) plus the
    temp table ``replaced`` (its ``replaced`` changed rows, in the table's column order), or None
    to delete + insert.

    Rebuilt only when ``replaced`` holds at least REBUILD_SHARE of the table's rows: the new table
    is made from the table's own DDL (DuckDB's ``duckdb_tables().sql``: same columns, types,
    primary key, NOT NULLs, defaults, column compression), filled, the old one dropped and the new
    one renamed, all in the commit's transaction (DuckDB's DDL is transactional: a failure leaves
    the old table). Never when the table has an index of its own (a user's ``CREATE INDEX`` would
    be lost) or a DDL we cannot rename; views name the table and find the new one.
    """
    where = f"WHERE database_name = '{WH}' AND schema_name = 'main' AND table_name = ?"
    found = con.execute(f"SELECT sql, estimated_size FROM duckdb_tables() {where}", [table]).fetchone()
    if found is None:
        return None
    ddl, rows = found
    # duckdb_indexes() lists the indexes made by CREATE INDEX (not the primary key's own)
    indexes = con.execute(f"SELECT count(*) FROM duckdb_indexes() {where}", [table]).fetchone()[0]
    head = f"CREATE TABLE {table}("
    if indexes or replaced < REBUILD_SHARE * rows or not ddl.startswith(head):
        return None
    log.info("%s: %d of its ~%d rows changed: the table is written afresh", table, replaced, rows)
    target, new = f"{WH}.main.{_q(table)}", f"{table}__rebuilt"
    kept = f"SELECT t.* FROM {target} AS t WHERE NOT EXISTS (SELECT 1 FROM delta AS d WHERE {key_join} AND NOT d.is_new)"
    return [
        f"CREATE TABLE {WH}.main.{_q(new)}(" + ddl[len(head):],
        f"INSERT INTO {WH}.main.{_q(new)} {kept} UNION ALL SELECT * FROM replaced",
        f"DROP TABLE {target}",
        f"ALTER TABLE {WH}.main.{_q(new)} RENAME TO {_q(table)}",
    ]


_UNITS = {"": 1, "B": 1, "KB": 1000, "KIB": 1024, "MB": 1000**2, "MIB": 1024**2, "GB": 1000**3, "GIB": 1024**3,
          "TB": 1000**4, "TIB": 1024**4}


# a chunk's page bytes are this fraction of the memory limit (see TYPING_THREADS)
CHUNK_SHARE = 8


def chunk_bytes_for(memory_limit: str) -> int:
    """Bytes of page bodies per typed chunk for a DuckDB ``memory_limit`` ('160MB', '1GiB'...)."""
    text = str(memory_limit).strip().upper().replace(" ", "")
    number = text.rstrip("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    try:
        limit = float(number) * _UNITS[text[len(number):]]
    except (KeyError, ValueError):
        limit = 160 * 1000**2
    return int(min(max(limit / CHUNK_SHARE, 2**20), 32 * 2**20))


def _key_join(spec: TableSpec, left: str, right: str) -> str:
    """``left.k = right.k AND ...`` over the spec's key columns."""
    return " AND ".join(f"{left}.{_q(k)} = {right}.{_q(k)}" for k in spec.key)


def _dedupe(con: duckdb.DuckDBPyConnection, spec: TableSpec) -> None:
    """Make ``cur_<table>``: one valid record per key. A record seen twice in a run (a repeated
    page, or an entity that moved between status lists mid-walk) counts once. A terminal status
    wins over an open one (statuses only move forward), then the record fetched last.

    ``cur_<table>`` is a view over ``typed_<table>`` with each row's ``_typed_row`` (its rowid
    there), not a copy: copying would write every record's ``raw`` once more (on 200,000 swap
    orders, over a second of a commit that then copies them again into the warehouse). The
    winners are picked by a window over the key and ordering columns only, kept as rowids."""
    cur = _q("cur_" + spec.table)
    typed = _q("typed_" + spec.table)
    keep = _q("keep_" + spec.table)
    partition = ", ".join(_q(k) for k in spec.key)
    terminal = spec.terminal_raw_statuses()
    if spec.has_status and terminal:
        rank = "CASE WHEN source_status IN (" + ", ".join(f"'{s}'" for s in terminal) + ") THEN 1 ELSE 0 END DESC, "
    else:
        rank = ""
    con.execute(
        f"CREATE OR REPLACE TABLE {keep} AS SELECT rowid AS _row FROM {typed} WHERE _reason IS NULL "
        f"QUALIFY row_number() OVER (PARTITION BY {partition} ORDER BY {rank}seq DESC, pos DESC) = 1"
    )
    kept, total = con.execute(f"SELECT (SELECT count(*) FROM {keep}), (SELECT count(*) FROM {typed})").fetchone()
    # every row kept (no invalid record, no key twice: the usual run): no filter to evaluate
    where = "" if kept == total else f" WHERE rowid IN (SELECT _row FROM {keep})"
    con.execute(f"CREATE OR REPLACE VIEW {cur} AS SELECT * EXCLUDE (_reason), rowid AS _typed_row FROM {typed}{where}")
