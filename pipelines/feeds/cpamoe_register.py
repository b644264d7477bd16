"""The register of leads we submitted to cpa.moe, fed by CSV files in ``CPAMOE_LEADS_DIR``.

cpa.moe only answers for the lead ids we send it, so the warehouse must know every lead we
submitted. Leads submitted elsewhere arrive as CSV files (header line with at least ``id``, and
optionally ``offer`` and ``submitted_at``); :func:`pipelines.feeds.cpamoe.submit_lead` registers
the ones we submit ourselves. Both land in ``cpamoe_leads`` through the same :data:`REGISTER_LEADS`
spec and the same :class:`~pipelines.warehouse.loader.StreamLoad` transaction machinery.

How a file is loaded (every rule is enforced in SQL, set-based, in a staging database):

- A file is identified by name + SHA-256 and loaded once. An already-loaded (name, hash) is
  skipped; the same content under another name is recorded as ``duplicate_file`` and not
  re-read; a changed file under a known name is loaded again as a new version and reported (its
  lines already registered are then rejected as duplicates, new lines are loaded).
- The file is read as UTF-8 (a BOM is dropped; undecodable bytes become U+FFFD, so the line is
  rejected rather than the file); the delimiter is ``,`` unless the header line has more ``;`` or
  tabs. Header names are matched case-insensitively. Columns other than ``id``, ``offer`` and
  ``submitted_at`` (phone, email, ip, name, ...) are never read into the warehouse: their names
  are listed in ``cpamoe_lead_files.ignored_columns``. A header without ``id`` rejects the file.
- Each line is checked: ``id`` present, at most 64 characters of ``A-Z a-z 0-9 . _ -`` (it is sent
  comma-separated to list.json) and not ``auto``; ``offer`` a whole number when present;
  ``submitted_at`` ISO-8601 (no zone: UTC) or Unix seconds when present; as many fields as the
  header; the id not repeated earlier in the file (or in a file loaded in the same run) and not
  already registered. Bad lines are reported by line number (the header is line 1; a quoted
  field spanning lines is reported at its first line); good lines are loaded.
- Lines are split by DuckDB a few MB at a time (a file with quotes goes through Python's csv
  reader and a plain CSV file in the run's staging folder instead), so memory does not grow
  with the file size, and everything from one run (good rows, the file records, the per-line
  errors) is committed in ONE warehouse transaction: a file is never half-loaded.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb

from pipelines.feeds.run import Fetched, SyncReport, run_stream
from pipelines.sources.cpamoe import ID_PATTERN, MAX_ID_LENGTH
from pipelines.warehouse.loader import CommitStep, StreamLoad
from pipelines.warehouse.staging import Field, TableSpec
from pipelines.warehouse import Warehouse

REGISTER_STREAM = "cpamoe_lead_files"
SUBMIT_STREAM = "cpamoe_submissions"
LOADED_COLUMNS = ("id", "offer", "submitted_at")
MAX_STORED_FIELD = 200  # longer values are cut while staging (they fail validation anyway)
ERRORS_KEPT_PER_FILE = 100  # in cpamoe_lead_files.errors; every one is in cpamoe_lead_file_errors

LogFn = Callable[[str], None]

# The staged rows both register writers (CSV files, submit_lead) hand to REGISTER_LEADS.
REGISTER_ROWS_DDL = """
CREATE OR REPLACE TABLE register_rows (
    seq BIGINT, pos BIGINT, rec JSON, reg_lead_id VARCHAR, reg_uid VARCHAR, reg_offer_id BIGINT,
    reg_submitted_at TIMESTAMPTZ, reg_from VARCHAR
)
"""

# Register rows: no status yet (the poll sets it). A lead registered again through add.json
# (cpa.moe accepted it, so it had not been submitted before) refreshes what add.json knows.
REGISTER_LEADS = TableSpec(
    table="cpamoe_leads",
    key=("lead_id",),
    source=None,
    created_field=None,
    records_sql="SELECT *, CAST(NULL AS VARCHAR) AS listed_status FROM register_rows",
    fields=(
        Field("lead_id", sql="reg_lead_id"),
        Field("uid", sql="reg_uid"),
        Field("offer_id", sql="reg_offer_id"),
        Field("submitted_at", sql="reg_submitted_at"),
        Field("registered_from", sql="reg_from"),
    ),
    update_columns=("uid", "offer_id", "submitted_at", "registered_from"),
)


# -- reading files -------------------------------------------------------------------------


class _HashingReader(io.RawIOBase):
    """A binary file that hashes exactly the bytes it hands on (the bytes that were parsed)."""

    def __init__(self, raw: io.BufferedReader, digest: Any) -> None:
        self._raw = raw
        self._digest = digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = self._raw.readinto(buffer)
        if n:
            self._digest.update(memoryview(buffer)[:n])
        return n or 0


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _delimiter(header_line: str) -> str:
    counts = {d: header_line.count(d) for d in (",", ";", "\t")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] > counts[","] else ","


class FileRejected(Exception):
    """The whole file cannot be loaded (no header, no ``id`` column, malformed CSV)."""


@dataclass
class ParsedFile:
    expected_fields: int
    ignored_columns: list[str]
    rows: int
    sha256: str


def _open_text(binary: io.BufferedReader, digest: Any) -> io.TextIOWrapper:
    """The file as text, hashing exactly the bytes read (UTF-8, BOM dropped, bad bytes U+FFFD)."""
    return io.TextIOWrapper(
        io.BufferedReader(_HashingReader(binary, digest)), encoding="utf-8-sig", errors="replace", newline=""
    )


def stage_csv(con: duckdb.DuckDBPyConnection, path: Path, file_name: str, scratch: Path) -> ParsedFile:
    """Append the file's lines to ``csv_rows``; raise FileRejected for the file.

    Only the ``id``/``offer``/``submitted_at`` columns are kept; nothing else is staged. Python
    reads the header line. The lines after it are split by DuckDB, a few MB per statement
    (:func:`_stage_plain_lines`), when the file has nothing only a CSV parser reads exactly (a
    quote, a lone CR, a NUL, a line longer than the csv module's field limit); otherwise, as
    before, Python's ``csv`` reader parses it (its line numbers, quoted line breaks and field
    counts are what the rules above report) and DuckDB appends its kept cells from ``scratch``.
    Both ways stage the same rows; the plain one costs no Python per line (500,000 lines: 0.5 s
    instead of 1.5 s).
    """
    with path.open("rb") as binary:
        digest = hashlib.sha256()
        text = _open_text(binary, digest)
        first = text.readline()
        if not first.strip():
            raise FileRejected("the file is empty or its first line is blank: the first line must name the columns, e.g. id,offer,submitted_at")
        delimiter = _delimiter(first)
        header = next(csv.reader([first], delimiter=delimiter))
        names = [h.strip().lower() for h in header]
        if "id" not in names:
            shown = ", ".join(h.strip()[:30] for h in header[:10])
            raise FileRejected(
                f"no 'id' column in the header line (found: {shown}); the first line must name the "
                "columns, e.g. id,offer,submitted_at"
            )
        repeated = sorted({n for n in names if n in LOADED_COLUMNS and names.count(n) > 1})
        if repeated:
            raise FileRejected(f"column(s) {', '.join(repeated)} appear more than once in the header")
        index = {n: names.index(n) for n in LOADED_COLUMNS if n in names}
        ignored = [h.strip()[:60] for h, n in zip(header, names, strict=True) if n not in LOADED_COLUMNS]
        if '"' not in first:
            try:
                rows = _stage_plain_lines(con, text, file_name, delimiter, index)
                return ParsedFile(len(header), ignored, rows, digest.hexdigest())
            except _NeedsCsvReader:
                con.execute("DELETE FROM csv_rows WHERE file_name = ?", [file_name])
        # from the top again, with Python's csv reader
        text.detach()
        binary.seek(0)
        digest = hashlib.sha256()
        text = _open_text(binary, digest)
        text.readline()
        rows = _stage_with_csv_reader(con, text, file_name, delimiter, index, scratch)
    return ParsedFile(len(header), ignored, rows, digest.hexdigest())


class _NeedsCsvReader(Exception):
    """The file has what only Python's csv reader reads exactly (see :func:`_stage_plain_lines`)."""


