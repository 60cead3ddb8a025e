"""(e) Server memory per idle connected user, with 1,000+ users on one server.

One real server, a separate process so its memory is its own.  A warm-up crowd
connects, says hello and leaves (code paths, caches and the database warm up), then
the baseline is read; then ``--users`` raw WebSocket users connect, ``--batch`` at a
time, each with a distinct user id, its own public key and a plain first-use
USER_HELLO (TOFU, docs/PROTOCOL-EXTENSIONS.md §6.3).  The keys are well-formed
RSA-4096 public keys with random moduli: free to make, and a hello without proof
never uses a private half.  Every user reads everything the server sends (presence
relays, public channel membership and key shares) and discards it.  Once the server
is idle again (its CPU time stops growing) the memory is read again.

Two numbers per user, (after - before) / users:

* **live heap**: bytes the process has allocated and not freed (glibc ``mallinfo2``,
  read in the server by ``bench/_memprobe.py`` on SIGUSR1 after a full GC; the server
  runs with ``PYTHONMALLOC=malloc`` so Python objects are counted too).  What one
  idle connected user costs.
* **RSS**: resident memory (VmRSS).  It also holds the memory the allocator kept
  after the connection storm's transient buffers were freed, so it depends on how
  fast the users arrived: ``--pace S`` waits after each batch until the server was
  idle for S seconds (users arriving over a minute), the default sends every batch
  at once (a reconnect storm).  ``--allocator pymalloc`` runs the server with Python's
  default allocator (then only RSS is meaningful).

    python bench/idle_memory.py [--users 1000] [--batch 25] [--pace 0.3]

The target is <= 30 KiB per idle user connection.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import time
from pathlib import Path

from _harness import (
    RawUser,
    ServerProcess,
    connect_user,
    generate_keys,
    machine_description,
    sleep,
    stop_all,
    until,
    work_dir,
)
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers
from twisted.internet import defer, task

from socp_tw import crypto, wire

PROBE = str(Path(__file__).resolve().parent / "_memprobe.py")


def fake_public_key() -> str:
    """b64u(DER) of an RSA-4096, e=65537 public key with a random modulus (no key generation)."""
    modulus = secrets.randbits(4096) | (1 << 4095) | 1
    return crypto.encode_public_key(RSAPublicNumbers(65537, modulus).public_key())


async def connect_batch(url: str, count: int) -> list[RawUser]:
    users = [RawUser(wire.new_uuid4(), fake_public_key(), discard_after_hello=True) for _ in range(count)]
    connecting = [defer.Deferred.fromCoroutine(connect_user(url, user)) for user in users]
    return list(await defer.gatherResults(connecting))


async def quiet(server: ServerProcess, settle: float = 1.5, timeout: float = 120.0) -> float:
    """Wait until the server used < 2% CPU (at least one clock tick) over ``settle`` seconds.

    Returns the seconds waited.
    """
    start = time.monotonic()
    last = server.cpu_seconds()
    threshold = max(0.02 * settle, 1.5 / os.sysconf("SC_CLK_TCK"))
    while time.monotonic() - start < timeout:
        await sleep(settle)
        now = server.cpu_seconds()
        if now - last < threshold:
            return time.monotonic() - start
        last = now
    raise RuntimeError(f"server still busy after {timeout:g} s")


async def probe(server: ServerProcess, out: Path, trim: bool = False) -> dict:
    """Ask the server for its memory (SIGUSR1 -> one JSON line in ``out``; SIGUSR2: after malloc_trim)."""
    seen = len(out.read_text().splitlines()) if out.exists() else 0
    os.kill(server.pid, signal.SIGUSR2 if trim else signal.SIGUSR1)
    await until(lambda: out.exists() and len(out.read_text().splitlines()) > seen, "the memory probe", 30)
    return json.loads(out.read_text().splitlines()[-1])


async def main(reactor, options) -> None:
    print(machine_description())
    keys = generate_keys(1)
    work = work_dir()
    out = work / "memprobe.jsonl"
    env = {"SOCP_MEMPROBE_OUT": str(out)}
    if options.allocator == "malloc":
        env["PYTHONMALLOC"] = "malloc"
    extra = () if options.trim_interval is None else ("--memory-trim-interval", f"{options.trim_interval:g}")
    server = ServerProcess(
        work, "s0", keys[0], log_level=options.log_level, launcher=PROBE, env=env, extra_args=extra
    )
    users: list[RawUser] = []
    try:
        await server.listening()
        warm = await connect_batch(server.url, options.warmup)
        await quiet(server)
        for user in warm:
            user.close()
        await quiet(server)
        before = await probe(server, out)
        base_cpu = server.cpu_seconds()
        started = time.monotonic()
        for start in range(0, options.users, options.batch):
            users += await connect_batch(server.url, min(options.batch, options.users - start))
            if options.pace:
                await quiet(server, settle=options.pace)
        connected = time.monotonic() - started
        waited = await quiet(server)
        cpu = server.cpu_seconds() - base_cpu
        await sleep(options.settle)  # idle: what an operator reads a little later (after a trim check)
        after = await probe(server, out)
        await sleep(5.0)
        later = server.rss_kib()
        trimmed = await probe(server, out, trim=True)
        alive = sum(1 for user in users if user.transport is not None and user.transport.connected)
    finally:
        for user in users:
            user.close()
        await sleep(0.5)
        stop_all([server], work, keep=options.keep)
    n = len(users)
    arrival = f"batches of {options.batch}" + (f", idle {options.pace:g} s between" if options.pace else "")
    rss_per_user = (after["rss_kib"] - before["rss_kib"]) / n
    print(f"idle memory: {n} users connected to one server ({alive} still connected), hello'd and idle")
    print(f"  arrival: {arrival}; all connected in {connected:.1f} s; server idle {waited:.1f} s later")
    trim = "server default" if options.trim_interval is None else f"{options.trim_interval:g} s"
    print(f"  allocator: {after['pymalloc']}; server CPU for the whole crowd: {cpu:.1f} s")
    print(f"  memory trim interval: {trim}; memory read {options.settle:g} s after the server went idle")
    if options.allocator == "malloc":
        heap_per_user = (after["heap_in_use"] - before["heap_in_use"]) / n / 1024
        print(
            f"  live heap: {before['heap_in_use'] // 1024} KiB -> {after['heap_in_use'] // 1024} KiB "
            f"= {heap_per_user:.1f} KiB per idle user   (target <= 30 KiB)"
        )
        kept = after["heap_free_kept"] // 1024
        print(f"  allocator keeps {kept} KiB freed (the arrivals' transient buffers)")
    print(
        f"  RSS: {before['rss_kib']} KiB -> {after['rss_kib']} KiB ({later} KiB 5 s later) "
        f"= {rss_per_user:.1f} KiB per idle user"
    )
    print(
        f"  (diagnostic: after a full malloc_trim(0) now, RSS {trimmed['rss_kib']} KiB "
        f"= {(trimmed['rss_kib'] - before['rss_kib']) / n:.1f} KiB per idle user)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000, help="users connected (default 1000)")
    parser.add_argument(
        "--batch",
        type=int,
        default=25,
        help="users connecting at once (default 25; at most 100, the server's max_unidentified_per_address: "
        "they all come from 127.0.0.1)",
    )
    parser.add_argument(
        "--pace",
        type=float,
        default=0.3,
        metavar="SECONDS",
        help="after each batch, wait until the server was idle for SECONDS (default 0.3; 0: no wait)",
    )
    parser.add_argument("--warmup", type=int, default=50, help="users of the warm-up crowd (default 50)")
    parser.add_argument(
        "--allocator",
        choices=("malloc", "pymalloc"),
        default="malloc",
        help="the server's Python allocator (default malloc: the live heap can be measured)",
    )
    parser.add_argument(
        "--trim-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="server's --memory-trim-interval (default: the server's default; 0: never trim)",
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=6.0,
        metavar="SECONDS",
        help="wait this long after the server went idle before reading its memory (default 6)",
    )
    parser.add_argument("--log-level", default="warn", help="server's --log-level (default warn)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server log)")
    opts = parser.parse_args()
    if not 1 <= opts.users <= 5000 or not 1 <= opts.batch <= 100 or not 0 <= opts.warmup <= 100:
        parser.error("--users 1..5000, --batch 1..100, --warmup 0..100")
    if not 0 <= opts.settle <= 60 or (opts.trim_interval is not None and not 0 <= opts.trim_interval <= 3600):
        parser.error("--settle 0..60, --trim-interval 0..3600")
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, opts)))
