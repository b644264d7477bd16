"""The sandbox as the benchmark needs it: ``python -m bench.sandbox_server --scale large --info-file F``.

The same :class:`~pipelines.sandbox.Sandbox` as ``python -m pipelines.sandbox`` (its own process,
so serving never competes with the sync for a GIL), plus what only a benchmark needs, added from
the outside rather than in the shared sandbox:

- every API request is recorded (:mod:`bench.recorder`) so the floor can replay exactly the
  requests of a sync;
- the cpa.moe lead register: cpa.moe only answers for ids we send, so the world's leads are
  written as a register CSV into ``--leads-dir`` (``id,offer,submitted_at``) before serving;
- bench control routes under ``/_bench``: ``GET requests?from=N&to=M`` (the log as JSON),
  ``GET mark`` (the log's length), ``POST ratelimit/reset`` (a fresh Metapic rate-limit window, so
  every measured phase starts from the same budget) and ``GET ratelimit`` (the most hits the
  sandbox served in one window, and how many it refused).

Once serving it writes ``--info-file`` (JSON: the environment pointing every source at it, the
scale and how long the world took to generate).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from bench.recorder import RecordingMiddleware, RequestLog
from pipelines.sandbox.server import Sandbox
from pipelines.sandbox.world import SCALES

DEFAULT_ANCHOR = "2026-01-15T12:00:00+00:00"  # fixed: the same world in every bench run
REGISTER_FILE = "bench_register.csv"


def _json(data: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json")


class BenchRoutes:
    """Outermost ASGI layer: answers ``/_bench/*`` itself, passes everything else on."""

    def __init__(self, app: Any, sandbox: Sandbox, log: RequestLog) -> None:
        self.app = app
        self.sandbox = sandbox
        self.log = log

    def _metapic(self) -> Any | None:
        return next((m for m in self.sandbox.modules if getattr(m, "name", "") == "metapic"), None)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/_bench/"):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        response = await self.handle(scope["path"][len("/_bench/"):], request)
        await response(scope, receive, send)

    async def handle(self, route: str, request: Request) -> Response:
        if route == "mark":
            return _json({"index": len(self.log)})
        if route == "requests":
            start = int(request.query_params.get("from", 0))
            until = request.query_params.get("to")
            entries = self.log.since(start, int(until) if until else None)
            return _json([e.to_json() for e in entries])
        metapic = self._metapic()
        limiter = getattr(metapic, "limiter", None)
        if route == "ratelimit":
            if limiter is None:
                return _json({})
            return _json({
                "limit": metapic.rate_limit,
                "window_seconds": metapic.rate_window,
                "max_hits_in_a_window": limiter.max_hits,
                "refused": limiter.rejected,
            })
        if route == "ratelimit/reset" and request.method == "POST":
            if limiter is not None:
                limiter.reset()
            return _json({"ok": True})
        return _json({"error": f"unknown bench route {route!r}"}, 404)


def write_lead_register(sandbox: Sandbox, leads_dir: Path) -> int:
    """Every lead of the world as a register CSV (what we would have submitted); returns the count."""
    book = sandbox.world.datasets.get("cpamoe_leads")
    leads = getattr(book, "leads", None)
    if leads is None:
        return 0
    leads_dir.mkdir(parents=True, exist_ok=True)
    tmp = leads_dir / (REGISTER_FILE + ".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "offer", "submitted_at"])
        for lead in leads:
            submitted = datetime.fromtimestamp(lead.created, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            writer.writerow([lead.lead_id, lead.offer, submitted])
    os.replace(tmp, leads_dir / REGISTER_FILE)  # the sync never sees a half-written file
    return len(leads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sandbox_server", description=__doc__)
    parser.add_argument("--scale", default="medium", choices=sorted(SCALES))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--anchor", default=DEFAULT_ANCHOR)
    parser.add_argument("--info-file", required=True)
    parser.add_argument("--leads-dir", help="write the cpa.moe lead register CSV here")
    args = parser.parse_args(argv)

    started = time.monotonic()
    sandbox = Sandbox(scale=args.scale, seed=args.seed, anchor=datetime.fromisoformat(args.anchor))
    generate_seconds = time.monotonic() - started
    leads = write_lead_register(sandbox, Path(args.leads_dir)) if args.leads_dir else 0
    log = RequestLog()
    sandbox.app = BenchRoutes(RecordingMiddleware(sandbox.app, log), sandbox, log)

    def ready(sb: Sandbox) -> None:
        info = {
            "env": {**sb.env(), "SANDBOX_URL": sb.base_url},
            "base_url": sb.base_url,
            "scale_name": args.scale,
            "scale": asdict(sb.world.scale),
            "anchor": args.anchor,
            "seed": args.seed,
            "generate_seconds": round(generate_seconds, 2),
            "registered_leads": leads,
            "pid": os.getpid(),
        }
        tmp = args.info_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(info, f)
        os.replace(tmp, args.info_file)

    signal.signal(signal.SIGTERM, lambda *_: sandbox.stop())
    sandbox.serve_forever("127.0.0.1", 0, on_ready=ready)


if __name__ == "__main__":
    main()