PLAIN_CHUNK_CHARS = 4_000_000  # characters of the file per statement
CSV_FIELD_LIMIT = csv.field_size_limit()


def _stage_plain_lines(
    con: duckdb.DuckDBPyConnection, text: io.TextIOBase, file_name: str, delimiter: str, index: dict[str, int]
) -> int:
    """Stage the lines after the header as DuckDB splits them; return how many were staged.

    Without a quote character a CSV line is its fields joined by the delimiter, so splitting
    the line stages what the csv reader would, line number and field count included. A chunk
    with a quote, a CR not followed by LF, a NUL or a line longer than the csv module's field
    limit raises _NeedsCsvReader: those are read the csv reader's way (the caller starts over)."""
    cells = ", ".join(
        f"CASE WHEN len(f) > {index[n]} THEN left(f[{index[n] + 1}], {MAX_STORED_FIELD}) END" if n in index else "NULL"
        for n in LOADED_COLUMNS
    )
    sql = f"""
        INSERT INTO csv_rows
        SELECT $name, $first + i - 1, len(f), {cells}
        FROM (
            SELECT i, string_split(l, $delim) AS f
            FROM (SELECT unnest(lines) AS l, generate_subscripts(lines, 1) AS i
                  FROM (SELECT string_split($text, chr(10)) AS lines))
            WHERE l <> '' AND (length(l) <= {CSV_FIELD_LIMIT} OR error('line longer than the field limit'))
        )
    """
    line, rows, carry = 2, 0, ""  # the header was line 1
    while True:
        block = text.read(PLAIN_CHUNK_CHARS)
        data = carry + block
        cut = data.rfind("\n") + 1 if block else len(data)  # whole lines only, but at the end
        data, carry = data[:cut], data[cut:]
        if len(carry) > CSV_FIELD_LIMIT:
            raise _NeedsCsvReader
        if data:
            data = data.replace("\r\n", "\n")
            if '"' in data or "\r" in data or "\x00" in data:
                raise _NeedsCsvReader
            try:
                rows += con.execute(sql, {"name": file_name, "first": line, "delim": delimiter, "text": data}).fetchone()[0]
            except duckdb.InvalidInputException:
                raise _NeedsCsvReader from None
            line += data.count("\n")
        if not block:
            return rows


