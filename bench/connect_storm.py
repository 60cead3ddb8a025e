"""Connect storm and mass disconnect: how one server's cost grows with its number of users.

For each ``--users`` size, a fresh server (a separate process, under
``bench/_storm_server.py``: connection limits raised to the size + 100, optional cProfile)
and, on it, the DM probe: ``--dm-users`` real-key users exchanging a MSG_DIRECT every
``--dm-interval`` s throughout (open loop; bench/_storm_users.py).  Then:

1. **Connect storm**: N light raw WebSocket users (random-modulus RSA-4096 public keys,
   first-use hellos, ``"presence": "follow"`` like ``socp-client``, ``--presence lists``
   for batched lists of everyone, or ``--presence events`` for the spec's per-event frames)
   connect ``--batch`` at a time, no pacing: a batch
   starts when the previous one's hellos are all acknowledged.  Measured: time until every
   ACK, time until the server is idle, server CPU seconds (/proc), the messages and bytes
   the users received (in all and per login), peak RSS (VmHWM and VmRSS sampled every
   0.1 s) and settled RSS (``--settle`` s after idle).
2. **Mass disconnect**: all N drop at once by TCP abort (RST, as in a network blip).
   Measured: time until the server is idle, its CPU, peak RSS over the next ``--after`` s
   and RSS ``--after`` s after the drop (target: peak within 1.5x the settled RSS of phase 1
   and back to it within 60 s), the public channel's version change, re-keys and
   membership pushes (server log; pushes as received by a DM user).

"Idle" is the server using less than its DM-only CPU rate (measured before the storm) plus
5% of a core over 1.5 s.  Every wait is bounded (``--timeout`` per phase); a phase that
does not finish is reported as such with what was reached.  Only 127.0.0.1 is used.

    python bench/connect_storm.py [--users 1000,5000,10000] [--batch 100] [--presence follow|lists|events]
        [--dm-users 4] [--dm-interval 0.05] [--timeout 900] [--after 60] [--profile DIR]

``--profile DIR`` runs cProfile in the server during each phase (reactor thread only) and
prints the top functions by cumulative time; the files stay in DIR.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import time
from collections import Counter
from pathlib import Path

from _harness import ServerProcess, free_port, generate_keys, machine_description, sleep, stop_all, work_dir
from _storm_report import log_events, print_profile, print_tables, scrape_metrics
from _storm_users import DmProbe, StormUser, start_user
from twisted.internet import defer, task, threads

LAUNCHER = str(Path(__file__).resolve().parent / "_storm_server.py")
IDLE_WINDOW = 1.5  # seconds the server must stay near its DM-only CPU rate to count as idle


class Sampler:
    """The server's CPU seconds and VmRSS every 0.1 s, for idle detection and peaks."""

    def __init__(self, reactor, server: ServerProcess) -> None:
        self.server = server
        self.samples: list[tuple[float, float, int]] = []
        self._loop = task.LoopingCall(self._sample)
        self._loop.clock = reactor

    def _sample(self) -> None:
        try:
            self.samples.append((time.monotonic(), self.server.cpu_seconds(), self.server.rss_kib()))
        except (OSError, RuntimeError, ValueError):
            pass

    def start(self) -> None:
        self._loop.start(0.1)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def rate(self, since: float) -> float:
        """CPU cores used since ``since`` (monotonic)."""
        window = [s for s in self.samples if s[0] >= since]
        if len(window) < 2:
            return float("nan")
        return (window[-1][1] - window[0][1]) / (window[-1][0] - window[0][0])

    def peak_rss(self, start: float, end: float) -> int:
        return max((s[2] for s in self.samples if start <= s[0] <= end), default=0)

    async def idle(self, threshold: float, deadline: float) -> float | None:
        """Wait until the CPU rate over IDLE_WINDOW s < ``threshold``; the window's start, or None."""
        while time.monotonic() < deadline:
            await sleep(0.25)
            now = time.monotonic()
            if (
                self.samples
                and now - self.samples[0][0] > IDLE_WINDOW
                and self.rate(now - IDLE_WINDOW) < threshold
            ):
                return now - IDLE_WINDOW
        return None


def vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def bench_cpu() -> float:
    usage = os.times()
    return usage.user + usage.system


