"""What ``connect_storm.py`` reads from the server (log, /metrics, profiles) and the tables it prints."""

from __future__ import annotations

import itertools
import json
import math
import pstats
import urllib.request
from collections import Counter
from pathlib import Path

MB = 1024  # KiB per MiB

COUNTERS = (
    "socp_signatures_total",
    "socp_frames_relayed_total",
    "socp_connections_closed_by_limit_total",
    "socp_refusals_total",
    "socp_errors_sent_total",
)


class Metrics:
    """One /metrics scrape: the sum over labels of each sample name."""

    def __init__(self, values: dict[str, float]) -> None:
        self.values = values

    def value(self, name: str) -> float:
        return self.values.get(name, float("nan"))

    def diff(self, before: Metrics) -> dict[str, float]:
        return {name: self.value(name) - before.value(name) for name in COUNTERS}


def scrape_metrics(port: int) -> Metrics:
    """GET http://127.0.0.1:port/metrics (10 s timeout; empty on failure)."""
    values: Counter = Counter()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return Metrics({})
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        try:
            values[name] += float(line.rsplit(" ", 1)[1])
        except ValueError:
            continue
    return Metrics(dict(values))


def log_events(path: Path, offset: int) -> dict:
    """The public channel's events and warnings in the server's JSON log from ``offset``."""
    with path.open("rb") as log:
        log.seek(offset)
        data = log.read()
    end = data.rfind(b"\n") + 1
    out = {"offset": offset + end, "joined": 0, "left": 0, "versions": [], "keys_made": 0, "keys_adopted": 0}
    warnings: Counter = Counter()
    for line in data[:end].splitlines():
        fast = b"Public channel" in line
        if not fast and b'"warn"' not in line and b'"error"' not in line and b'"critical"' not in line:
            continue
        try:
            event = json.loads(line.lstrip(b"\x1e"))
        except ValueError:
            continue
        fmt = event.get("log_format") or ""
        level = (event.get("log_level") or {}).get("name")
        if fmt.startswith("Public channel: {member}"):
            out["joined" if event.get("what") == "joined" else "left"] += 1
            out["versions"].append(event.get("version"))
            out["emits"] = out.get("emits", 0) + 1
        elif fmt.startswith("Public channel: {joined} joined"):  # one line for a turn's events
            joined, left, version = event.get("joined", 0), event.get("left", 0), event.get("version")
            out["joined"] += joined
            out["left"] += left
            if isinstance(version, int):
                out["versions"] += [version - joined - left + 1, version]
            out["emits"] = out.get("emits", 0) + 1
        elif fmt.startswith("Public channel key for version") and "made here" in fmt:
            out["keys_made"] += 1
        if level in ("warn", "error", "critical"):
            warnings[fmt[:80]] += 1
    versions = [v for v in out.pop("versions") if isinstance(v, int)]
    out["version_change"] = (max(versions) - min(versions) + 1) if versions else 0
    out["warnings"] = dict(warnings.most_common(5))
    return out


# ------------------------------------------------------------------ tables


def _ms(x: float) -> str:
    return "-" if x is None or math.isnan(x) else f"{x * 1e3:.0f}"


def _s(x: float | None) -> str:
    return "did not finish" if x is None else f"{x:.1f}"


def _dm(dm: dict) -> str:
    return f"{_ms(dm['p50'])}/{_ms(dm['p99'])}/{_ms(dm['max'])}"


def _late(dm: dict) -> str:
    return f"{dm['late']}/{dm['lost']}/{dm['sent']}"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _header(columns: list[str]) -> None:
    print(_row(columns))
    print(_row(["---"] * len(columns)))


STORM_COLUMNS = [
    "users",
    "acked",
    "all ACKs s",
    "idle s",
    "server CPU s",
    "ms/login",
    "msgs to users",
    "msgs/login",
    "MB to users",
    "KB/login",
    "signed",
    "peak RSS MB",
    "settled MB",
    "bench CPU s",
    "DM p50/p99/max ms",
    "DM late/lost/sent",
]

DISCONNECT_COLUMNS = [
    "users",
    "idle s",
    "server CPU s",
    "steady MB",
    "peak MB",
    "peak/steady",
    "RSS MB after",
    "after/steady",
    "version +",
    "re-keys",
    "pushes (frames)",
    "bench CPU s",
    "DM p50/p99/max ms",
    "DM late/lost/sent",
]