def _stage_with_csv_reader(
    con: duckdb.DuckDBPyConnection, text: io.TextIOBase, file_name: str, delimiter: str, index: dict[str, int],
    scratch: Path,
) -> int:
    """Stage the lines after the header as Python's csv reader parses them (quoted fields, line
    breaks inside quotes); the kept cells go through ``scratch``, a plain CSV that DuckDB's reader
    appends in one statement (handing DuckDB Python lists cost more than parsing the file)."""
    present = [index[n] for n in LOADED_COLUMNS if n in index]
    try:
        with scratch.open("w", encoding="utf-8", newline="") as out:
            rows = _copy_cells(text, delimiter, present, csv.writer(out, quoting=csv.QUOTE_ALL))
    except csv.Error as exc:
        raise FileRejected(f"malformed CSV: {exc}") from None
    # Every cell was written quoted, so an empty one is '' (allow_quoted_nulls=false); a cell the
    # line does not have (no such column, or a short line) is NULL, as the line's field count says.
    cells = [
        f"CASE WHEN nfields > {index[n]} THEN left(c{present.index(index[n])}, {MAX_STORED_FIELD}) END"
        if n in index else "NULL"
        for n in LOADED_COLUMNS
    ]
    columns = {"line": "BIGINT", "nfields": "BIGINT", **{f"c{k}": "VARCHAR" for k in range(len(present))}}
    con.execute(
        f"""
        INSERT INTO csv_rows
        SELECT $name, line, nfields, {", ".join(cells)}
        FROM read_csv($file, header = false, delim = ',', quote = '"', escape = '"',
                      allow_quoted_nulls = false, auto_detect = false, columns = {columns})
        """,
        {"name": file_name, "file": str(scratch)},
    )
    scratch.unlink()
    return rows


