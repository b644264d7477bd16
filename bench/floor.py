"""The floor: the sync's own requests replayed by a bare client, and DuckDB loading the raw bodies.

What no implementation of the sync can beat on this machine and this sandbox:

- **fetch**: exactly the requests the full sync made (recorded by the bench sandbox), replayed per
  stream with an ``httpx.AsyncClient`` at the same concurrency as the sync (4 per API by default),
  all requests of a stream in flight as soon as a slot is free (no pagination dependency: the
  pages are known), Metapic held to its documented 300 requests per 60 s in the real-world
  phase and unthrottled in the engine phases (the sandbox's limit lifted too). Bodies are appended to
  one NDJSON file per stream, unparsed (an HTTP 429 is waited out and retried, nothing else is
  looked at).
- **load**: one DuckDB statement per stream reads that file with DuckDB's own JSON reader and
  unnests the records into a table (2 threads like the warehouse connection; 2 GB: this is a
  floor of time, not of memory);
  the cpa.moe lead register CSV is read with ``read_csv`` (that stream has no API).

Streams are measured one after another, in the order ``sync_all`` runs them, so each stream has
its own floor and ratio.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import httpx

from bench.streams import ROUTES, by_stream, route_of

METAPIC_LIMIT = (300, 60.0)  # documented: x-ratelimit-limit 300 per 60 s window
MAX_429_RETRIES = 20


class SlidingWindow:
    """At most ``calls`` request starts in any ``period`` seconds (asyncio)."""

    def __init__(self, calls: int, period: float) -> None:
        self.calls = calls
        self.period = period
        self.starts: deque[float] = deque()
        self.lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self.lock:
            while True:
                now = time.monotonic()
                while self.starts and now - self.starts[0] >= self.period:
                    self.starts.popleft()
                if len(self.starts) < self.calls:
                    self.starts.append(now)
                    return
                await asyncio.sleep(self.period - (now - self.starts[0]) + 0.001)


@dataclass
class FloorStream:
    stream: str
    requests: int = 0
    bytes: int = 0
    fetch_s: float = 0.0
    load_s: float = 0.0
    records: int = 0
    retried_429: int = 0
    errors: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "bytes": self.bytes,
            "fetch_s": round(self.fetch_s, 3),
            "load_s": round(self.load_s, 3),
            "records": self.records,
            "retried_429": self.retried_429,
            "errors": self.errors,
        }


async def _fetch_stream(
    base_url: str, requests: list[dict], out: Path, concurrency: int, window: SlidingWindow | None, result: FloorStream
) -> None:
    slots = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with out.open("wb") as sink:
        async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=300) as client:

            async def one(req: dict) -> None:
                url = req["path"] + (f"?{req['query']}" if req["query"] else "")
                body = req["body"].encode("latin-1") if req["body"] else None
                for _attempt in range(MAX_429_RETRIES):
                    if window is not None:
                        await window.acquire()
                    async with slots:
                        response = await client.request(req["method"], url, headers=req["headers"], content=body)
                        content = await response.aread()
                    if response.status_code == 429:
                        result.retried_429 += 1
                        await asyncio.sleep(float(response.headers.get("retry-after") or 1))
                        continue
                    break
                if response.status_code != 200:
                    result.errors += 1
                    return
                result.bytes += len(content)
                sink.write(content.replace(b"\n", b" ") + b"\n")  # one body per line

            await asyncio.gather(*(one(r) for r in requests))


def fetch(base_url: str, requests: list[dict], workdir: Path, concurrency: int, *,
          metapic_limit: tuple[int, float] | None = METAPIC_LIMIT, apis: set[str] | None = None) -> dict[str, FloorStream]:
    """Replay ``requests`` stream by stream; bodies land in ``workdir/<stream>.ndjson``.

    ``metapic_limit`` (requests, seconds) holds Metapic's streams to a rate (None: as fast as the
    sandbox serves, for the engine phases where its limit is lifted on both sides); ``apis``
    replays only those APIs' streams (the real-world phase needs Metapic's floor alone)."""
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, FloorStream] = {}
    for stream, group in by_stream(requests).items():
        # only what the sync read successfully is replayed (a refused or failed request is not a page)
        group = [r for r in group if r["status"] == 200]
        api = route_of(group[0]["path"]).api if group else ""
        if apis is not None and api not in apis:
            continue
        window = SlidingWindow(*metapic_limit) if api == "metapic" and metapic_limit else None
        result = FloorStream(stream, requests=len(group))
        started = time.monotonic()
        asyncio.run(_fetch_stream(base_url, group, workdir / f"{stream}.ndjson", concurrency, window, result))
        result.fetch_s = time.monotonic() - started
        results[stream] = result
    return results


def load(results: dict[str, FloorStream], workdir: Path, *, register_csv: Path | None = None,
         memory_limit: str = "2GB", threads: int = 2) -> None:
    """DuckDB reads each stream's bodies and unnests the records into a table (timed per stream)."""
    paths = {r.stream: r.records_path for r in ROUTES}
    db = workdir / "floor.duckdb"
    db.unlink(missing_ok=True)
    with duckdb.connect(str(db)) as con:
        # A floor of time, not of memory: 2 GB and a spill directory so it never fails on size
        # (at 512 MB, the warehouse's limit, unnesting the large preset's CPC pages ran out).
        con.execute(f"SET memory_limit = '{memory_limit}'")
        con.execute(f"SET temp_directory = '{workdir / 'spill'}'")
        con.execute(f"SET threads = {threads}")
        con.execute("SET preserve_insertion_order = false")
        if register_csv is not None and register_csv.exists():
            result = results.setdefault("cpamoe_lead_files", FloorStream("cpamoe_lead_files"))
            started = time.monotonic()
            con.execute(f"CREATE TABLE floor_register AS SELECT * FROM read_csv('{register_csv}', header = true)")
            result.load_s = time.monotonic() - started
            result.records = con.execute("SELECT count(*) FROM floor_register").fetchone()[0]
        for stream, result in results.items():
            if stream not in paths:
                continue
            source = workdir / f"{stream}.ndjson"
            started = time.monotonic()
            con.execute(
                f"""
                CREATE TABLE {_ident('floor_' + stream)} AS
                SELECT unnest(json_extract(json, '{paths[stream]}')) AS rec
                FROM read_ndjson_objects('{source}', maximum_object_size = 33554432)
                """
            )
            result.load_s = time.monotonic() - started
            result.records = con.execute(f"SELECT count(*) FROM {_ident('floor_' + stream)}").fetchone()[0]
    db.unlink(missing_ok=True)
    for path in workdir.glob("*.ndjson"):
        path.unlink()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