def print_tables(results: list[dict], brief: bool = False) -> None:
    """Phase 1 and phase 2 tables (markdown), one row per size, then the growth between sizes."""
    done = [r for r in results if "storm" in r]
    if not done:
        return
    print("\nconnect storm")
    _header(STORM_COLUMNS)
    for r in done:
        s, n = r["storm"], r["n"]
        print(
            _row(
                [
                    f"{n}",
                    f"{s['acked']}",
                    _s(s["acked_in"]),
                    _s(s["idle_in"]),
                    f"{s['cpu']:.1f}",
                    f"{s['cpu'] / n * 1e3:.1f}",
                    f"{s['frames']}",
                    f"{s['frames'] / n:.0f}",
                    f"{s['bytes'] / 2**20:.0f}",
                    f"{s['bytes'] / n / 1024:.0f}",
                    f"{s['metrics'].get('socp_signatures_total', float('nan')):.0f}",
                    f"{s['peak_rss'] / MB:.0f}",
                    f"{s['settled_rss'] / MB:.0f}",
                    f"{s['bench_cpu']:.1f}",
                    _dm(s["dm"]),
                    _late(s["dm"]),
                ]
            )
        )
    print("\nmass disconnect (TCP abort of all)")
    _header(DISCONNECT_COLUMNS)
    for r in done:
        d = r.get("disconnect")
        if d is None:
            print(_row([f"{r['n']}", "not run"] + [""] * (len(DISCONNECT_COLUMNS) - 2)))
            continue
        steady = d["steady_rss"]
        print(
            _row(
                [
                    f"{r['n']}",
                    _s(d["idle_in"]),
                    f"{d['cpu']:.1f}",
                    f"{steady / MB:.0f}",
                    f"{d['peak_rss'] / MB:.0f}",
                    f"{d['peak_rss'] / steady:.2f}",
                    f"{d['rss_after'] / MB:.0f} ({d['after']:.0f} s)",
                    f"{d['rss_after'] / steady:.2f}",
                    f"{d['log']['version_change']}",
                    f"{d['log']['keys_made']}",
                    f"{d['dm']['pushes']} ({d['dm']['push_frames']})",
                    f"{d['bench_cpu']:.1f}",
                    _dm(d["dm"]),
                    _late(d["dm"]),
                ]
            )
        )
    for r in done:
        s = r["storm"]
        extra = [
            f"RSS before the storm {r['rss_before'] / MB:.0f} MB, "
            f"DM-only server CPU {r['base_rate']:.2f} cores"
        ]
        extra.append(
            f"storm: public channel version +{s['log']['version_change']} in "
            f"{s['log'].get('emits', 0)} emits, re-keys {s['log']['keys_made']}"
        )
        if "disconnect" in r:
            emits = r["disconnect"]["log"].get("emits", 0)
            extra.append(f"disconnect: public channel events in {emits} emits")
        extra.append(f"pushes seen by a DM user {s['dm']['pushes']} ({s['dm']['push_frames']} frames)")
        if s["failures"]:
            extra.append(f"failures {s['failures']}")
        if not s["finished"]:
            extra.append(f"storm did not finish within the timeout (wall {s['wall']:.0f} s)")
        for phase in ("storm", "disconnect"):
            if phase in r and r[phase]["log"]["warnings"]:
                extra.append(f"{phase} warnings {r[phase]['log']['warnings']}")
        if r.get("probe_errors"):
            extra.append(f"DM probe errors {r['probe_errors']}")
        print(f"  {r['n']}: " + "; ".join(extra))
    if brief or len(done) < 2:
        return
    print("\ngrowth between sizes: ratio per doubling of N (slope per 1,000 users)")
    measures = [
        ("storm server CPU s", lambda r: r["storm"]["cpu"]),
        ("storm msgs to users", lambda r: r["storm"]["frames"]),
        ("storm idle s", lambda r: r["storm"]["idle_in"]),
        ("settled RSS MB", lambda r: r["storm"]["settled_rss"] / MB),
        ("disconnect server CPU s", lambda r: r.get("disconnect", {}).get("cpu")),
        ("disconnect idle s", lambda r: r.get("disconnect", {}).get("idle_in")),
        ("disconnect peak RSS MB", lambda r: r.get("disconnect", {}).get("peak_rss", 0) / MB or None),
    ]
    for name, get in measures:
        cells = []
        for a, b in itertools.pairwise(done):
            va, vb = get(a), get(b)
            if not va or not vb:
                cells.append(f"{a['n']}->{b['n']}: -")
                continue
            doublings = math.log2(b["n"] / a["n"])
            ratio = (vb / va) ** (1 / doublings)
            slope = (vb - va) / ((b["n"] - a["n"]) / 1000)
            cells.append(f"{a['n']}->{b['n']}: x{ratio:.2f} per doubling ({slope:+.1f} per 1,000)")
        print(f"  {name}: " + "; ".join(cells))


def print_profile(path: Path, title: str, top: int) -> None:
    """The top functions of a cProfile file by cumulative and by own time, as % of the profiled CPU."""
    stats = pstats.Stats(str(path))
    entries = stats.stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    total = sum(v[2] for v in entries.values()) or 1.0

    def name(key: tuple) -> str:
        file, line, func = key
        short = "/".join(Path(file).parts[-2:]) if file != "~" else ""
        return f"{short}:{line}({func})" if short else func

    print(f"\n{title}: {total:.1f} s of reactor-thread CPU profiled")
    print("  by cumulative time:")
    for key, (_, nc, tt, ct, _) in sorted(entries.items(), key=lambda kv: -kv[1][3])[:top]:
        print(f"    {ct / total * 100:5.1f}% cum {tt / total * 100:5.1f}% own {nc:>9} calls  {name(key)}")
    print("  by own time:")
    for key, (_, nc, tt, ct, _) in sorted(entries.items(), key=lambda kv: -kv[1][2])[: max(10, top // 2)]:
        print(f"    {tt / total * 100:5.1f}% own {ct / total * 100:5.1f}% cum {nc:>9} calls  {name(key)}")
