"""The sandbox's Metapic rate limit is a setting: advertised in ``x-ratelimit-*``, enforced with 429.

The bench lifts it to measure the engine rather than the wait (issue 14), so the setting must be
real on the wire: a lower limit refuses the request past it, a lifted one serves what the
documented 300 would refuse, and a sandbox built without it keeps the documented 300 per minute.
"""

from __future__ import annotations

import httpx

from pipelines.sandbox.metapic import ACCESS_TOKEN
from pipelines.sandbox.server import Sandbox


def _offers(client: httpx.Client) -> httpx.Response:
    user = client.get("/_sandbox/env").json()["METAPIC_USER_ID"]
    return client.get("/metapic/v2/offers", params={"created_by": user}, headers={"authorization": ACCESS_TOKEN})


def test_default_is_the_documented_300_per_minute() -> None:
    with Sandbox(scale="tiny") as sandbox, httpx.Client(base_url=sandbox.base_url) as client:
        response = _offers(client)
        assert response.status_code == 200
        assert response.headers["x-ratelimit-limit"] == "300"
        assert response.headers["x-ratelimit-remaining"] == "299"
        assert client.get("/_sandbox/ratelimit").json() == {"limit": 300, "window_seconds": 60.0}


def test_constructor_setting_is_advertised_and_enforced_with_429() -> None:
    with Sandbox(scale="tiny", metapic_rate_limit=3) as sandbox, httpx.Client(base_url=sandbox.base_url) as client:
        served = [_offers(client) for _ in range(3)]
        assert [r.status_code for r in served] == [200, 200, 200]
        assert [r.headers["x-ratelimit-limit"] for r in served] == ["3", "3", "3"]
        assert [r.headers["x-ratelimit-remaining"] for r in served] == ["2", "1", "0"]
        refused = _offers(client)
        assert refused.status_code == 429
        assert refused.headers["x-ratelimit-limit"] == "3"
        assert refused.headers["x-ratelimit-remaining"] == "0"


def test_control_route_lifts_and_restores_the_limit() -> None:
    with Sandbox(scale="tiny") as sandbox, httpx.Client(base_url=sandbox.base_url) as client:
        lifted = client.post("/_sandbox/ratelimit", json={"limit": 1000})
        assert lifted.json() == {"limit": 1000, "window_seconds": 60.0}
        # more than the documented 300 in one window, none refused
        statuses = {_offers(client).status_code for _ in range(320)}
        assert statuses == {200}
        last = _offers(client)
        assert last.headers["x-ratelimit-limit"] == "1000"
        assert last.headers["x-ratelimit-remaining"] == str(1000 - 321)

        # back to the documented default: a fresh window of 300
        restored = client.post("/_sandbox/ratelimit", json={})
        assert restored.json() == {"limit": 300, "window_seconds": 60.0}
        assert _offers(client).headers["x-ratelimit-remaining"] == "299"

        small = client.post("/_sandbox/ratelimit", json={"limit": 1, "window_seconds": 30})
        assert small.json() == {"limit": 1, "window_seconds": 30.0}
        assert _offers(client).status_code == 200
        assert _offers(client).status_code == 429

        assert client.post("/_sandbox/ratelimit", json={"limit": 0}).status_code == 400
        assert client.post("/_sandbox/ratelimit", json={"rate": 5}).status_code == 400