def raise_fd_limit(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise SystemExit(
                f"the file descriptor limit is {hard} (hard): {needed} needed; raise `ulimit -Hn`"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


async def storm(
    reactor, server: ServerProcess, options, n: int, deadline: float
) -> tuple[list, Counter, float | None]:
    """Connect ``n`` users in batches; returns (users, failures, seconds until the last ACK or None)."""
    users: list[StormUser] = []
    failures: Counter = Counter()
    started = time.monotonic()
    for first in range(0, n, options.batch):
        batch = [StormUser(options.presence) for _ in range(min(options.batch, n - first))]
        users += batch
        for user in batch:
            start_user(reactor, server.port, user, failures)
        while not all(u.acked.called or u.failure for u in batch):
            if time.monotonic() > deadline:
                return users, failures, None
            await sleep(0.01)
    return users, failures, time.monotonic() - started


async def one_size(reactor, options, n: int, keys: list, work: Path) -> dict:
    """Both phases at ``n`` users on a fresh server; a dict of the measures."""
    metrics_port = free_port()
    env = {"SOCP_STORM_MAX_CONNECTIONS": str(max(10_000, n + 100))}
    if options.profile:
        env["SOCP_STORM_PROFILE"] = str(Path(options.profile) / f"server-{n}")
    if options.gc_log:
        env["SOCP_STORM_GC_LOG"] = str(Path(options.gc_log).resolve()) + f".{n}"
    extra = ("--metrics", f"tcp:{metrics_port}:interface=127.0.0.1", "--log-format", "json")
    server = ServerProcess(
        work, f"s{n}", keys[0], log_level="info", extra_args=extra, launcher=LAUNCHER, env=env
    )
    sampler = Sampler(reactor, server)
    probe = DmProbe(reactor, keys[1:], options.dm_interval, options.presence)
    result: dict = {"n": n}
    users: list[StormUser] = []
    try:
        await server.listening()
        sampler.start()
        await probe.connect(server.port)
        probe.start()
        await sleep(3.0)
        base_rate = sampler.rate(time.monotonic() - 2.5)
        threshold = base_rate + 0.05
        result.update(rss_before=server.rss_kib(), base_rate=base_rate)
        metrics0 = await threads.deferToThread(scrape_metrics, metrics_port)
        log0 = log_events(server.log_path, 0)

        # ---- phase 1: connect storm
        probe.phase = "storm"
        if options.profile:
            os.kill(server.pid, signal.SIGUSR1)
        t0, cpu0, bcpu0 = time.monotonic(), server.cpu_seconds(), bench_cpu()
        deadline = t0 + options.timeout
        users, failures, acked_in = await storm(reactor, server, options, n, deadline)
        idle_at = await sampler.idle(threshold, deadline)
        t1 = idle_at if idle_at is not None else time.monotonic()
        probe.phase = "storm-settle"
        if options.profile:
            os.kill(server.pid, signal.SIGUSR2)
        result["storm"] = {
            "acked": sum(1 for u in users if u.acked.called and not u.failure),
            "failures": dict(failures),
            "acked_in": acked_in,
            "idle_in": None if idle_at is None else t1 - t0,
            "finished": acked_in is not None and idle_at is not None,
            "cpu": server.cpu_seconds() - cpu0,
            "bench_cpu": bench_cpu() - bcpu0,
            "wall": time.monotonic() - t0,
            "frames": sum(u.frames_received for u in users),
            "bytes": sum(u.bytes_received for u in users),
            "peak_rss": max(vm_hwm_kib(server.pid), sampler.peak_rss(t0, time.monotonic())),
        }
        await sleep(options.settle)
        settled = result["storm"]["settled_rss"] = server.rss_kib()
        metrics1 = await threads.deferToThread(scrape_metrics, metrics_port)
        log1 = log_events(server.log_path, log0["offset"])
        result["storm"].update(log=log1, metrics=metrics1.diff(metrics0), dm=probe.stats("storm"))

        # ---- phase 2: mass disconnect
        probe.phase = "disconnect"
        hwm0 = vm_hwm_kib(server.pid)
        if options.profile:
            os.kill(server.pid, signal.SIGUSR1)
        t2, cpu2, bcpu2 = time.monotonic(), server.cpu_seconds(), bench_cpu()
        for user in users:
            user.abort()
        idle_at = await sampler.idle(threshold, t2 + options.timeout)
        if options.profile:
            os.kill(server.pid, signal.SIGUSR2)
        idle_in = None if idle_at is None else idle_at - t2
        cpu_idle = server.cpu_seconds() - cpu2
        probe.phase = "after"
        while time.monotonic() < t2 + options.after:
            await sleep(0.5)
        hwm1 = vm_hwm_kib(server.pid)
        peak = max(sampler.peak_rss(t2, time.monotonic()), hwm1 if hwm1 > hwm0 else 0)
        metrics2 = await threads.deferToThread(scrape_metrics, metrics_port)
        result["disconnect"] = {
            "idle_in": idle_in,
            "finished": idle_in is not None,
            "cpu": cpu_idle,
            "bench_cpu": bench_cpu() - bcpu2,
            "steady_rss": settled,
            "peak_rss": peak,
            "rss_after": server.rss_kib(),
            "after": options.after,
            "log": log_events(server.log_path, log1["offset"]),
            "metrics": metrics2.diff(metrics1),
            "dm": probe.stats("disconnect"),
            "users_left": metrics2.value("socp_users_local"),
        }
        result["probe_errors"] = dict(probe.errors)
    finally:
        probe.stop()
        sampler.stop()
        for user in users:
            user.abort()
        probe.close()
        await sleep(0.5)
        server.stop()
    return result


async def main(reactor, options) -> None:
    print(machine_description())
    sizes = options.users
    raise_fd_limit(max(sizes) + 1024)
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    print(
        f"file descriptors: soft limit {soft} (inherited by the server); users {sizes}, "
        f"batch {options.batch}, presence {options.presence}, "
        f"DM probe {options.dm_users} users every {options.dm_interval * 1e3:.0f} ms"
    )
    keys = generate_keys(1 + options.dm_users)
    work = work_dir()
    if options.profile:
        Path(options.profile).mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for n in sizes:
            print(f"--- {n} users ...", flush=True)
            result = await one_size(reactor, options, n, keys, work)
            results.append(result)
            print_tables([result], brief=True)
            if options.profile:
                for phase, k in (("storm", 0), ("disconnect", 1)):
                    path = Path(options.profile) / f"server-{n}.{k}.prof"
                    if path.exists():
                        print_profile(path, f"server profile, {phase} at {n} users", options.profile_top)
    finally:
        stop_all([], work, keep=options.keep)
    print_tables(results)


def parse_sizes(text: str) -> list[int]:
    sizes = [int(x) for x in text.split(",") if x.strip()]
    if not sizes or any(not 1 <= s <= 20_000 for s in sizes):
        raise argparse.ArgumentTypeError("sizes 1..20000, comma-separated")
    return sizes


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--users",
        type=parse_sizes,
        default=[1000, 5000, 10000],
        help="sizes, each on a fresh server (default 1000,5000,10000)",
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=100,
        help="users connecting at once (default 100, the per-address unidentified limit)",
    )
    parser.add_argument(
        "--presence",
        choices=("follow", "lists", "events"),
        default="follow",
        help="the users' presence mode (default follow, as socp-client)",
    )
    parser.add_argument(
        "--dm-users", type=int, default=4, help="real-key DM probe users, in pairs (default 4)"
    )
    parser.add_argument(
        "--dm-interval", type=float, default=0.05, help="seconds between probe DMs (default 0.05)"
    )
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="cap on each phase, seconds (default 900)"
    )
    parser.add_argument(
        "--settle", type=float, default=5.0, help="idle seconds before the settled RSS (default 5)"
    )
    parser.add_argument("--after", type=float, default=60.0, help="RSS this long after the drop (default 60)")
    parser.add_argument(
        "--profile", metavar="DIR", help="cProfile the server's reactor thread per phase into DIR"
    )
    parser.add_argument(
        "--profile-top", type=int, default=25, help="functions printed per profile (default 25)"
    )
    parser.add_argument(
        "--gc-log", metavar="PATH", help="the server logs its GC pauses of 5 ms or more to PATH.<N>"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    opts = parser.parse_args()
    if not 1 <= opts.batch <= 100 or not 2 <= opts.dm_users <= 16 or opts.dm_users % 2:
        parser.error("--batch 1..100, --dm-users an even 2..16")
    if not 0.01 <= opts.dm_interval <= 10 or not 10 <= opts.timeout <= 7200 or not 0 <= opts.after <= 600:
        parser.error("--dm-interval 0.01..10, --timeout 10..7200, --after 0..600")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, opts)))