def _copy_cells(text: io.TextIOBase, delimiter: str, present: list[int], writer: Any) -> int:
    """Write ``line, field count, *cells at present`` per non-blank line (a line too short for a
    cell gets '' there); return how many lines were written. The cells are picked by an
    ``itemgetter`` (no Python per cell) and cut to MAX_STORED_FIELD by the SQL that reads them."""
    reader = csv.reader(text, delimiter=delimiter)
    pick = operator.itemgetter(*present)
    if len(present) == 1:
        pick = lambda fields, one=pick: (one(fields),)  # noqa: E731 - itemgetter of one index is no tuple
    need = max(present) + 1
    write = writer.writerow
    start, rows = 2, 0  # the header was line 1
    try:
        for fields in reader:
            if fields:  # a blank line: nothing to load, nothing to report
                n = len(fields)
                if n >= need:
                    write((start, n, *pick(fields)))
                else:
                    write((start, n, *(fields[i] if i < n else "" for i in present)))
                rows += 1
            start = reader.line_num + 2  # reader.line_num counts from the line after the header
    except csv.Error as exc:
        raise csv.Error(f"line {start}: {exc}") from None
    return rows


# -- validating ----------------------------------------------------------------------------

STAGING_DDL = """
CREATE OR REPLACE TABLE csv_rows (
    file_name VARCHAR, line BIGINT, nfields BIGINT, id VARCHAR, offer VARCHAR, submitted_at VARCHAR
);
CREATE OR REPLACE TABLE register_files (
    file_name VARCHAR, sha256 VARCHAR, size_bytes BIGINT, file_order BIGINT, outcome VARCHAR,
    expected_fields BIGINT, message VARCHAR, ignored_columns VARCHAR
);
"""

