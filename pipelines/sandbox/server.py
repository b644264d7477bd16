"""The sandbox HTTP server: every API mounted under its own prefix, plus control routes.

Control routes (not subject to faults), all under ``/_sandbox``:
``GET health``, ``GET clock``, ``POST advance`` (``{"days": 1}`` or ``{"hours": 3}``),
``GET|POST faults`` (a :class:`~pipelines.sandbox.faults.FaultPlan` as JSON), ``GET|POST drift``
(a :class:`~pipelines.sandbox.faults.DriftPlan`), ``GET|POST lies`` (a
:class:`~pipelines.sandbox.faults.LiePlan`), ``GET|POST churn`` (a
:class:`~pipelines.sandbox.churn.ChurnPlan`: order lists moving while read), ``GET stats`` /
``POST stats/reset`` (request and record counters), ``GET env`` (the environment variables that point the pipeline at this sandbox).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any, Protocol

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from pipelines.sandbox.churn import Churner, ChurnPlan
from pipelines.sandbox.faults import (
    DriftPlan,
    FaultInjector,
    FaultPlan,
    LiePlan,
    LieTeller,
)
from pipelines.sandbox.world import SCALES, Scale, World


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status_code=status, media_type="application/json", headers=headers)


class ApiModule(Protocol):
    """One simulated API: its routes, its own error bodies, and the env vars that select it."""

    name: str
    prefix: str

    def routes(self) -> list[BaseRoute]: ...

    def error_body(self, kind: str) -> tuple[int, dict]:
        """(HTTP status, body) for an injected fault of ``kind`` (``error_200``, ``429``, ``auth``)."""
        ...

    def env(self, base_url: str) -> dict[str, str]: ...

    # Optional hooks for schema drift and pagination lies (see pipelines.sandbox.faults):
    # ``records_in(body) -> list[dict]`` (the records of a parsed response, to be changed in
    # place), ``pagination`` ("offset", "pages", "laravel" or None) and ``private_params`` (query
    # parameters holding credentials, never recorded).


@dataclass(frozen=True)
class Arrival:
    """One API request as it reached the server (before any fault): when (``time.monotonic()``),
    what (path and query, credentials removed), and the fault injected into it, if any."""

    at: float
    method: str
    path: str
    query: str
    fault: str | None

    @property
    def target(self) -> str:
        return f"{self.path}?{self.query}"


@dataclass
class SandboxStats:
    """Counters tests assert on: requests per route and records served per route and filter, and
    every API request with its arrival time and injected fault (``arrivals``)."""

    requests: Counter = field(default_factory=Counter)
    records: Counter = field(default_factory=Counter)
    recent: deque = field(default_factory=lambda: deque(maxlen=20_000))
    arrivals: deque = field(default_factory=lambda: deque(maxlen=200_000))
    lock: threading.Lock = field(default_factory=threading.Lock)

    def arrived(self, arrival: Arrival) -> None:
        with self.lock:
            self.arrivals.append(arrival)

    def arrivals_for(self, substring: str = "") -> list[Arrival]:
        """Requests whose path and query contain ``substring``, in arrival order."""
        with self.lock:
            return [a for a in self.arrivals if substring in a.target]

    def request(self, route: str, query: str) -> None:
        with self.lock:
            self.requests[route] += 1
            self.recent.append(f"{route}?{query}")

    def served(self, route: str, key: str, count: int) -> None:
        with self.lock:
            self.records[f"{route}|{key}"] += count

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "requests": dict(self.requests),
                "records": dict(self.records),
                "total_requests": sum(self.requests.values()),
            }

    def reset(self) -> None:
        with self.lock:
            self.requests.clear()
            self.records.clear()
            self.recent.clear()
            self.arrivals.clear()


class Sandbox:
    """All simulated APIs in one server. ``start()`` serves on a free loopback port in a thread."""

    def __init__(
        self,
        *,
        scale: str | Scale = "tiny",
        seed: int = 1,
        anchor=None,
        modules: list[Callable[[Sandbox], ApiModule]] | None = None,
        metapic_rate_limit: int | None = None,
    ) -> None:
        # Metapic's requests per minute (None: the documented 300); also POST /_sandbox/ratelimit
        self.metapic_rate_limit = metapic_rate_limit
        scale_obj = SCALES[scale] if isinstance(scale, str) else scale
        kwargs = {"seed": seed, "scale": scale_obj}
        if anchor is not None:
            kwargs["anchor"] = anchor
        self.world = World(**kwargs)
        self.faults = FaultInjector()
        self.drift = DriftPlan()
        self.lies = LieTeller()
        self.churn = Churner()  # order lists moving while read (pipelines/sandbox/churn.py)
        self.stats = SandboxStats()
        from pipelines.sandbox.registry import default_modules

        self.modules: list[ApiModule] = [factory(self) for factory in (modules or default_modules())]
        self.base_url = ""
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = self._build_app()

    # -- app -------------------------------------------------------------------------------------

    def _build_app(self) -> Any:
        routes: list[BaseRoute] = [
            Route("/_sandbox/health", lambda r: json_response({"ok": True})),
            Route("/_sandbox/clock", lambda r: json_response({"now": self.world.now.isoformat()})),
            Route("/_sandbox/advance", self._advance, methods=["POST"]),
            Route("/_sandbox/faults", self._faults, methods=["GET", "POST"]),
            Route("/_sandbox/drift", self._drift, methods=["GET", "POST"]),
            Route("/_sandbox/lies", self._lies, methods=["GET", "POST"]),
            Route("/_sandbox/churn", self._churn, methods=["GET", "POST"]),
            Route("/_sandbox/ratelimit", self._ratelimit, methods=["GET", "POST"]),
            Route("/_sandbox/stats", lambda r: json_response(self.stats.snapshot())),
            Route("/_sandbox/stats/reset", self._reset_stats, methods=["POST"]),
            Route("/_sandbox/env", lambda r: json_response(self.env())),
        ]
        for module in self.modules:
            routes.append(Mount(module.prefix, routes=module.routes()))
        app = Starlette(routes=routes)
        return FaultMiddleware(app, self)

    async def _advance(self, request: Request) -> Response:
        body = await _json_body(request)
        delta = timedelta(days=float(body.get("days", 0)), hours=float(body.get("hours", 0)))
        now = await asyncio.to_thread(self.world.advance, delta)
        return json_response({"now": now.isoformat()})

    async def _faults(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                self.faults.configure(FaultPlan.from_dict(await _json_body(request)))
            except (TypeError, ValueError) as exc:
                return json_response({"error": str(exc)}, 400)
        return json_response({"plan": self.faults.plan.to_dict(), "injected": self.faults.injected})

    async def _drift(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                self.drift = DriftPlan.from_dict(await _json_body(request))
            except (TypeError, ValueError) as exc:
                return json_response({"error": str(exc)}, 400)
        return json_response({"plan": asdict(self.drift)})

    async def _lies(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                self.lies.configure(LiePlan.from_dict(await _json_body(request)))
            except (TypeError, ValueError) as exc:
                return json_response({"error": str(exc)}, 400)
        return json_response({"plan": asdict(self.lies.plan), "told": self.lies.told})

    async def _churn(self, request: Request) -> Response:
        if request.method == "POST":
            try:
                self.churn.configure(ChurnPlan.from_dict(await _json_body(request)))
            except (TypeError, ValueError) as exc:
                return json_response({"error": str(exc)}, 400)
        return json_response(self.churn.to_dict())

    async def _ratelimit(self, request: Request) -> Response:
        """Metapic's rate limit: GET it, POST ``{"limit": N, "window_seconds": S}`` to change it
        (a fresh window; omitted keys fall back to the documented 300 per 60 s)."""
        metapic = next((m for m in self.modules if getattr(m, "name", "") == "metapic"), None)
        if metapic is None:
            return json_response({"error": "no metapic module"}, 404)
        if request.method == "POST":
            body = await _json_body(request)
            try:
                self.set_metapic_rate_limit(**body)
            except (TypeError, ValueError) as exc:
                return json_response({"error": str(exc)}, 400)
        return json_response({"limit": metapic.rate_limit, "window_seconds": metapic.rate_window})

    def set_metapic_rate_limit(self, limit: int | None = None, window_seconds: float | None = None) -> None:
        """Serve Metapic at ``limit`` requests per ``window_seconds`` (defaults: the documented 300 per 60 s)."""
        for module in self.modules:
            if getattr(module, "name", "") == "metapic":
                module.set_rate_limit(limit, window_seconds)

    async def _reset_stats(self, request: Request) -> Response:
        self.stats.reset()
        return json_response({"ok": True})

    def module_for(self, path: str) -> ApiModule | None:
        for module in self.modules:
            if path.startswith(module.prefix + "/"):
                return module
        return None

    # -- helpers for tests and the CLI -------------------------------------------------------

    def env(self) -> dict[str, str]:
        """Environment variables pointing every source at this sandbox, with its credentials."""
        env: dict[str, str] = {}
        for module in self.modules:
            env.update(module.env(self.base_url + module.prefix))
        return env

    def advance(self, **delta: float) -> None:
        self.world.advance(timedelta(**delta))

    def dataset(self, name: str):
        """A simulated dataset by name (e.g. ``marketer_cpc``), for tests reading the truth."""
        return self.world.datasets[name]

    def set_faults(self, **plan: Any) -> None:
        self.faults.configure(FaultPlan.from_dict(plan))

    def set_drift(self, **plan: Any) -> None:
        """Schema drift of successful responses (no arguments: none)."""
        self.drift = DriftPlan.from_dict(plan)

    def set_lies(self, **plan: Any) -> None:
        """Pagination lies (no arguments: none)."""
        self.lies.configure(LiePlan.from_dict(plan))

    def set_churn(self, **plan: Any) -> None:
        """Order lists that move while read, terminal lists out of order (no arguments: none)."""
        self.churn.configure(ChurnPlan.from_dict(plan))

    # -- serving -----------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.base_url = f"http://{host}:{sock.getsockname()[1]}"
        config = uvicorn.Config(
            self.app, log_level="warning", access_log=False, lifespan="off", timeout_keep_alive=30
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="sandbox", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("sandbox server did not start")
            time.sleep(0.02)
        return self.base_url

    def serve_forever(self, host: str = "127.0.0.1", port: int = 0, on_ready=None) -> None:
        """Serve in the calling thread (for ``python -m pipelines.sandbox``)."""
        self.start(host, port)
        if on_ready:
            on_ready(self)
        assert self._thread is not None
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            self.stop()

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> Sandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


async def _json_body(request: Request) -> dict:
    raw = await request.body()
    if not raw:
        return {}
    return orjson.loads(raw)


class FaultMiddleware:
    """Pure ASGI middleware injecting the configured faults into API routes, and rewriting
    successful JSON responses when schema drift or a pagination lie is switched on."""

    def __init__(self, app: Any, sandbox: Sandbox) -> None:
        self.app = app
        self.sandbox = sandbox

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/_sandbox"):
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        module = self.sandbox.module_for(path)
        query = scope.get("query_string", b"").decode("latin-1")
        kind = self.sandbox.faults.pick(f"{path}?{query}") if module is not None else None
        if module is not None:
            self.sandbox.stats.arrived(
                Arrival(time.monotonic(), scope.get("method", ""), path, _public_query(module, query), kind)
            )
        plan = self.sandbox.faults.plan
        if module is not None and plan.latency > 0:
            await asyncio.sleep(plan.latency)
        if kind is None:
            await self._serve(scope, receive, send, module, path, query)
            return
        if kind == "timeout":
            await asyncio.sleep(plan.slow_seconds)
            await self._serve(scope, receive, send, module, path, query)
            return
        if kind == "drop":
            await _send_raw(send, 200, b'{"data": [{"truncated', content_length=4096)
            raise ConnectionAbortedError("sandbox: dropped connection (injected fault)")
        if kind == "malformed":
            await _send_raw(send, 200, b'{"status": "success", "data": [{"order_id": ')
            return
        if kind in ("500", "502", "503"):
            await _send_raw(send, int(kind), b"<html><body>Server Error</body></html>", media="text/html")
            return
        assert module is not None
        status, body = module.error_body("auth" if kind == "403" else kind)
        if kind == "403":
            status = 403
        # Retry-After only where the plan asks for it (``retry_after_on``): no API doc promises it
        headers = self.sandbox.faults.retry_after_header(kind)
        await _send_raw(send, status, orjson.dumps(body), headers=headers)

    async def _serve(self, scope: dict, receive: Callable, send: Callable, module: Any, path: str, query: str) -> None:
        """The app's response, rewritten when drift or a lie applies to this request."""
        target = f"{path}?{query}"
        drift = self.sandbox.drift if self.sandbox.drift.applies_to(target) else None
        style = getattr(module, "pagination", None)
        lies = self.sandbox.lies if style and self.sandbox.lies.wants(target) else None
        if module is None or (drift is None or not hasattr(module, "records_in")) and lies is None:
            await self.app(scope, receive, send)
            return

        def rewrite(content: bytes) -> bytes:
            try:
                body = orjson.loads(content)
            except orjson.JSONDecodeError:
                return content
            changed = False
            if drift is not None and hasattr(module, "records_in"):
                for record in module.records_in(body):
                    drift.apply(record)
                    changed = True
            if lies is not None:
                changed = lies.rewrite(style, path, query, body) or changed
            return orjson.dumps(body) if changed else content

        await self.app(scope, receive, _RewritingSend(send, rewrite))


