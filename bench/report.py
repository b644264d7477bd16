"""Medians, targets and the printed table of a bench run (numbers in, text and JSON out).

The headline is the ratio of the full sync's wall time to the floor measured in the same run
(``fetch + load``), because the machine is shared and noisy: absolute seconds move with the
neighbours, a ratio measured minutes apart much less.
"""

from __future__ import annotations

import json
import statistics
from datetime import date
from pathlib import Path
from typing import Any

from bench.streams import ORDER

RATIO_TARGET = 1.3  # engine: full sync / floor (fetch + load), issue 14
STREAM_RATIO_TARGET = 1.5  # engine: every stream / its own floor
REAL_WORLD_TARGET = 1.1  # real world: full sync / the longer lane's floor
RSS_LIMIT_MB = 1024.0  # the whole process tree
RSS_GROWTH_LIMIT = 1.20  # large vs medium
NO_CHANGE_SLACK_S = 5.0
PER_REQUEST_SLACK_S = 2.0  # no-change / +1 day: per stream, no slower per request than full (+2 s)
METAPIC_WINDOW_LIMIT = 300


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _sorted_streams(names: set[str]) -> list[str]:
    return sorted(names, key=lambda s: (ORDER.index(s) if s in ORDER else len(ORDER), s))


def summarize(preset: dict[str, Any]) -> dict[str, Any]:
    """Medians over the repeats of one preset, per phase and per stream."""
    reps = preset["repeats"]
    after = preset["after_day"]

    def phase(items: list[dict]) -> dict[str, Any]:
        return {
            key: median([i.get(key) for i in items])
            for key in ("wall_s", "peak_rss_mb", "requests", "records", "rows_written", "history_rows_added",
                        "stream_seconds", "metapic_max_per_60s", "metapic_refused", "non_200_responses", "peak_rss_outside_streams_mb",
                        "peak_pss_mb")
        }

    full = phase([r["full"] for r in reps])
    no_change = phase([r["no_change"] for r in reps])
    after_day = phase(after)
    floor = {
        "fetch_s": median([r["floor"]["fetch_s"] for r in reps]),
        "load_s": median([r["floor"]["load_s"] for r in reps]),
        "total_s": median([r["floor"]["fetch_s"] + r["floor"]["load_s"] for r in reps]),
        "max_s": median([max(r["floor"]["fetch_s"], r["floor"]["load_s"]) for r in reps]),
        "lanes_s": median([_floor_in_lanes(r["floor"]["streams"]) for r in reps]),
        "requests": median([r["floor"]["requests"] for r in reps]),
    }
    ratios = [r["full"]["wall_s"] / (r["floor"]["fetch_s"] + r["floor"]["load_s"]) for r in reps
              if r["floor"]["fetch_s"] + r["floor"]["load_s"] > 0]
    stream_ratios = [r["full"]["stream_seconds"] / (r["floor"]["fetch_s"] + r["floor"]["load_s"]) for r in reps
                     if r["floor"]["fetch_s"] + r["floor"]["load_s"] > 0]
    names: set[str] = set()
    for r in reps:
        names |= set(r["full"]["streams"]) | set(r["floor"]["streams"])
    streams = {}
    for name in _sorted_streams(names):
        def s(r: dict, part: str, key: str, default: float = 0.0) -> float:
            return r[part]["streams"].get(name, {}).get(key, default)

        sync_s = median([s(r, "full", "seconds") for r in reps])
        fetch_s = median([s(r, "floor", "fetch_s") for r in reps])
        load_s = median([s(r, "floor", "load_s") for r in reps])
        floor_total = (fetch_s or 0) + (load_s or 0)
        records = median([s(r, "full", "records") for r in reps])
        streams[name] = {
            "records": records,
            "requests": median([r["full"]["requests_by_stream"].get(name, 0) for r in reps]),
            "sync_s": sync_s,
            "records_per_s": records / sync_s if sync_s else None,
            "floor_fetch_s": fetch_s,
            "floor_load_s": load_s,
            "ratio": sync_s / floor_total if floor_total > 0 else None,
            "peak_rss_mb": median([s(r, "full", "peak_rss_mb", None) for r in reps]),
            "no_change_requests": median([r["no_change"]["requests_by_stream"].get(name, 0) for r in reps]),
            "no_change_s": median([s(r, "no_change", "seconds") for r in reps]),
            "after_day_requests": median([a["requests_by_stream"].get(name, 0) for a in after]),
            "after_day_s": median([a["streams"].get(name, {}).get("seconds", 0.0) for a in after]),
        }
    return {
        "full": {**full, "records_per_s": full["records"] / full["wall_s"] if full["wall_s"] else None},
        "real_world": _real_world(preset.get("real_world") or []),
        "no_change": no_change,
        "after_day": after_day,
        "floor": floor,
        "ratio_to_floor": median(ratios),
        "ratio_streams_to_floor": median(stream_ratios),
        "streams": streams,
        "failures": [f"{p}: exit {m['exit_code']}" for r in reps for p, m in (("full", r["full"]), ("no-change", r["no_change"])) if m["exit_code"]]
        + [f"after-day: exit {a['exit_code']}" for a in after if a["exit_code"]]
        + [f"real world: exit {i['full']['exit_code']}" for i in preset.get("real_world") or [] if i["full"]["exit_code"]],
    }


