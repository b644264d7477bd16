"""Which stream a recorded request belongs to, and where the records are in its response body.

The sync runs its streams one after another (``sync_all`` uses the in-process executor), so the
floor is measured per stream too, in the same order, and each stream gets its own ratio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class StreamRoute:
    stream: str
    api: str  # the API (and so the concurrency / rate-limit budget) the stream's requests use
    pattern: re.Pattern
    records_path: str  # DuckDB JSON path of the records in one response body


ROUTES = (
    StreamRoute("cpc_orders", "onlytraffic_marketer", re.compile(r"/api/marketer/cpc/orders$"), "$.data[*]"),
    StreamRoute("cpl_orders", "onlytraffic_marketer", re.compile(r"/api/marketer/cpl/orders$"), "$.data[*]"),
    StreamRoute("swap_orders", "onlytraffic_studio", re.compile(r"/swaps/orders$"), "$.data[*]"),
    # list.json answers an object keyed by our lead id (or a list): its values are the records
    StreamRoute("cpamoe_leads", "cpamoe", re.compile(r"/ext/list\.json$"), "$.*"),
    StreamRoute("metapic_offers", "metapic", re.compile(r"/v2/offers$"), "$.data[*]"),
    StreamRoute("metapic_participants", "metapic", re.compile(r"/v2/offers/\d+/participants$"), "$.data[*]"),
)
# The order sync_all runs them in (its asset order); a stream not listed sorts last.
ORDER = [r.stream for r in ROUTES]
OTHER = StreamRoute("other", "other", re.compile(r""), "$")


def route_of(path: str) -> StreamRoute:
    for route in ROUTES:
        if route.pattern.search(path):
            return route
    return OTHER


def by_stream(requests: list[dict]) -> dict[str, list[dict]]:
    """Recorded requests grouped by stream, streams in sync order, requests in arrival order."""
    groups: dict[str, list[dict]] = {}
    for request in requests:
        groups.setdefault(route_of(request["path"]).stream, []).append(request)
    return dict(sorted(groups.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else len(ORDER)))
