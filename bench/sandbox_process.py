"""Start :mod:`bench.sandbox_server` in its own process and talk to its control routes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from bench.sandbox_server import DEFAULT_ANCHOR

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class BenchSandbox:
    """A running bench sandbox. Use as a context manager; ``info`` holds its environment."""

    def __init__(self, scale: str, workdir: Path, *, anchor: str = DEFAULT_ANCHOR, seed: int = 1,
                 start_timeout: float = 1800.0) -> None:
        self.scale = scale
        self.workdir = workdir
        self.anchor = anchor
        self.seed = seed
        self.start_timeout = start_timeout
        self.leads_dir = workdir / "cpamoe_leads"
        self.info: dict[str, Any] = {}
        self.start_seconds = 0.0
        self._proc: subprocess.Popen | None = None
        self._http: httpx.Client | None = None

    def __enter__(self) -> BenchSandbox:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        info_file = self.workdir / "sandbox.json"
        log = (self.workdir / "sandbox.log").open("w")
        started = time.monotonic()
        self._proc = subprocess.Popen(
            [
                sys.executable, "-m", "bench.sandbox_server", "--scale", self.scale, "--seed", str(self.seed),
                "--anchor", self.anchor, "--info-file", str(info_file), "--leads-dir", str(self.leads_dir),
            ],
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        while not info_file.exists():
            if self._proc.poll() is not None:
                tail = (self.workdir / "sandbox.log").read_text()[-2000:]
                raise RuntimeError(f"the bench sandbox exited with {self._proc.returncode}:\n{tail}")
            if time.monotonic() - started > self.start_timeout:
                self.stop()
                raise RuntimeError(f"the bench sandbox did not start within {self.start_timeout:.0f}s")
            time.sleep(0.2)
        self.start_seconds = time.monotonic() - started
        self.info = json.loads(info_file.read_text())
        self._http = httpx.Client(base_url=self.info["base_url"], timeout=600)

    def stop(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    # -- control routes ---------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        return dict(self.info["env"])

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self._http is not None, "sandbox not started"
        response = self._http.request(method, path, **kwargs)
        response.raise_for_status()
        return response.json()

    def mark(self) -> int:
        """The request log's length: requests made after this are ``requests(mark)``."""
        return int(self._call("GET", "/_bench/mark")["index"])

    def requests(self, start: int, until: int | None = None) -> list[dict[str, Any]]:
        params = {"from": start, **({"to": until} if until is not None else {})}
        return self._call("GET", "/_bench/requests", params=params)

    def reset_rate_limit(self) -> None:
        self._call("POST", "/_bench/ratelimit/reset")

    def rate_limit(self) -> dict[str, Any]:
        return self._call("GET", "/_bench/ratelimit")

    def set_rate_limit(self, limit: int, window_seconds: float = 60.0) -> dict[str, Any]:
        """Serve Metapic at ``limit`` requests per window from a fresh window (the sandbox's setting)."""
        return self._call("POST", "/_sandbox/ratelimit", json={"limit": limit, "window_seconds": window_seconds})

    def clock(self) -> str:
        return self._call("GET", "/_sandbox/clock")["now"]

    def advance(self, **delta: float) -> str:
        return self._call("POST", "/_sandbox/advance", json=delta)["now"]