# One row per staged line with its verdict. Duplicates are judged among otherwise valid lines not
# yet registered, so a bad first occurrence does not cost the good line that repeats it.
VALIDATE_SQL = f"""
CREATE OR REPLACE TABLE register_checked AS
WITH t AS (
    SELECT c.file_name, c.line, c.nfields, c.id AS id_text, c.offer AS offer_text_raw,
           c.submitted_at AS submitted_text_raw, f.file_order, f.expected_fields,
           trim(c.id) AS lead_id, nullif(trim(c.offer), '') AS offer_text,
           nullif(trim(c.submitted_at), '') AS submitted_text
    FROM csv_rows AS c JOIN register_files AS f USING (file_name)
), typed AS (
    SELECT *,
           CASE WHEN regexp_full_match(offer_text, '[0-9]{{1,18}}') THEN CAST(offer_text AS BIGINT) END AS offer_id,
           CASE WHEN regexp_full_match(submitted_text, '[0-9]{{9,10}}')
                THEN to_timestamp(CAST(submitted_text AS BIGINT))
                ELSE TRY_CAST(submitted_text AS TIMESTAMPTZ) END AS submitted_ts
    FROM t
), judged AS (
    SELECT *, NULLIF(concat_ws('; ',
        CASE WHEN nfields <> expected_fields
             THEN format('expected {{}} fields as in the header, got {{}}', expected_fields, nfields) END,
        CASE WHEN lead_id IS NULL OR lead_id = '' THEN 'id is missing'
             WHEN length(lead_id) > {MAX_ID_LENGTH} THEN 'id is longer than {MAX_ID_LENGTH} characters'
             WHEN NOT regexp_full_match(lead_id, '{ID_PATTERN}')
             THEN 'id may only contain letters, digits, ".", "_" and "-"'
             WHEN lower(lead_id) = 'auto' THEN '"auto" is not a lead id' END,
        CASE WHEN offer_text IS NOT NULL AND offer_id IS NULL
             THEN 'offer is not a whole number: ' || left(offer_text, 40) END,
        CASE WHEN submitted_text IS NOT NULL AND submitted_ts IS NULL
             THEN 'submitted_at is not a timestamp: ' || left(submitted_text, 40) END
    ), '') AS line_error
    FROM typed
), known AS (
    SELECT j.* REPLACE (coalesce(j.line_error,
               CASE WHEN g.lead_id IS NOT NULL THEN 'id ' || j.lead_id || ' is already registered (from '
                    || coalesce(g.registered_from, 'an earlier load') || ')' END) AS line_error)
    FROM judged AS j LEFT JOIN registered AS g ON g.lead_id = j.lead_id
), ranked AS (
    SELECT *,
           row_number() OVER w AS occurrence,
           first_value(file_name) OVER w AS first_file,
           first_value(line) OVER w AS first_line
    FROM known
    WINDOW w AS (PARTITION BY line_error IS NULL, lead_id ORDER BY file_order, line)
)
SELECT file_name, line, lead_id, offer_id, submitted_ts, id_text, offer_text_raw, submitted_text_raw,
       CASE WHEN line_error IS NOT NULL THEN line_error
            WHEN occurrence > 1 AND first_file = file_name
            THEN 'duplicate id ' || lead_id || ': first on line ' || first_line
            WHEN occurrence > 1
            THEN 'duplicate id ' || lead_id || ': first in ' || first_file || ' line ' || first_line
       END AS error
FROM ranked
"""

REGISTER_ROWS_SQL = """
INSERT INTO register_rows
SELECT 0, line,
       json_object('id', id_text, 'offer', offer_text_raw, 'submitted_at', submitted_text_raw,
                   'file', file_name, 'line', line),
       lead_id, NULL, offer_id, submitted_ts, file_name
FROM register_checked WHERE error IS NULL
"""

SUMMARY_SQL = f"""
CREATE OR REPLACE TABLE register_summary AS
SELECT f.file_name, f.sha256, f.size_bytes, f.file_order, f.outcome, f.message, f.ignored_columns,
       count(c.line) FILTER (WHERE c.error IS NULL) AS rows_loaded,
       count(c.line) FILTER (WHERE c.error IS NOT NULL) AS rows_rejected,
       to_json(list({{'line': c.line, 'error': c.error}} ORDER BY c.line)
               FILTER (WHERE c.error IS NOT NULL)[1:{ERRORS_KEPT_PER_FILE}]) AS errors
FROM register_files AS f LEFT JOIN register_checked AS c USING (file_name)
GROUP BY ALL
"""


def _write_files(run_id: str) -> CommitStep:
    """Record the files and their rejected lines in the register's commit transaction."""

    def write(con: duckdb.DuckDBPyConnection, now: datetime) -> None:
        params = {"now": now, "run": run_id}
        con.execute(
            """
            INSERT OR REPLACE INTO wh.main.cpamoe_lead_files
                (file_name, sha256, size_bytes, loaded_at, outcome, rows_loaded, rows_rejected,
                 message, ignored_columns, errors, run_id)
            SELECT file_name, sha256, size_bytes, $now, outcome, rows_loaded, rows_rejected, message,
                   CAST(ignored_columns AS JSON), coalesce(errors, '[]'), $run
            FROM register_summary
            """,
            params,
        )
        con.execute(
            """
            INSERT INTO wh.main.cpamoe_lead_file_errors (file_name, sha256, line, lead_id, error, run_id)
            SELECT c.file_name, f.sha256, c.line, left(c.lead_id, 80), c.error, $run
            FROM register_checked AS c JOIN register_files AS f USING (file_name)
            WHERE c.error IS NOT NULL
            """,
            {"run": run_id},
        )

    return CommitStep("record the lead files and their rejected lines", write)