def _real_world(items: list[dict]) -> dict[str, Any] | None:
    """Medians of the real-world phases (Metapic at 300/min): wall time against the longer lane's floor."""
    if not items:
        return None
    full = [i["full"] for i in items]
    names: set[str] = set()
    for f in full:
        names |= set(f["streams"])
    return {
        "wall_s": median([f["wall_s"] for f in full]),
        "peak_rss_mb": median([f["peak_rss_mb"] for f in full]),
        "requests": median([f["requests"] for f in full]),
        "metapic_max_per_60s": median([f["metapic_max_per_60s"] for f in full]),
        "metapic_refused": median([f.get("metapic_refused") for f in full]),
        "non_200_responses": median([f.get("non_200_responses") for f in full]),
        "metapic_floor_s": median([i["metapic_floor_s"] for i in items]),
        "others_floor_s": median([i["others_floor_s"] for i in items]),
        "lanes_floor_s": median([i["lanes_floor_s"] for i in items]),
        "ratio": median([i["ratio"] for i in items]),
        "stream_seconds": {n: median([f["streams"].get(n, {}).get("seconds") for f in full]) for n in _sorted_streams(names)},
        "failures": [f"real world: exit {f['exit_code']}" for f in full if f["exit_code"]],
    }


def _floor_in_lanes(streams: dict[str, dict]) -> float:
    """The floor if its streams overlapped as the sync's lanes do (pipelines/assets/feeds.py):
    Metapic's streams beside all others, each lane's fetch + load one after another."""
    lanes = {"metapic": 0.0, "main": 0.0}
    for name, st in streams.items():
        lanes["metapic" if name.startswith("metapic") else "main"] += st.get("fetch_s", 0.0) + st.get("load_s", 0.0)
    return max(lanes.values())


def targets(name: str, summary: dict[str, Any], medium_rss: float | None) -> list[dict]:
    """Each target of the issue with the measured value and whether it is met."""
    out: list[dict] = []

    def add(what: str, value: Any, goal: str, ok: bool | None) -> None:
        out.append({"target": what, "value": value, "goal": goal, "ok": ok})

    ratio = summary["ratio_to_floor"]
    add("full sync / floor (fetch+load)", _r(ratio), f"<= {RATIO_TARGET} (engine: Metapic limit lifted)",
        None if ratio is None else ratio <= RATIO_TARGET)
    stream_ratios = {n: st["ratio"] for n, st in summary["streams"].items() if st.get("ratio") is not None}
    if stream_ratios:
        worst = max(stream_ratios, key=stream_ratios.get)
        add(f"worst stream / its own floor ({worst})", _r(stream_ratios[worst]), f"<= {STREAM_RATIO_TARGET}",
            stream_ratios[worst] <= STREAM_RATIO_TARGET)
    rw = summary.get("real_world")
    if rw and rw.get("ratio") is not None:
        add("real world: full sync / longer lane's floor (Metapic 300/min)", _r(rw["ratio"]),
            f"<= {REAL_WORLD_TARGET}", rw["ratio"] <= REAL_WORLD_TARGET)
    for phase, label in (("no_change_", "no-change"), ("after_day_", "+1 day")):
        slow = []
        for n, st in summary["streams"].items():
            full_req, full_s = st.get("requests") or 0, st.get("sync_s") or 0.0
            req, sec = st.get(phase + "requests") or 0, st.get(phase + "s") or 0.0
            if full_req and sec > req * full_s / full_req + PER_REQUEST_SLACK_S:
                slow.append(f"{n} {sec:.1f}s")
        add(f"{label}: streams slower per request than their full sync (+{PER_REQUEST_SLACK_S:.0f}s)"
            + (f": {', '.join(slow)}" if slow else ""), len(slow), "0", not slow)
    lanes = summary["floor"].get("lanes_s")
    if lanes and summary["full"]["wall_s"]:
        add("full sync / floor overlapped like the sync's lanes", _r(summary["full"]["wall_s"] / lanes),
            "(stricter: the floor's Metapic beside its other streams)", None)
    rss = summary["full"]["peak_rss_mb"]
    add("peak RSS of the full sync, MB", _r(rss, 0), f"< {RSS_LIMIT_MB:.0f} (process tree)", None if rss is None else rss < RSS_LIMIT_MB)
    pss = summary["full"].get("peak_pss_mb")
    if pss:
        add("peak PSS of the full sync, MB", _r(pss, 0), "(process tree, shared pages counted once)", None)
    worst_rss = max((summary[p]["peak_rss_mb"] or 0) for p in ("full", "no_change", "after_day"))
    add("peak RSS of any sync (worst phase), MB", _r(worst_rss, 0), f"< {RSS_LIMIT_MB:.0f}", worst_rss < RSS_LIMIT_MB)
    if medium_rss and name != "medium" and rss:
        growth = rss / medium_rss
        add(f"peak RSS vs medium ({medium_rss:.0f} MB)", _r(growth), f"<= {RSS_GROWTH_LIMIT}", growth <= RSS_GROWTH_LIMIT)
    full, nc = summary["full"], summary["no_change"]
    if full["requests"] and nc["requests"] is not None and full["wall_s"]:
        share = nc["requests"] / full["requests"]
        add("no-change requests / full requests", _r(share), "~0.33 (only what can still change)", None)
        bound = share * full["wall_s"] + NO_CHANGE_SLACK_S
        add("no-change sync wall s", _r(nc["wall_s"]), f"<= {bound:.1f} (share x full + {NO_CHANGE_SLACK_S:.0f}s)",
            nc["wall_s"] <= bound)
    add("no-change sync: rows written + history rows", (nc["rows_written"] or 0) + (nc["history_rows_added"] or 0),
        "0", not (nc["rows_written"] or nc["history_rows_added"]))
    if rw:
        worst = rw["metapic_max_per_60s"] or 0
        add("Metapic requests in any 60 s (real-world sync)", worst, f"<= {METAPIC_WINDOW_LIMIT}",
            worst <= METAPIC_WINDOW_LIMIT)
    refused = [p.get("metapic_refused") for p in (full, nc, summary["after_day"], rw or {})]
    if any(r is not None for r in refused):
        worst_refused = max(r or 0 for r in refused)
        add("Metapic 429s served to the sync (worst phase)", worst_refused, "0", worst_refused == 0)
    non_200 = max(p.get("non_200_responses") or 0 for p in (full, nc, summary["after_day"], rw or {}))
    add("non-200 responses to the sync (worst phase; no faults injected)", non_200, "0", non_200 == 0)
    add("syncs that failed", len(summary["failures"]), "0", not summary["failures"])
    return out


