"""The one HTTP layer every source uses: timeouts, bounded retries, rate limits, envelopes, redaction.

Why one layer: retry, backoff and secret handling are where data gets silently lost or leaked, so
they are written once and tested once. Each source only supplies an *envelope checker* that turns
its API's way of reporting errors (often inside an HTTP 200 body) into :class:`ApiError`.

Rules enforced here:
- 429, 5xx, timeouts, dropped connections and malformed JSON are retried with exponential backoff
  and full jitter, honouring ``Retry-After``; attempts are bounded, then :class:`ApiError` names the
  endpoint (credentials redacted).
- 401/403 fail at once with :class:`AuthError`, naming the variables to fix: no retry storm.
- An error envelope is never returned as an empty page.
- No exception raised from here carries a secret or chains an httpx exception (whose text holds
  the full URL): errors are re-raised ``from None`` after redaction.
"""

from __future__ import annotations

import email.utils
import logging
import random
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, quote_plus

import certifi
import httpx
import msgspec
import orjson

from pipelines.sources.page_shape import PageShape
from pipelines.sources.rate_limit import RateLimiter

# httpx logs every request URL at INFO; some sources carry their key in the URL.
logging.getLogger("httpx").setLevel(logging.WARNING)
logging.getLogger("httpcore").setLevel(logging.WARNING)

log = logging.getLogger(__name__)


class ApiError(RuntimeError):
    """A request that failed for good (or, with ``retryable``, one attempt that failed)."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str = "",
        status_code: int | None = None,
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{endpoint}: {message}" if endpoint else message)
        self.endpoint = endpoint
        self.status_code = status_code
        self.retryable = retryable
        self.retry_after = retry_after
        self.reason = message


    def located(self, endpoint: str, redact: Callable[[str], str]) -> ApiError:
        """This error (same class and attributes) named after ``endpoint``, secrets redacted.

        Envelope checkers raise errors without knowing the URL; the client locates them.
        """
        self.reason = redact(self.reason)
        self.endpoint = endpoint
        self.args = (f"{endpoint}: {self.reason}",)
        return self


class AuthError(ApiError):
    """401/403: the credentials are wrong; retrying cannot help."""


class Redactor:
    """Replaces every secret (raw, URL-encoded and form-encoded) with ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        variants: set[str] = set()
        for secret in secrets:
            if secret and len(secret) >= 3:
                variants.update({secret, quote(secret, safe=""), quote_plus(secret)})
        # longest first so a secret containing another is replaced whole
        self._secrets = sorted(variants, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    max_retry_after: float = 300.0
    timeout: float = 60.0

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_retry_after)
        ceiling = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        return random.uniform(0, ceiling)  # full jitter


@dataclass
class RequestStats:
    requests: int = 0
    retries: int = 0
    bytes_received: int = 0
    rate_limit_waits: float = 0.0
    by_endpoint: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def count(self, endpoint: str, nbytes: int) -> None:
        with self._lock:
            self.requests += 1
            self.bytes_received += nbytes
            self.by_endpoint[endpoint] = self.by_endpoint.get(endpoint, 0) + 1

    def retried(self) -> None:
        with self._lock:
            self.retries += 1

    def waited(self, seconds: float) -> None:
        with self._lock:
            self.rate_limit_waits += seconds


@dataclass(frozen=True)
class ApiResponse:
    data: Any  # the parsed JSON body
    content: bytes  # the raw body, handed to DuckDB untouched
    headers: httpx.Headers
    status_code: int


# An envelope checker raises ApiError for an error reported inside a body, and returns otherwise.
EnvelopeCheck = Callable[[Any, int], None]

RETRYABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}


_ssl_context: ssl.SSLContext | None = None
_ssl_lock = threading.Lock()


def shared_ssl_context() -> ssl.SSLContext:
    """One TLS context per process: building one loads the CA bundle (~0.2 s), and every asset of
    a run creates its own client. The executor's fork server builds it once for every step
    (:mod:`pipelines.step_preload`)."""
    global _ssl_context
    with _ssl_lock:
        if _ssl_context is None:
            _ssl_context = ssl.create_default_context(cafile=certifi.where())
        return _ssl_context


