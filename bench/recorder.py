"""An ASGI middleware that records every API request the sandbox serves, for the floor replay.

Why: the floor must fetch *exactly* the pages the sync fetched. The sandbox's own
``SandboxStats.recent`` keeps only the last 20,000 queries and no bodies or headers, so the bench
sandbox wraps the app with this recorder instead of changing the shared sandbox. Each entry keeps
what a replay needs (method, path, query, the headers that select credentials and content type,
the body) plus when it arrived, its status and its response size (for the rate-limit check and the
byte counts). The log lives in the bench sandbox process only; the sandbox's credentials are fixed
demo values, and the harness never writes the log into its results.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

REPLAYED_HEADERS = ("authorization", "x-api-key", "content-type", "accept")


@dataclass(slots=True)
class RecordedRequest:
    at: float  # time.time() when the request arrived
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    status: int = 0
    response_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "method": self.method,
            "path": self.path,
            "query": self.query,
            "headers": self.headers,
            "body": self.body.decode("latin-1"),
            "status": self.status,
            "response_bytes": self.response_bytes,
        }


class RequestLog:
    """Append-only, thread-safe list of requests; readers ask for entries from an index on."""

    def __init__(self) -> None:
        self._entries: list[RecordedRequest] = []
        self._lock = threading.Lock()

    def append(self, entry: RecordedRequest) -> None:
        with self._lock:
            self._entries.append(entry)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def since(self, index: int, until: int | None = None) -> list[RecordedRequest]:
        with self._lock:
            return list(self._entries[index:until])

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class RecordingMiddleware:
    """Records API requests (not control routes) and passes them on unchanged."""

    def __init__(self, app: Any, log: RequestLog, skip_prefixes: tuple[str, ...] = ("/_sandbox", "/_bench")) -> None:
        self.app = app
        self.log = log
        self.skip_prefixes = skip_prefixes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.skip_prefixes):
            await self.app(scope, receive, send)
            return
        # Read the whole body first (the app may not read it, e.g. a GET), then replay it.
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        headers = {}
        for key, value in scope.get("headers", []):
            name = key.decode("latin-1").lower()
            if name in REPLAYED_HEADERS:
                headers[name] = value.decode("latin-1")
        entry = RecordedRequest(
            at=time.time(),
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b"").decode("latin-1"),
            headers=headers,
            body=body,
        )
        sent_body = False

        async def replay_receive() -> dict:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def counting_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                entry.status = message["status"]
            elif message["type"] == "http.response.body":
                entry.response_bytes += len(message.get("body", b""))
            await send(message)

        self.log.append(entry)
        await self.app(scope, replay_receive, counting_send)
