"""Mesh scale: a mesh of 5, 10 and 20 servers on this machine, how it forms and what it costs.

For each size N: N real servers (separate processes, ``--metrics`` on each), all joined to
the first (``--peer`` s0), as an operator would start them.  Measured:

* **form**: from the last server listening until every server has N-1 live links;
* **login / logout convergence**: one observer user on every server; a user logs in on
  server 0 (each round) and the time runs from its USER_HELLO until every observer
  has the USER_ADVERTISE its server relays (every server knows), then from the TCP abort
  until every observer has the USER_REMOVE; p50 / p99 over ``--logins`` rounds;
* **frames per advertise**: USER_ADVERTISE frames received on server links, summed over the
  mesh (``socp_frames_received_total{kind="server"}`` of every server), per login; a flood
  over a full mesh where everybody relays to everybody is (N-1)^2, the minimum N-1;
* **idle**: over ``--idle`` seconds with nothing happening, each server's CPU (ms per s,
  /proc) and the frame signatures it made (``socp_signatures_total{kind="frame"}``), i.e.
  the heartbeat cost (one round every 15 s);
* **other floods**: the public channel's PUBLIC_CHANNEL_ADD / _UPDATED frames and all frames
  received on server links, per login and logout;
* **RSS** of each server, idle, after the logins.

    python bench/mesh_scale.py [--sizes 5,10,20] [--logins 12] [--idle 31]

Prints one table (and the raw numbers per size); docs/BENCHMARKS.md, "Mesh scale".
"""

from __future__ import annotations

import argparse
import re
import time
import urllib.request

from _harness import (
    RawUser,
    ServerProcess,
    UserKey,
    connect_user,
    free_port,
    generate_keys,
    machine_description,
    percentile,
    sleep,
    stop_all,
    until,
    work_dir,
)
from twisted.internet import defer, task