def _r(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def _f(value: Any, fmt: str = "{:,.1f}") -> str:
    if value is None:
        return "-"
    return fmt.format(value)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True)))]
    lines.append("  ".join("-" * w for w in widths))
    for r in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    return "\n".join(lines)


def render(preset: dict[str, Any]) -> str:
    """The printed table of one preset."""
    s = preset["summary"]
    scale = preset["scale"]
    head = (
        f"== preset {preset['preset']}: cpc {scale['cpc_orders']:,} · cpl {scale['cpl_orders']:,} · swap "
        f"{scale['swap_orders']:,} · leads {scale['leads']:,} · offers {scale['offers']:,}×"
        f"{scale['participants_per_offer']} — {len(preset['repeats'])} repeat(s), medians; sandbox generated in "
        f"{preset['sandbox']['generate_s']:.0f}s"
    )
    full, nc, ad, fl = s["full"], s["no_change"], s["after_day"], s["floor"]
    phases = _table(
        ["phase", "wall s", "requests", "records", "rec/s", "peak RSS MB", "rows written"],
        [
            ["1. full initial sync", _f(full["wall_s"]), _f(full["requests"], "{:,.0f}"), _f(full["records"], "{:,.0f}"),
             _f(full["records_per_s"], "{:,.0f}"), _f(full["peak_rss_mb"], "{:,.0f}"), _f(full["rows_written"], "{:,.0f}")],
            ["2. no-change incremental", _f(nc["wall_s"]), _f(nc["requests"], "{:,.0f}"), _f(nc["records"], "{:,.0f}"), "",
             _f(nc["peak_rss_mb"], "{:,.0f}"), _f((nc["rows_written"] or 0) + (nc["history_rows_added"] or 0), "{:,.0f}")],
            ["3. incremental after +1 day", _f(ad["wall_s"]), _f(ad["requests"], "{:,.0f}"), _f(ad["records"], "{:,.0f}"), "",
             _f(ad["peak_rss_mb"], "{:,.0f}"), _f(ad["rows_written"], "{:,.0f}")],
            ["4. floor: fetch (bare httpx)", _f(fl["fetch_s"]), _f(fl["requests"], "{:,.0f}"), "", "", "", ""],
            ["   floor: load (DuckDB JSON)", _f(fl["load_s"]), "", "", "", "", ""],
            ["   floor: fetch + load", _f(fl["total_s"]), "", "", "", "", ""],
            ["   floor: max(fetch, load)", _f(fl["max_s"]), "", "", "", "", ""],
            ["   floor: in lanes (Metapic beside the rest)", _f(fl.get("lanes_s")), "", "", "", "", ""],
            *_real_world_rows(s.get("real_world")),
        ],
    )
    stream_rows = []
    outside = [full.get("peak_rss_outside_streams_mb"), ad.get("peak_rss_outside_streams_mb")]
    for name, st in s["streams"].items():
        stream_rows.append([
            name, _f(st["records"], "{:,.0f}"), _f(st["requests"], "{:,.0f}"), _f(st["sync_s"]),
            _f(st["records_per_s"], "{:,.0f}"), _f(st["floor_fetch_s"]), _f(st["floor_load_s"]), _f(st["ratio"], "{:.2f}x"),
            _f(st["peak_rss_mb"], "{:,.0f}"), _f(st["no_change_requests"], "{:,.0f}"), _f(st["no_change_s"]),
            _f(st["after_day_requests"], "{:,.0f}"),
        ])
    streams = _table(
        ["stream (full sync)", "records", "requests", "sync s", "rec/s", "floor fetch s", "floor load s", "ratio",
         "RSS MB", "no-chg req", "no-chg s", "+1d req"],
        stream_rows,
    )
    overhead = (full["wall_s"] or 0) - (full["stream_seconds"] or 0)
    ratio = (
        f"HEADLINE full sync / floor(fetch+load) = {_f(s['ratio_to_floor'], '{:.2f}x')}   "
        f"(time while streams ran / floor = {_f(s['ratio_streams_to_floor'], '{:.2f}x')}; "
        f"process start-up, views and summary outside the streams: {overhead:.1f}s)"
    )
    if any(v is not None for v in outside):
        ratio += (f"\npeak RSS while no stream ran (start-up, checks, views, marts, summary; memory kept from "
                  f"earlier streams counts too): full sync "
                  f"{_f(outside[0], '{:,.0f}')} MB, after +1 day {_f(outside[1], '{:,.0f}')} MB")
    target_rows = [
        [t["target"], str(t["value"]), t["goal"], {True: "ok", False: "MISS", None: "info"}[t["ok"]]]
        for t in preset["targets"]
    ]
    checks = _table(["target", "measured", "goal", ""], target_rows)
    rw = s.get("real_world")
    if rw:
        ratio += (f"\nREAL WORLD (Metapic at 300/min on both sides) full sync / longer lane's floor = "
                  f"{_f(rw['ratio'], '{:.2f}x')}   (Metapic's floor {_f(rw['metapic_floor_s'])}s, other streams' "
                  f"floor {_f(rw['others_floor_s'])}s; per stream: "
                  + ", ".join(f"{n} {_f(v)}s" for n, v in rw["stream_seconds"].items()) + ")")
    parts = [head, phases, "", streams, "", ratio, "", checks]
    if s["failures"]:
        parts += ["", "FAILED SYNCS: " + "; ".join(s["failures"]) + " (see the log_tail in the JSON)"]
    return "\n".join(parts)