# -- the register run ----------------------------------------------------------------------


@dataclass
class FileSummary:
    file_name: str
    outcome: str  # loaded | rejected | duplicate_file
    rows_loaded: int
    rows_rejected: int
    message: str | None
    errors: list[tuple[int, str]]


@dataclass
class RegisterReport(SyncReport):
    files: list[FileSummary] = field(default_factory=list)
    already_loaded: int = 0
    directory: str = ""

    def metadata(self) -> dict[str, object]:
        meta = super().metadata()
        meta["leads_dir"] = self.directory
        meta["files_new"] = len(self.files)
        meta["files_already_loaded"] = self.already_loaded
        meta["files_rejected"] = sum(f.outcome == "rejected" for f in self.files)
        meta["rows_loaded"] = sum(f.rows_loaded for f in self.files)
        meta["rows_rejected"] = sum(f.rows_rejected for f in self.files)
        lines = []
        for f in self.files:
            if f.message:
                lines.append(f"{f.file_name}: {f.message}")
            lines.extend(f"{f.file_name}:{line}: {error}" for line, error in f.errors)
        if lines:
            meta["problems"] = "\n".join(lines[:100]) + ("\n..." if len(lines) > 100 else "")
        return meta


def _csv_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir()
        if p.is_file() and p.suffix.lower() == ".csv" and not p.name.startswith(".")
    )


def load_lead_register(
    *, warehouse: Warehouse, leads_dir: str, run_id: str, log: LogFn = lambda _m: None
) -> RegisterReport:
    """Load every new CSV file of ``leads_dir`` into ``cpamoe_leads`` (one transaction)."""
    directory = Path(leads_dir)
    report = RegisterReport(stream=REGISTER_STREAM, mode="files", result=None, directory=str(directory))
    if not directory.is_dir():
        log(f"cpa.moe lead register: {directory} does not exist; no CSV files to load")
        return report
    candidates = [(p, file_sha256(p), p.stat().st_size) for p in _csv_files(directory)]
    if not candidates:
        log(f"cpa.moe lead register: no CSV files in {directory}")
        return report

    def fetch(load: StreamLoad) -> Fetched | None:
        con = load.con
        assert con is not None
        load.read_state({"known_files": "SELECT file_name, sha256, loaded_at FROM wh.main.cpamoe_lead_files"})
        known = load.query("SELECT file_name, sha256, loaded_at FROM known_files")
        loaded_pairs = {(name, sha) for name, sha, _ in known}
        by_sha = {sha: (name, at) for name, sha, at in known}
        by_name = {name: at for name, _, at in known}
        con.execute(STAGING_DDL)
        con.execute(REGISTER_ROWS_DDL)

        files = []
        for order, (path, sha, size) in enumerate(candidates):
            name = path.name
            if (name, sha) in loaded_pairs:
                report.already_loaded += 1
                continue
            outcome, message, ignored, expected = "loaded", None, [], 0
            if sha in by_sha:
                other, at = by_sha[sha]
                outcome, message = "duplicate_file", f"same content as {other} (loaded {at:%Y-%m-%d %H:%M}Z); not read again"
            else:
                if name in by_name:
                    message = (
                        f"content changed since it was loaded at {by_name[name]:%Y-%m-%d %H:%M}Z; "
                        "loaded again as a new version (lines already registered are reported as duplicates)"
                    )
                try:
                    parsed = stage_csv(con, path, name, load.staging_dir / "register-rows.csv")
                    expected, ignored = parsed.expected_fields, parsed.ignored_columns
                    if parsed.sha256 != sha:
                        con.execute("DELETE FROM csv_rows WHERE file_name = ?", [name])
                        report.warnings.append(f"{name}: changed while being read; it will be loaded next run")
                        continue
                except FileRejected as exc:
                    con.execute("DELETE FROM csv_rows WHERE file_name = ?", [name])
                    outcome, message = "rejected", str(exc)
            by_sha.setdefault(sha, (name, datetime.now(UTC)))
            files.append((name, sha, size, order, outcome, expected, message, _json_list(ignored)))
            if outcome != "loaded" or message:
                report.warnings.append(f"{name}: {message}")
        if not files:
            return None

        con.executemany("INSERT INTO register_files VALUES (?, ?, ?, ?, ?, ?, ?, ?)", files)
        # only the ids of these files are looked up in the warehouse, not the whole register
        load.read_state(
            {
                "registered": "SELECT l.lead_id, l.registered_from FROM wh.main.cpamoe_leads AS l "
                "WHERE l.lead_id IN (SELECT trim(id) FROM csv_rows)"
            }
        )
        con.execute(VALIDATE_SQL)
        con.execute(REGISTER_ROWS_SQL)
        con.execute(SUMMARY_SQL)
        load.records_received = con.execute("SELECT count(*) FROM register_rows").fetchone()[0]
        report.files = _summaries(con)
        for s in report.files:
            if s.rows_rejected:
                report.warnings.append(f"{s.file_name}: {s.rows_rejected} line(s) rejected, e.g. line {s.errors[0][0]}: {s.errors[0][1]}")
            log(f"{s.file_name}: {s.outcome}, {s.rows_loaded} lead(s) loaded, {s.rows_rejected} line(s) rejected")
        return Fetched(cursor=None, mode="files", warnings=report.warnings, steps=[_write_files(run_id)])

    return run_stream(
        warehouse=warehouse, stream=REGISTER_STREAM, specs=[REGISTER_LEADS], run_id=run_id, fetch=fetch,
        report=report,
    )