from socp_tw import wire

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN|[+-]Inf)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def scrape(port: int) -> dict[tuple[str, frozenset], float]:
    """One server's /metrics, as {(name, labels): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        samples[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)
    return samples


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


class MeshServer(ServerProcess):
    """A server process with ``--metrics`` on a port of its own."""

    def __init__(self, work, name, key, peers=(), log_level="info") -> None:
        self.metrics_port = free_port()
        metrics = ("--metrics", f"tcp:{self.metrics_port}:interface=127.0.0.1")
        super().__init__(work, name, key, peers=peers, log_level=log_level, extra_args=metrics)

    def scrape(self) -> dict:
        return scrape(self.metrics_port)


async def form_mesh(work, n: int, keys: list, log_level: str) -> tuple[list[MeshServer], float, float]:
    """N servers joined to the first: (servers, seconds to all listening, seconds to a full mesh)."""
    started = time.monotonic()
    first = MeshServer(work, "s0", keys[0], log_level=log_level)
    servers = [first]
    try:
        await first.listening()
        for i in range(1, n):
            servers.append(MeshServer(work, f"s{i}", keys[i], peers=(first.url,), log_level=log_level))
        for server in servers:
            await server.listening(timeout=120)
        listening = time.monotonic()
        await until(lambda: all(s.links() == n - 1 for s in servers), f"a full mesh of {n}", 180, step=0.1)
        formed = time.monotonic()
    except BaseException:
        stop_all(servers)
        raise
    return servers, listening - started, formed - listening


def totals(servers: list[MeshServer]) -> dict[str, float]:
    """Mesh-wide sums of the counters this benchmark reads."""
    out = {"advertise": 0.0, "remove": 0.0, "heartbeat": 0.0, "public": 0.0, "all": 0.0, "signatures": 0.0}
    kinds = {"USER_ADVERTISE": "advertise", "USER_REMOVE": "remove", "HEARTBEAT": "heartbeat"}
    kinds.update(PUBLIC_CHANNEL_ADD="public", PUBLIC_CHANNEL_UPDATED="public")
    for server in servers:
        for (name, labels), value in server.scrape().items():
            if name == "socp_signatures_total" and ("kind", "frame") in labels:
                out["signatures"] += value
            if name != "socp_frames_received_total" or ("kind", "server") not in labels:
                continue
            out["all"] += value
            kind = dict(labels).get("type")
            if kind in kinds:
                out[kinds[kind]] += value
    return out


async def measure_size(reactor, n: int, keys: list, user_key: UserKey, options) -> dict:
    work = work_dir()
    print(f"-- {n} servers: starting...", flush=True)
    servers, start_s, form_s = await form_mesh(work, n, keys[:n], options.log_level)
    print(f"   all listening after {start_s:.1f} s, full mesh {form_s:.1f} s later", flush=True)
    subject_id = wire.new_uuid4()
    seen: dict[tuple[str, str], float] = {}
    waiters: dict[str, tuple[set[str], defer.Deferred]] = {}

    def on_frame(user: RawUser, frame: dict) -> None:
        kind = frame.get("type")
        if kind in ("USER_ADVERTISE", "USER_REMOVE") and frame["payload"].get("user_id") == subject_id:
            seen[(user.user_id, kind)] = time.perf_counter()
            pending = waiters.get(kind)
            if pending is not None:
                pending[0].discard(user.user_id)
                if not pending[0]:
                    del waiters[kind]
                    pending[1].callback(None)

    observers: list[RawUser] = []

    def expect(kind: str) -> defer.Deferred:
        d = defer.Deferred()
        d.addTimeout(30, reactor)
        waiters[kind] = ({o.user_id for o in observers}, d)
        return d

    login, logout = [], []
    result: dict = {"n": n, "start": start_s, "form": form_s}
    try:
        for server in servers:
            observers.append(
                await connect_user(server.url, RawUser(wire.new_uuid4(), user_key.text, on_frame))
            )
        await sleep(options.settle)
        before = totals(servers)
        for round_ in range(options.logins + 1):
            home = servers[0]  # a user id stays with the server that first saw it (TOFU)
            subject = RawUser(subject_id, user_key.text)
            await connect_user(home.url, subject, hello=False)
            online = expect("USER_ADVERTISE")
            start = time.perf_counter()
            subject.hello()
            await online
            took = max(seen[(o.user_id, "USER_ADVERTISE")] for o in observers) - start
            await sleep(options.pause)
            offline = expect("USER_REMOVE")
            start = time.perf_counter()
            subject.transport.abortConnection()
            await offline
            gone = max(seen[(o.user_id, "USER_REMOVE")] for o in observers) - start
            if round_ > 0:  # the first login also pins the key everywhere (database writes)
                login.append(took)
                logout.append(gone)
            await sleep(options.pause)
        await sleep(1.0)  # late duplicates arrive
        after = totals(servers)
        logins = options.logins + 1
        result["adv_frames"] = (after["advertise"] - before["advertise"]) / logins
        result["rem_frames"] = (after["remove"] - before["remove"]) / logins
        # Per login and logout: the public channel's membership gossip, and every server frame.
        result["public_frames"] = (after["public"] - before["public"]) / logins
        result["all_frames"] = (after["all"] - before["all"]) / logins
        result["login"], result["logout"] = login, logout
        # Idle: nothing but heartbeats (and a status line a server every 30 s).
        await sleep(2.0)
        idle_before = [
            (s.cpu_seconds(), metric(s.scrape(), "socp_signatures_total", kind="frame")) for s in servers
        ]
        hb_before = totals(servers)["heartbeat"]
        idle_start = time.monotonic()
        await sleep(options.idle)
        idle_wall = time.monotonic() - idle_start
        idle_after = [
            (s.cpu_seconds(), metric(s.scrape(), "socp_signatures_total", kind="frame")) for s in servers
        ]
        hb_after = totals(servers)["heartbeat"]
        rounds = idle_wall / 15.0
        cpu = [(b[0] - a[0]) / idle_wall * 1e3 for a, b in zip(idle_before, idle_after, strict=True)]
        sigs = [(b[1] - a[1]) / rounds for a, b in zip(idle_before, idle_after, strict=True)]
        result["idle_cpu_ms_s"] = sum(cpu) / n
        result["idle_cpu_max"] = max(cpu)
        result["hb_sigs_round"] = sum(sigs) / n
        result["hb_frames_round"] = (hb_after - hb_before) / rounds / n
        rss = [s.rss_kib() / 1024 for s in servers]
        result["rss_mean"], result["rss_max"] = sum(rss) / n, max(rss)
    finally:
        for user in observers:
            user.close()
        await sleep(0.3)
        stop_all(servers, work, keep=options.keep)
        if options.keep:
            print(f"   logs kept in {work}")
    print(
        f"   login p50 {percentile(login, 50) * 1e3:.0f} ms p99 {percentile(login, 99) * 1e3:.0f} ms;"
        f" advertise frames {result['adv_frames']:.1f} (flood (N-1)^2 = {(n - 1) ** 2});"
        f" idle {result['idle_cpu_ms_s']:.1f} ms/s, {result['hb_sigs_round']:.1f} signatures a round"
        f" per server; RSS {result['rss_mean']:.0f} MiB",
        flush=True,
    )
    await sleep(2.0)  # the ports and the CPU settle before the next size
    return result


def table(results: list[dict]) -> str:
    head = (
        "| servers | form (s) | login p50 / p99 (ms) | logout p50 / p99 (ms) | USER_ADVERTISE frames"
        " per login (flood (N-1)²) | USER_REMOVE frames | heartbeat signatures / server / round"
        " | heartbeats received / server / round | idle CPU / server (ms/s, max) | RSS / server (MiB, max)"
        " | PUBLIC_CHANNEL_* frames per login+logout | all server frames per login+logout |"
    )
    rows = [head, "|" + "---|" * 12]
    for r in results:
        n = r["n"]
        login = f"{percentile(r['login'], 50) * 1e3:.0f} / {percentile(r['login'], 99) * 1e3:.0f}"
        logout = f"{percentile(r['logout'], 50) * 1e3:.0f} / {percentile(r['logout'], 99) * 1e3:.0f}"
        idle = f"{r['idle_cpu_ms_s']:.1f} ({r['idle_cpu_max']:.1f})"
        rss = f"{r['rss_mean']:.0f} ({r['rss_max']:.0f})"
        rows.append(
            f"| {n} | {r['form']:.1f} | {login} | {logout} | {r['adv_frames']:.1f} ({(n - 1) ** 2})"
            f" | {r['rem_frames']:.1f} | {r['hb_sigs_round']:.1f} | {r['hb_frames_round']:.1f}"
            f" | {idle} | {rss} | {r['public_frames']:.0f} | {r['all_frames']:.0f} |"
        )
    return "\n".join(rows)


async def main(reactor, options) -> None:
    print(machine_description())
    sizes = options.sizes
    keys = generate_keys(max(sizes) + 1)
    user_key = UserKey(keys[-1])
    results = []
    for n in sizes:
        results.append(await measure_size(reactor, n, keys, user_key, options))
    print(f"mesh scale, {options.logins} logins per size, idle window {options.idle:g} s:")
    print(table(results))


def sizes(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or any(not 2 <= v <= 40 for v in values):
        raise argparse.ArgumentTypeError("sizes are 2..40, comma-separated")
    return values


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=sizes, default=[5, 10, 20], help="mesh sizes (default 5,10,20)")
    parser.add_argument("--logins", type=int, default=12, help="logins measured per size (default 12)")
    parser.add_argument("--idle", type=float, default=31.0, help="idle window, seconds (default 31)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between events (default 0.5)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after the mesh forms (default 3)")
    parser.add_argument("--log-level", default="info", help="servers' --log-level (default info)")
    parser.add_argument("--keep", action="store_true", help="keep the work dirs (server logs)")
    opts = parser.parse_args()
    if not 1 <= opts.logins <= 200 or not 5 <= opts.idle <= 600:
        parser.error("--logins 1..200, --idle 5..600")
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, opts)))
