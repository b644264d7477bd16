"""Declarative record specs, turned into the SQL that types and validates staged JSON records.

Each source describes its tables as :class:`TableSpec`\\ s: which JSON path feeds which column and
what JSON type it must have. DuckDB then does the per-record work in one set-based statement (no
Python loop per record): it extracts every column, and for every record that has a field of the
wrong type it writes the reason instead, so the record goes to the ``quarantine`` table rather
than being silently coerced. A missing optional field is simply NULL; unknown fields stay in
``raw``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from models.status import status_case_sql, terminal_raw_statuses

# JSON types DuckDB's json_type() reports, per field kind.
_INTS = ("BIGINT", "UBIGINT")
_NUMS = ("BIGINT", "UBIGINT", "DOUBLE")

KINDS = {"string", "id", "integer", "number", "decimal_text", "boolean", "timestamp", "epoch", "date", "json"}


@dataclass(frozen=True)
class Field:
    """One typed column taken from a JSON record.

    ``path`` is a DuckDB JSON path (``$.clicks.ordered``). ``epoch_fallback`` names the path of the
    Unix-seconds twin of a timestamp (``$.created_at_ts``), used when the ISO value is absent.
    ``sql`` replaces the path with a computed expression over ``rec`` (no type validation).
    """

    name: str
    path: str = ""
    kind: str = "string"
    required: bool = False
    epoch_fallback: str | None = None
    sql: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown field kind {self.kind!r}")
        if not self.path and self.sql is None:
            raise ValueError(f"field {self.name} needs a path or sql")


@dataclass(frozen=True)
class TableSpec:
    """How one warehouse table is fed from staged records.

    ``source``: the ``status_history.source`` of this table's entities (None: the table has no
    status, e.g. a child table). ``status_path``: where the raw status is in the record; when the
    record has none, the status filter it was listed under is used. ``records_sql``: a query over
    the staged ``recs`` table producing this table's records (default: the records themselves),
    which lets a child table unnest parts of its parent. ``update_columns``: columns a re-read may
    overwrite (default: all), so a feed can refresh status columns without clobbering columns that
    came from elsewhere. ``step_columns``: the table's columns that no record fills but a feed's
    named commit step writes (``found``, ``last_checked_at``...); with ``fields`` and the entity
    bookkeeping columns they are the table's columns, which ``tests/test_models.py`` holds equal
    to the SQLAlchemy table in ``models/``.
    """

    table: str
    key: tuple[str, ...]
    fields: tuple[Field, ...]
    source: str | None = None
    status_path: str | None = "$.status"
    created_field: str | None = "created_at"
    records_sql: str | None = None
    update_columns: tuple[str, ...] | None = None
    initial_statuses: frozenset[str] = field(default_factory=lambda: frozenset({"pending"}))
    step_columns: tuple[str, ...] = ()

    @property
    def columns(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def has_status(self) -> bool:
        return self.source is not None

    def entity_id_sql(self, alias: str = "") -> str:
        prefix = f"{alias}." if alias else ""
        parts = [f"CAST({prefix}{_q(k)} AS VARCHAR)" for k in self.key]
        return parts[0] if len(parts) == 1 else "concat_ws(':', " + ", ".join(parts) + ")"

    def terminal_raw_statuses(self) -> list[str]:
        if not self.source:
            return []
        return list(terminal_raw_statuses(self.source))


def _q(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _types(kinds: tuple[str, ...]) -> str:
    return "(" + ", ".join(_lit(k) for k in kinds) + ")"


class _Paths:
    """Every JSON path a spec reads, extracted with two parses per record.

    DuckDB's JSON functions parse the whole document on every call, so reading forty fields with
    forty calls costs forty parses per record. ``json_type`` and ``json_extract_string`` also take a
    list of paths and answer all of them from one parse, so a record is parsed twice (types, texts)
    whatever the number of fields; the fields then read list elements. This replaced one
    ``json_transform`` to JSON leaves followed by two calls per leaf (100,000 swap sides on one
    thread: the whole typing statement 1.31 s -> 1.13 s, identical output).
    """

    def __init__(self, paths: list[str]) -> None:
        self.paths = list(dict.fromkeys(paths))

    def jt(self, path: str) -> str:
        """Column holding the JSON type of ``path``'s value (NULL when absent)."""
        return f"_t{self.paths.index(path)}"

    def s(self, path: str) -> str:
        """Column holding ``path``'s value as text."""
        return f"_s{self.paths.index(path)}"

    def select_list(self, rec: str = "rec") -> str:
        """The two lists (types, texts), one parse of ``rec`` each."""
        if not self.paths:
            return "NULL AS _types, NULL AS _texts"
        listed = "[" + ", ".join(_lit(p) for p in self.paths) + "]"
        return f"json_type({rec}, {listed}) AS _types, json_extract_string({rec}, {listed}) AS _texts"

    def leaf_columns(self) -> str:
        """Each path's JSON type and text as a column of its own (then referred to by name)."""
        cols = [f"_types[{i + 1}] AS _t{i}, _texts[{i + 1}] AS _s{i}" for i in range(len(self.paths))]
        return ", ".join(cols) if cols else "NULL AS _t"


