"""Where the warehouse lives and how to open it: a local DuckDB file, MotherDuck or DuckLake.

``WAREHOUSE_PATH`` is a single setting: a file path (``data/warehouse.duckdb``), a MotherDuck
database (``md:my_db``) or a DuckLake catalog (``ducklake:metadata.ducklake``). Everything that
writes goes through :meth:`Warehouse.attach`, which ATTACHes that location to a local DuckDB
connection, so the same SQL runs against all three.

DuckDB lets one process hold a database file for writing; a second writer (or a DuckDB shell left
open) gets a lock error. Opening therefore waits for the lock, up to ``lock_timeout`` seconds,
rather than failing the run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import sqlalchemy as sa

from models.schema import EXISTING_COLUMNS_SQL, create_schema, missing_columns

log = logging.getLogger(__name__)

REMOTE_PREFIXES = ("md:", "motherduck:", "ducklake:")

# One DuckDB instance per process may hold a database file: a second one attaching it (another
# feed's lane, pipelines/assets/feeds.py) fails at once with "Unique file handle conflict". Threads
# of one process therefore take turns per location; other processes still meet the file lock.
_IN_PROCESS: dict[str, threading.RLock] = {}
_IN_PROCESS_GUARD = threading.Lock()


def _in_process_lock(key: str) -> threading.RLock:
    with _IN_PROCESS_GUARD:
        return _IN_PROCESS.setdefault(key, threading.RLock())


def configure(con: duckdb.DuckDBPyConnection, memory_limit: str, threads: int) -> None:
    """Session settings every connection uses: UTC, bounded memory, bounded threads, and no
    progress bar (a step's output is not captured, so DuckDB's bar would draw over `make run`'s)."""
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET enable_progress_bar = false")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute(f"SET threads = {int(threads)}")
    con.execute("SET preserve_insertion_order = false")


def _is_lock_error(exc: Exception) -> bool:
    inner = getattr(exc, "orig", None) or exc
    if not isinstance(inner, (duckdb.IOException, duckdb.ConnectionException)):
        return False
    text = str(inner).lower()
    return "lock" in text and ("conflicting" in text or "could not set" in text)


class Warehouse:
    def __init__(
        self,
        location: str,
        *,
        memory_limit: str = "160MB",
        threads: int = 2,
        lock_timeout: float = 600.0,
        on_wait: Callable[[str], None] | None = None,
    ) -> None:
        if not location or not location.strip():
            raise ValueError("WAREHOUSE_PATH is empty: set it to a DuckDB file path, md:<db> or ducklake:<catalog>")
        self.location = location.strip()
        self.memory_limit = memory_limit
        self.threads = threads
        self.lock_timeout = lock_timeout
        self.on_wait = on_wait

    @property
    def is_local_file(self) -> bool:
        return not self.location.startswith(REMOTE_PREFIXES) and self.location != ":memory:"

    @property
    def key(self) -> str:
        """The location as one string per database: a local file's absolute path."""
        return str(Path(self.location).resolve()) if self.is_local_file else self.location

    @property
    def staging_root(self) -> Path:
        """Staging databases live beside a local warehouse (same disk), else in the temp dir."""
        if self.is_local_file:
            return Path(self.location).resolve().parent / ".staging"
        return Path(".staging").resolve()

    def _prepare(self) -> None:
        if self.is_local_file:
            Path(self.location).parent.mkdir(parents=True, exist_ok=True)

    def _with_lock_wait(self, action: Callable[[], object], what: str) -> object:
        deadline = time.monotonic() + self.lock_timeout
        # Another step's commit or read holds the lock for well under a second or two: checking
        # often at first (a failed open costs a few ms) starts sooner than doubling from 0.2 s did
        # (a lock held 0.7 s cost a wait of 1.4 s: the CPC step of the large bench waited 0.9 s
        # for the Metapic lane's commit), and waits of minutes still poll once a second.
        delay = 0.05
        warned = False
        while True:
            try:
                return action()
            except Exception as exc:  # duckdb's own, or wrapped by SQLAlchemy (exc.orig)
                if not _is_lock_error(exc) or time.monotonic() >= deadline:
                    raise
                if not warned:
                    message = (
                        f"waiting for the warehouse lock on {self.location} ({what}); another "
                        "process (a sync or a DuckDB shell) holds it"
                    )
                    log.warning(message)
                    if self.on_wait:
                        self.on_wait(message)
                    warned = True
                time.sleep(delay)
                delay = min(delay * 1.5, 1.0)

    def _open_config(self) -> dict[str, str]:
        """Settings a DuckDB instance of ours opens with (DuckDB's default memory limit is 80 % of RAM)."""
        return {"memory_limit": self.memory_limit, "threads": str(int(self.threads))}

    def attach_sql(self, alias: str, read_only: bool = False) -> str:
        escaped = self.location.replace("'", "''")
        options = " (READ_ONLY)" if read_only else ""
        return f"ATTACH '{escaped}' AS {alias}{options}"

    @contextmanager
    def attach(
        self, con: duckdb.DuckDBPyConnection, alias: str = "wh", read_only: bool = False
    ) -> Iterator[str]:
        """ATTACH the warehouse to ``con`` as ``alias`` for the duration of the block (other
        threads of this process wait for it: see ``_IN_PROCESS``)."""
        self._prepare()
        with _in_process_lock(self.key):
            self._with_lock_wait(lambda: con.execute(self.attach_sql(alias, read_only)), "attach")
            try:
                yield alias
            finally:
                con.execute(f"DETACH {alias}")

    @contextmanager
    def connect(self, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection whose default catalog is the warehouse (for views, checks and queries);
        other threads of this process wait for it to close."""
        with _in_process_lock(self.key), self._connect(read_only) as con:
            yield con

    @contextmanager
    def _connect(self, read_only: bool) -> Iterator[duckdb.DuckDBPyConnection]:
        self._prepare()
        if self.is_local_file:
            # bounded from the open on: replaying a WAL or checkpointing happens before any SET
            con = self._with_lock_wait(
                lambda: duckdb.connect(self.location, read_only=read_only, config=self._open_config()), "connect"
            )
        else:
            con = duckdb.connect()
            self._with_lock_wait(lambda: con.execute(self.attach_sql("wh", read_only)), "attach")
            con.execute("USE wh")
        try:
            configure(con, self.memory_limit, self.threads)
            yield con
        finally:
            con.close()

    def sqlalchemy_url(self) -> str:
        if self.is_local_file:
            return f"duckdb:///{self.location}"
        return "duckdb:///:memory:"

    def engine(self) -> sa.Engine:
        """A SQLAlchemy engine on the warehouse (duckdb-engine). Dispose it when done: it holds
        the file lock while open."""
        self._prepare()
        engine = sa.create_engine(
            self.sqlalchemy_url(), poolclass=sa.pool.NullPool, connect_args={"config": self._open_config()}
        )
        if not self.is_local_file:
            attach = self.attach_sql("wh")

            @sa.event.listens_for(engine, "connect")
            def _attach(dbapi_conn, _record):  # pragma: no cover - needs a remote catalog
                dbapi_conn.execute(attach)
                dbapi_conn.execute("USE wh")

        return engine

    _ensured: set[str] = set()  # locations whose schema this process already checked

    def ensure_schema(self) -> None:
        """Create the enum type and tables if missing (idempotent; once per process and location).

        Tables are only ever created or given new columns, never dropped, so once checked a
        location stays valid for the life of the process.
        """
        if self._schema_known():
            return  # checked without the lock: a commit of the other lane may be holding it

        def create() -> None:
            with self._connect(read_only=False) as con:
                if not missing_columns(con.execute(EXISTING_COLUMNS_SQL).fetchall()):
                    return  # the usual case, answered without starting a SQLAlchemy engine (~0.1 s a step)
            engine = self.engine()
            try:
                create_schema(engine)
            finally:
                engine.dispose()

        with _in_process_lock(self.key):
            if self._schema_known():
                return  # another thread of this process created it meanwhile
            self._with_lock_wait(create, "create schema")
            Warehouse._ensured.add(self.key)

    def _schema_known(self) -> bool:
        return self.key in Warehouse._ensured and (not self.is_local_file or Path(self.location).exists())