def _real_world_rows(rw: dict[str, Any] | None) -> list[list[str]]:
    if not rw:
        return []
    return [
        ["5. real world: full sync (Metapic 300/min)", _f(rw["wall_s"]), _f(rw["requests"], "{:,.0f}"), "", "",
         _f(rw["peak_rss_mb"], "{:,.0f}"), ""],
        ["   real-world floor: longer lane", _f(rw["lanes_floor_s"]), "", "", "", "", ""],
    ]


def results_path(directory: Path) -> Path:
    """``<dir>/<YYYY-MM-DD>.json``, with ``-2``, ``-3``... when that name is taken."""
    directory.mkdir(parents=True, exist_ok=True)
    base = date.today().isoformat()
    path = directory / f"{base}.json"
    n = 1
    while path.exists():
        n += 1
        path = directory / f"{base}-{n}.json"
    return path


def latest_medium_rss(directory: Path) -> tuple[float, str] | None:
    """The medium preset's peak RSS from the newest run that measured one (for the growth check).

    Newest by the run's own ``started_at``, not the file's modification time: a fresh clone gives
    every results file the same time, and the pick was then arbitrary (an old run's figure)."""
    found: list[tuple[str, str, str, float]] = []  # started_at, finished_at, file, rss
    for path in directory.glob("*.json"):
        try:
            data = json.loads(path.read_text())
            rss = data["presets"]["medium"]["summary"]["full"]["peak_rss_mb"]
        except (KeyError, TypeError, ValueError):
            continue
        if rss:
            found.append((str(data.get("started_at") or ""), str(data.get("finished_at") or ""), path.name, float(rss)))
    if not found:
        return None
    *_, name, rss = max(found)
    return rss, name