class ApiClient:
    """A pooled, thread-safe client for one API."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        headers: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
        credential_vars: Iterable[str] = (),
        envelope: EnvelopeCheck | None = None,
        retry: RetryPolicy | None = None,
        max_concurrency: int = 4,
        rate_limiter: RateLimiter | None = None,
        on_retry: Callable[[str], None] | None = None,
        json_answers: bool = True,
    ) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.redact = Redactor(secrets)
        self.credential_vars = tuple(credential_vars)
        self.envelope = envelope
        self.retry = retry or RetryPolicy()
        self.rate_limiter = rate_limiter
        self.on_retry = on_retry
        # False for receivers whose success body is not JSON (a webhook's "ok", an empty 204)
        self.json_answers = json_answers
        self.stats = RequestStats()
        self._slots = threading.BoundedSemaphore(max_concurrency)
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=dict(headers or {}),
            timeout=httpx.Timeout(self.retry.timeout, connect=min(10.0, self.retry.timeout)),
            limits=httpx.Limits(
                max_connections=max_concurrency, max_keepalive_connections=max_concurrency
            ),
            follow_redirects=False,
            verify=shared_ssl_context(),
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def endpoint(self, method: str, path: str) -> str:
        """How errors name a request: method and URL without its query, secrets redacted."""
        return self.redact(f"{method} {self.base_url}{path}")

    def get(self, path: str, params: Any = None, *, shape: PageShape | None = None) -> ApiResponse:
        """GET ``path``; with ``shape``, a successful body is decoded to only what it names."""
        return self.request("GET", path, params=params, shape=shape)

    def post(self, path: str, params: Any = None, data: Any = None, json: Any = None) -> ApiResponse:
        return self.request("POST", path, params=params, data=data, json=json)

    def request(self, method: str, path: str, *, shape: PageShape | None = None, **kwargs: Any) -> ApiResponse:
        endpoint = self.endpoint(method, path)
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._attempt(method, path, endpoint, kwargs, shape)
            except AuthError:
                raise
            except ApiError as err:
                if not err.retryable:
                    raise
                if attempt >= self.retry.max_attempts:
                    raise ApiError(
                        f"gave up after {attempt} attempts; last error: {err.reason}",
                        endpoint=endpoint,
                        status_code=err.status_code,
                        retry_after=err.retry_after,
                    ) from None
                if err.retry_after is not None and err.retry_after > self.retry.max_retry_after:
                    raise ApiError(
                        f"server asked to retry after {err.retry_after:.0f}s, more than the "
                        f"{self.retry.max_retry_after:.0f}s we wait; last error: {err.reason}",
                        endpoint=endpoint,
                        status_code=err.status_code,
                    ) from None
                delay = self.retry.backoff(attempt, err.retry_after)
                if err.retry_after is not None and self.rate_limiter is not None:
                    self.rate_limiter.pause_for(delay)
                self.stats.retried()
                message = (
                    f"{endpoint}: {err.reason}; retry {attempt}/{self.retry.max_attempts - 1} "
                    f"in {delay:.2f}s"
                )
                log.warning(message)
                if self.on_retry:
                    self.on_retry(message)
                time.sleep(delay)

    def _attempt(self, method: str, path: str, endpoint: str, kwargs: dict, shape: PageShape | None) -> ApiResponse:
        if self.rate_limiter is not None:
            self.stats.waited(self.rate_limiter.acquire())
        with self._slots:
            try:
                response = self._client.request(method, path, **kwargs)
            except httpx.TimeoutException:
                raise ApiError("timed out", endpoint=endpoint, retryable=True) from None
            except httpx.TransportError as exc:
                # The exception text can contain the URL: report its type only.
                raise ApiError(
                    f"connection failed ({type(exc).__name__})", endpoint=endpoint, retryable=True
                ) from None
        content = response.content
        self.stats.count(endpoint, len(content))
        self._observe_rate_limit_headers(response.headers)
        status = response.status_code
        parsed, parse_error = _parse_json(content, shape if 200 <= status < 300 else None)

        if status in (401, 403):
            fix = " or ".join(self.credential_vars) or "the credentials"
            raise AuthError(
                f"HTTP {status}: the API rejected the credentials; check {fix}",
                endpoint=endpoint,
                status_code=status,
            )
        if status in RETRYABLE_STATUS:
            raise ApiError(
                f"HTTP {status}{self._detail(parsed)}",
                endpoint=endpoint,
                status_code=status,
                retryable=True,
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        if status >= 400:
            raise ApiError(f"HTTP {status}{self._detail(parsed)}", endpoint=endpoint, status_code=status)
        if parse_error and self.json_answers:
            raise ApiError(f"malformed JSON in HTTP {status} body", endpoint=endpoint, retryable=True)
        if self.envelope is not None:
            try:
                self.envelope(parsed, status)
            except ApiError as err:
                if isinstance(err, AuthError):
                    fix = " or ".join(self.credential_vars) or "the credentials"
                    err.reason = f"{err.reason}; check {fix}"
                if err.retry_after is None:
                    err.retry_after = parse_retry_after(response.headers.get("retry-after"))
                raise err.located(endpoint, self.redact) from None
        return ApiResponse(parsed, content, response.headers, status)

    def _detail(self, parsed: Any) -> str:
        """The server's own words about an error, from the usual places in a JSON body."""
        candidates = [parsed]
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            candidates.append(parsed["error"])
        for body in candidates:
            if isinstance(body, dict):
                for key in ("message", "error", "detail"):
                    if isinstance(body.get(key), str):
                        return f": {self.redact(body[key])[:300]}"
        return ""

    def _observe_rate_limit_headers(self, headers: httpx.Headers) -> None:
        """When the server reports the window spent, stop everyone until it resets."""
        if self.rate_limiter is None:
            return
        remaining = headers.get("x-ratelimit-remaining")
        if remaining is not None and remaining.strip() == "0":
            reset = parse_retry_after(headers.get("retry-after"))
            if reset is None:
                reset_at = headers.get("x-ratelimit-reset")
                if reset_at and reset_at.strip().isdigit():
                    reset = max(int(reset_at) - time.time(), 0.0)
            self.rate_limiter.pause_for(reset if reset is not None else self.rate_limiter.period)


def _parse_json(content: bytes, shape: PageShape | None = None) -> tuple[Any, bool]:
    """(the body, whether it failed to parse); ``shape`` decodes only what it names, and a body
    of another shape is parsed in full (see :mod:`pipelines.sources.page_shape`)."""
    if not content:
        return None, True
    if shape is not None:
        try:
            lean = shape.decode(content)
        except msgspec.DecodeError:
            lean = None  # orjson has the last word on what is malformed
        if lean is not None:
            return lean, False
    try:
        return orjson.loads(content), False
    except orjson.JSONDecodeError:
        return None, True


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)