def field_sql(f: Field, paths: _Paths, rec: str = "rec") -> tuple[str, str | None]:
    """(value expression, invalid-condition expression or None) for one field."""
    if f.sql is not None:
        return f.sql, None
    jt = paths.jt(f.path)
    s = paths.s(f.path)
    present = f"({jt} IS NOT NULL AND {jt} <> 'NULL')"
    kind = f.kind
    if kind == "string":
        value, ok = s, f"{jt} = 'VARCHAR'"
    elif kind == "id":
        value, ok = s, f"{jt} IN {_types(('VARCHAR',) + _INTS)}"
    elif kind == "integer":
        value = f"COALESCE(TRY_CAST({s} AS BIGINT), TRY_CAST(TRY_CAST({s} AS DOUBLE) AS BIGINT))"
        ok = (
            f"(({jt} IN {_types(_INTS)} AND TRY_CAST({s} AS BIGINT) IS NOT NULL) OR "
            f"({jt} = 'DOUBLE' AND TRY_CAST({s} AS DOUBLE) = floor(TRY_CAST({s} AS DOUBLE)) "
            f"AND abs(TRY_CAST({s} AS DOUBLE)) < 9e15))"
        )
    elif kind in ("number", "decimal_text"):
        value = (
            f"COALESCE(TRY_CAST({s} AS DECIMAL(18,6)), "
            f"TRY_CAST(TRY_CAST({s} AS DOUBLE) AS DECIMAL(18,6)))"
        )
        allowed = _NUMS + (("VARCHAR",) if kind == "decimal_text" else ())
        ok = f"({jt} IN {_types(allowed)} AND {value} IS NOT NULL)"
    elif kind == "boolean":
        value = f"CASE WHEN {jt} = 'BOOLEAN' THEN CAST({s} AS BOOLEAN) WHEN {s} IN ('0', '1') THEN {s} = '1' END"
        ok = f"({jt} = 'BOOLEAN' OR ({jt} IN {_types(_INTS)} AND {s} IN ('0', '1')))"
    elif kind == "timestamp":
        parsed = f"TRY_CAST({s} AS TIMESTAMPTZ)"
        ok = f"({jt} = 'VARCHAR' AND {parsed} IS NOT NULL)"
        if f.epoch_fallback:
            fb_t = paths.jt(f.epoch_fallback)
            fb_s = paths.s(f.epoch_fallback)
            fb_ok = f"{fb_t} IN {_types(_INTS)}"
            fb_val = f"CASE WHEN {fb_ok} THEN to_timestamp(TRY_CAST({fb_s} AS BIGINT)) END"
            value = f"COALESCE({parsed}, {fb_val})"
            ok = f"({ok} OR {fb_ok})"
        else:
            value = parsed
    elif kind == "epoch":
        value = f"to_timestamp(TRY_CAST({s} AS BIGINT))"
        ok = f"({jt} IN {_types(_INTS)} AND TRY_CAST({s} AS BIGINT) IS NOT NULL)"
    elif kind == "date":
        value = f"TRY_CAST({s} AS DATE)"
        ok = f"({jt} = 'VARCHAR' AND {value} IS NOT NULL)"
    else:  # json
        value, ok = f"json_extract({rec}, {_lit(f.path)})", None
    if ok is None:
        invalid = f"({jt} IS NULL OR {jt} = 'NULL')" if f.required else None
        return value, invalid
    if f.required:
        invalid = f"NOT ({present} AND {ok})"
    else:
        invalid = f"({present} AND NOT ({ok}))"
    return value, invalid


def reason_sql(f: Field, paths: _Paths) -> str | None:
    """SQL yielding a human-readable reason when the field is invalid, else NULL."""
    if f.sql is not None:
        return None
    _, invalid = field_sql(f, paths)
    if invalid is None:
        return None
    got = f"coalesce({paths.jt(f.path)}, 'nothing')"
    return (
        f"CASE WHEN {invalid} THEN {_lit(f'{f.name} ({f.path}): expected {f.kind}, got ')} || {got} "
        f"|| coalesce(': ' || left({paths.s(f.path)}, 60), '') END"
    )


def typed_select_sql(spec: TableSpec, source_relation: str) -> str:
    """SELECT producing, per staged record: seq, pos, the typed columns, source_status, status,
    raw, row_hash, entity_id and ``_reason`` (NULL when the record is valid)."""
    wanted = [p for f in spec.fields if f.sql is None for p in (f.path, f.epoch_fallback) if p]
    if spec.has_status and spec.status_path:
        wanted.append(spec.status_path)
    paths = _Paths(wanted)
    cols = []
    reasons = []
    for f in spec.fields:
        value, _ = field_sql(f, paths)
        cols.append(f"{value} AS {_q(f.name)}")
        r = reason_sql(f, paths)
        if r:
            reasons.append(r)
    if spec.has_status:
        raw_status = paths.s(spec.status_path) if spec.status_path else "NULL"
        source_status = f"coalesce({raw_status}, listed_status)"
        cols.append(f"{source_status} AS source_status")
        cols.append(f"{status_case_sql(spec.source, source_status)} AS status")
        status_for_hash = source_status
    else:
        status_for_hash = "''"
    cols.append("rec AS raw")
    cols.append(f"md5(coalesce({status_for_hash}, '') || '|' || CAST(rec AS VARCHAR)) AS row_hash")
    reason = "NULLIF(concat_ws('; ', " + ", ".join(reasons) + "), '')" if reasons else "NULL"
    select = ", ".join(cols)
    parsed = f"SELECT *, {paths.select_list()} FROM ({source_relation}) AS src"
    extracted = f"SELECT *, {paths.leaf_columns()} FROM ({parsed}) AS p"
    inner = f"SELECT seq, pos, listed_status, {select}, {reason} AS _reason FROM ({extracted}) AS x"
    return f"SELECT *, {spec.entity_id_sql()} AS entity_id FROM ({inner}) AS typed"
