"""List pages are decoded only as far as the walk reads them, and judged as before otherwise.

The walks of the Studio and Marketer lists read a page's envelope and a few keys per record; the
records themselves go to DuckDB as the raw body. These tests hold the shaped decode
(:class:`pipelines.sources.page_shape.PageShape`) to the full parse over real HTTP: equal on what
it keeps, and replaced by the full parse for a body of any other shape.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pytest

from pipelines.defs.onlytraffic.resources import resources_from_env
from pipelines.sources.http import ApiClient, ApiError, RetryPolicy
from pipelines.sources.onlytraffic_marketer import CPC_PATH, OffsetStatusListing
from pipelines.sources.onlytraffic_studio import SWAP_PATH, PageStatusListing, studio_envelope


def _pruned(full: dict, members: tuple[str, ...], records: str, keys: tuple[str, ...]) -> dict:
    """What a shaped decode must give: the full parse without the members and keys it skips."""
    out = {m: v for m, v in full.items() if m in members or m == records}
    if isinstance(out.get(records), list):
        out[records] = [{k: v for k, v in r.items() if k in keys} for r in out[records]]
    return out


@pytest.mark.parametrize("api", ["studio", "marketer"])
def test_a_shaped_page_is_the_full_parse_less_what_the_walk_does_not_read(world, api):
    env = world.sandbox.env()
    prefix = f"ONLYTRAFFIC_{api.upper()}"
    resource = resources_from_env()[f"onlytraffic_{api}"].model_copy(update={"api_key": env[f"{prefix}_API_KEY"]})
    with resource.client() as client:
        if api == "studio":
            shape = PageStatusListing(client).shape
            path, params = SWAP_PATH, {"status": "completed", "page": 1, "page_size": 20}
        else:
            shape = OffsetStatusListing(client, CPC_PATH, open_statuses=(), terminal_statuses=(), label="cpc").shape
            path, params = CPC_PATH, {"status": "completed", "offset": 0, "limit": 50}
        full = client.get(path, params=params)
        shaped = client.get(path, params=params, shape=shape)
    assert shaped.content == full.content  # the same page, and DuckDB still gets every byte
    assert full.data["data"], "the page should hold records for the comparison to mean anything"
    assert shaped.data == _pruned(full.data, shape.members, shape.records, shape.keys)
    assert len(orjson.dumps(shaped.data)) < len(full.content) / 5  # most of it was never built


@pytest.fixture
def canned() -> Iterator[tuple[str, list[bytes]]]:
    """A loopback server answering every GET with the next of the bodies the test puts in the list
    (the last one again once they run out)."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            body = bodies.pop(0) if len(bodies) > 1 else bodies[0]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    finally:
        server.shutdown()
        server.server_close()


def _studio_client(base_url: str) -> ApiClient:
    return ApiClient(
        name="studio",
        base_url=base_url,
        envelope=studio_envelope,
        retry=RetryPolicy(max_attempts=2, backoff_base=0.01, timeout=10),
    )


@pytest.mark.parametrize(
    "body",
    [
        # records that are not all objects: the shaped decode cannot hold them, the full parse can
        {"success": True, "data": [{"order_id": 1, "x": [1, 2]}, 7, None, "z"], "pagination": {"total": 4}},
        # an error envelope in an HTTP 200 body, its records member not a list
        {"success": False, "data": None, "error": {"code": "rate_limited", "message": "slow down"}},
        # not an object at all
        [{"order_id": 1}],
    ],
    ids=["non-object records", "error envelope", "a list"],
)
def test_a_body_of_another_shape_is_judged_on_its_full_parse(canned, body):
    base_url, bodies = canned
    raw = orjson.dumps(body)
    bodies.append(raw)
    shape = PageStatusListing(_studio_client(base_url)).shape
    with _studio_client(base_url) as client:
        try:
            full = client.get(SWAP_PATH)
        except ApiError as err:
            full = err
        try:
            shaped = client.get(SWAP_PATH, shape=shape)
        except ApiError as err:
            shaped = err
    if isinstance(full, ApiError):
        assert isinstance(shaped, ApiError) and shaped.reason == full.reason  # the same error
    else:
        assert shaped.data == full.data == body  # every record kept, whatever it is


def test_a_malformed_body_is_still_retried_then_reported(canned):
    base_url, bodies = canned
    bodies.extend([b'{"success": true, "data": [{"order_id": 1}', orjson.dumps({"success": True, "data": []})])
    with _studio_client(base_url) as client:
        shape = PageStatusListing(client).shape
        response = client.get(SWAP_PATH, shape=shape)
        assert client.stats.retries == 1  # the truncated body was asked for again
    assert response.data == {"success": True, "data": []}
    bodies[:] = [b'{"success": true, "data": [']
    with _studio_client(base_url) as client, pytest.raises(ApiError, match="malformed JSON"):
        client.get(SWAP_PATH, shape=shape)