def _json_list(values: list[str]) -> str:
    return json.dumps(values)


def _summaries(con: duckdb.DuckDBPyConnection) -> list[FileSummary]:
    rows = con.execute(
        "SELECT file_name, outcome, rows_loaded, rows_rejected, message FROM register_summary ORDER BY file_order"
    ).fetchall()
    errors: dict[str, list[tuple[int, str]]] = {}
    for name, line, error in con.execute(
        "SELECT file_name, line, error FROM register_checked WHERE error IS NOT NULL "
        "QUALIFY row_number() OVER (PARTITION BY file_name ORDER BY line) <= 20 ORDER BY file_name, line"
    ).fetchall():
        errors.setdefault(name, []).append((line, error))
    return [FileSummary(n, o, loaded, rejected, m, errors.get(n, [])) for n, o, loaded, rejected, m in rows]


# -- one lead from add.json ----------------------------------------------------------------


def register_submitted_lead(
    warehouse: Warehouse,
    *,
    lead_id: str,
    uid: str | None,
    offer_id: int | None,
    submitted_at: datetime,
    run_id: str,
) -> None:
    """Record a lead cpa.moe accepted (no customer data) in ``cpamoe_leads``, in one transaction."""
    def fetch(load: StreamLoad) -> Fetched:
        con = load.con
        assert con is not None
        con.execute(REGISTER_ROWS_DDL)
        con.execute(
            """
            INSERT INTO register_rows
            SELECT 0, 0, json_object('id', $id, 'uid', $uid, 'offer', $offer, 'submitted_at', $at, 'via', 'add.json'),
                   $id, $uid, $offer, $at, 'add.json'
            """,
            {"id": lead_id, "uid": uid, "offer": offer_id, "at": submitted_at},
        )
        load.records_received = 1
        return Fetched(cursor=None, mode="add.json", requests=1)

    run_stream(warehouse=warehouse, stream=SUBMIT_STREAM, specs=[REGISTER_LEADS], run_id=run_id, fetch=fetch)


__all__ = [
    "ID_PATTERN",
    "MAX_ID_LENGTH",
    "REGISTER_LEADS",
    "RegisterReport",
    "load_lead_register",
    "register_submitted_lead",
]
