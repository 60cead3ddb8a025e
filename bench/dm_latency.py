"""(a) DM latency client -> A -> B -> client, p50/p99 over >= 500 messages, beside the crypto floor.

Two real servers (separate processes, B joined to A); ``--pairs`` senders on A and as
many recipients on B (raw WebSocket users, TOFU hellos).  Every message is a
conforming MSG_DIRECT (OAEP to the recipient, content_sig by the sender) made before
the clock runs, so the latency is the servers' alone plus two loopback hops: from
the sender's write until the recipient has read and parsed the USER_DELIVER.
Messages go one at a time (the next leaves when the previous arrived, plus a short
gap), rotating over the pairs so no sender comes near the per-user rate limit.

The floor is the RSA work on that path, timed in this run: A verifies the
content_sig and signs SERVER_DELIVER; B verifies A's signature and the content_sig
and signs USER_DELIVER: 2 signatures + 3 verifications, one after the other.  The
host's speed drifts within a run (the same path's RSA took 3.2 ms before a run and
4.3 ms after it), so besides the batches before and after, the bench times those five
operations in its own process after every ``--floor-every``-th message has arrived
(the servers idle, the CPU as cold as theirs between messages), and divides by the
median of those samples.

    python bench/dm_latency.py [--messages 500] [--pairs 16] [--gap-ms 2] [--floor-every 10]
"""

from __future__ import annotations

import argparse
import os
import time

import floor as floor_mod
from _harness import (
    RawUser,
    UserKey,
    connect_user,
    generate_keys,
    machine_description,
    percentile,
    presign,
    sleep,
    stop_all,
    summary,
    two_servers,
    until,
    work_dir,
)
from twisted.internet import defer, task

from socp_tw import wire

WARMUP = 20


async def main(reactor, options) -> None:
    print(machine_description())
    before = floor_mod.measure()
    keys = generate_keys(4)
    server_keys, sender_key, recipient_key = keys[:2], UserKey(keys[2]), UserKey(keys[3])
    work = work_dir()
    servers = await two_servers(work, server_keys, log_level=options.log_level)
    a, b = servers
    arrived: dict[str, float] = {}
    waiting: dict[str, defer.Deferred] = {}
    seen: dict[str, set[str]] = {}

    def on_frame(user: RawUser, frame: dict) -> None:
        kind = frame.get("type")
        if kind == "USER_DELIVER":
            ciphertext = frame["payload"]["ciphertext"]
            arrived[ciphertext] = time.perf_counter()
            d = waiting.pop(ciphertext, None)
            if d is not None:
                d.callback(None)
        elif kind == "USER_ADVERTISE":
            seen.setdefault(user.user_id, set()).add(frame["payload"]["user_id"])
        elif kind == "ERROR":
            print(f"  ERROR to {user.user_id[:8]}: {frame['payload']}")

    users: list[RawUser] = []
    try:
        senders = [RawUser(wire.new_uuid4(), sender_key.text, on_frame) for _ in range(options.pairs)]
        recipients = [RawUser(wire.new_uuid4(), recipient_key.text, on_frame) for _ in range(options.pairs)]
        for user in senders:
            users.append(await connect_user(a.url, user))
        for user in recipients:
            users.append(await connect_user(b.url, user))
        wanted = {r.user_id for r in recipients}
        await until(lambda: all(wanted <= seen.get(s.user_id, set()) for s in senders), "presence on A", 30)
        await sleep(1.0)  # public channel joins and re-keying settle

        total = WARMUP + options.messages
        jobs = [
            (
                senders[i % options.pairs].user_id,
                sender_key,
                recipients[i % options.pairs].user_id,
                recipient_key,
            )
            for i in range(total)
        ]
        messages = presign(jobs)
        latencies = []
        sample_floor = floor_mod.path_sampler(signs=2, verifies=3)
        floor_samples = []
        for i, (ciphertext, frame) in enumerate(messages):
            sender = senders[i % options.pairs]
            done = waiting[ciphertext] = defer.Deferred()
            done.addTimeout(10, reactor)
            start = time.perf_counter()
            sender.send(frame)
            await done
            if i >= WARMUP:
                latencies.append(arrived[ciphertext] - start)
                if options.floor_every and (i - WARMUP) % options.floor_every == 0:
                    floor_samples.append(sample_floor())
            if options.gap_ms:
                await sleep(options.gap_ms / 1000)
        cpu = {s.name: s.cpu_seconds() for s in servers}
    finally:
        for user in users:
            user.close()
        await sleep(0.2)
        stop_all(servers, work, keep=options.keep)
    after = floor_mod.measure()
    floor = before.combine(after)
    batches = floor.cpu_seconds(signs=2, verifies=3)
    path = percentile(floor_samples, 50) if floor_samples else batches
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    print(f"DM latency client -> A -> B -> client, {len(latencies)} messages over {options.pairs} pairs:")
    print(f"  {summary(latencies)}")
    print(f"  {floor.describe()}")
    if floor_samples:
        low, high = min(floor_samples), max(floor_samples)
        print(
            f"  floor (2 signatures + 3 verifications on the path), timed during the run after every "
            f"{options.floor_every}th message: median {path * 1e3:.2f} ms of {len(floor_samples)} samples "
            f"({low * 1e3:.2f}-{high * 1e3:.2f})"
        )
    print(
        f"  the same from batches before and after the run: {batches * 1e3:.2f} ms "
        f"(before {before.cpu_seconds(2, 3) * 1e3:.2f}, after {after.cpu_seconds(2, 3) * 1e3:.2f}): "
        f"p50 / that = {p50 / batches:.2f}"
    )
    print(f"  p50 / floor = {p50 / path:.2f}   p99 / floor = {p99 / path:.2f}   (target p50 <= 1.5)")
    print(f"  server CPU used in all: {', '.join(f'{k} {v:.1f} s' for k, v in cpu.items())}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=500, help="messages measured (default 500)")
    parser.add_argument("--pairs", type=int, default=16, help="sender/recipient pairs (default 16)")
    parser.add_argument("--gap-ms", type=float, default=2.0, help="pause between messages (default 2 ms)")
    parser.add_argument(
        "--floor-every",
        type=int,
        default=10,
        help="time the floor after every Nth message (default 10; 0: only before and after)",
    )
    parser.add_argument("--log-level", default="info", help="servers' --log-level (default info)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    opts = parser.parse_args()
    if not 1 <= opts.messages <= 100_000 or not 1 <= opts.pairs <= 1000 or opts.floor_every < 0:
        parser.error("--messages must be 1..100000, --pairs 1..1000 and --floor-every >= 0")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, opts)))