class _RewritingSend:
    """Buffers a 200 JSON response and hands it on rewritten (other responses pass through)."""

    def __init__(self, send: Callable, rewrite: Callable[[bytes], bytes]) -> None:
        self.send = send
        self.rewrite = rewrite
        self.start: dict | None = None
        self.chunks: list[bytes] = []

    async def __call__(self, message: dict) -> None:
        if message["type"] == "http.response.start":
            if message.get("status") != 200:
                self.rewrite = None  # type: ignore[assignment]
                await self.send(message)
            else:
                self.start = message
            return
        if message["type"] != "http.response.body" or self.rewrite is None:
            await self.send(message)
            return
        self.chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = self.rewrite(b"".join(self.chunks))
        assert self.start is not None
        headers = [(k, v) for k, v in self.start.get("headers", []) if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.send({**self.start, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})


def _public_query(module: Any, query: str) -> str:
    """The query string without the parameters that carry credentials (cpa.moe's ``id``)."""
    private = getattr(module, "private_params", ())
    if not private or not query:
        return query
    return "&".join(p for p in query.split("&") if p.split("=", 1)[0] not in private)


async def _send_raw(
    send: Callable,
    status: int,
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    media: str = "application/json",
    content_length: int | None = None,
) -> None:
    raw_headers = [
        (b"content-type", media.encode()),
        (b"content-length", str(content_length if content_length is not None else len(body)).encode()),
    ]
    raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body, "more_body": content_length is not None})
