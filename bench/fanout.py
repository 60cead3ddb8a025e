"""(c) /all fan-out time for 10 and 50 members, beside the RSA work the fan-out forces.

Two real servers (separate processes, B joined to A).  A channel of M members: the
sender on A and M-1 recipients, alternately on B and A (raw WebSocket users, TOFU
hellos; every user joins the public channel at its hello).  SOCP v1.3 has no group
cipher, so a /all message is M-1 MSG_PUBLIC_CHANNEL frames, each encrypted to one
member and carrying its own content_sig; the client makes them (made here before the
clock runs, as the real client does before it sends) and writes them back to back.
The fan-out time runs from the first write until the last recipient has read its
copy.  ``--rounds`` messages per size, spaced so the sender stays under the
per-user rate limit.

The floor, timed in this run: a copy for a member on A costs A one content_sig
verification and one signature; a copy for a member on B costs A the same and B
two verifications and one signature.  Spread over the machine's cores at its
measured parallel signing rate, and never less than one copy's path (2 signatures +
3 verifications).  The sending client's own M-1 content signatures come on top
(not in the measured time; they cost M-1 signatures on the client's cores).

    python bench/fanout.py [--members 10 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import time

import floor as floor_mod
from _harness import (
    RawUser,
    UserKey,
    connect_user,
    generate_keys,
    machine_description,
    make_public,
    percentile,
    presign,
    sleep,
    stop_all,
    two_servers,
    until,
    work_dir,
)
from twisted.internet import defer, task

from socp_tw import wire


async def one_size(reactor, a, b, members: int, rounds: int, key: UserKey, spacing: float) -> dict:
    """Connect a channel of ``members`` users, send ``rounds`` /all messages, return timings."""
    arrived: dict[str, float] = {}
    remaining = {"n": 0}
    done: list[defer.Deferred] = []
    channel: dict[str, set[str]] = {}
    errors: list = []

    def on_frame(user: RawUser, frame: dict) -> None:
        kind = frame.get("type")
        payload = frame.get("payload", {})
        if kind == "MSG_PUBLIC_CHANNEL":
            arrived[payload["ciphertext"]] = time.perf_counter()
            remaining["n"] -= 1
            if remaining["n"] == 0 and done:
                done.pop().callback(None)
        elif kind == "PUBLIC_CHANNEL_UPDATED" and "members" in payload:
            view = channel.setdefault(user.user_id, set())
            if payload.get("reset"):
                view.clear()
            view.update(m["user_id"] for m in payload["members"])
            view.difference_update(payload.get("removed", []))
        elif kind == "ERROR":
            errors.append(payload)

    sender = await connect_user(a.url, RawUser(wire.new_uuid4(), key.text, on_frame))
    users = [sender]
    try:
        for i in range(members - 1):
            server = b if i % 2 == 0 else a
            users.append(await connect_user(server.url, RawUser(wire.new_uuid4(), key.text, on_frame)))
        ids = {u.user_id for u in users}
        await until(
            lambda: all(ids <= channel.get(u.user_id, set()) for u in users), "channel membership", 60
        )
        await sleep(1.0)  # re-keying settles
        recipients = users[1:]
        on_b = sum(1 for i in range(len(recipients)) if i % 2 == 0)
        times = []
        for _ in range(rounds):
            copies = presign([(sender.user_id, key, r.user_id, key) for r in recipients], make_public)
            remaining["n"] = len(copies)
            finished = defer.Deferred()
            finished.addTimeout(30, reactor)
            done.append(finished)
            start = time.perf_counter()
            for _, frame in copies:
                sender.send(frame)
            await finished
            times.append(max(arrived[c] for c, _ in copies) - start)
            await sleep(spacing)
        if errors:
            print(f"  errors: {errors[:3]}")
        return {"times": times, "on_a": len(recipients) - on_b, "on_b": on_b}
    finally:
        for user in users:
            user.close()
        await sleep(1.0)  # leaves and re-keying settle before the next size


async def main(reactor, options) -> None:
    print(machine_description())
    before = floor_mod.measure()
    keys = generate_keys(3)
    member_key = UserKey(keys[2])
    work = work_dir()
    servers = await two_servers(work, keys[:2], log_level=options.log_level)
    results = {}
    try:
        for members in options.members:
            spacing = members / 15  # the sender's per-user bucket refills (20 frames/s)
            results[members] = await one_size(reactor, *servers, members, options.rounds, member_key, spacing)
    finally:
        stop_all(servers, work, keep=options.keep)
    after = floor_mod.measure()
    floor = before.combine(after)
    print(f"  {floor.describe()}")
    path = floor.cpu_seconds(signs=2, verifies=3)
    for members, result in results.items():
        on_a, on_b = result["on_a"], result["on_b"]
        signs, verifies = on_a + 2 * on_b, on_a + 3 * on_b
        bound = max(path, floor.parallel_seconds(signs=signs, verifies=verifies))
        p50 = percentile(result["times"], 50)
        print(
            f"/all fan-out, {members} members ({on_a} recipients on A with the sender, {on_b} on B), "
            f"{len(result['times'])} messages:"
        )
        print(
            f"  fan-out time p50 {p50 * 1e3:.1f} ms, min {min(result['times']) * 1e3:.1f} ms, "
            f"max {max(result['times']) * 1e3:.1f} ms"
        )
        print(
            f"  floor ({signs} signatures + {verifies} verifications over {floor.cores} cores): "
            f"{bound * 1e3:.1f} ms -> p50 / floor = {p50 / bound:.2f}"
        )
        print(
            f"  (the sender's {members - 1} content signatures, not timed here: "
            f"{floor.parallel_seconds(signs=members - 1) * 1e3:.1f} ms on {floor.cores} cores)"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--members", type=int, nargs="+", default=[10, 50], help="channel sizes (default 10 50)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="messages per size (default 5)")
    parser.add_argument("--log-level", default="info", help="servers' --log-level (default info)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    opts = parser.parse_args()
    if not all(2 <= m <= 55 for m in opts.members) or not 1 <= opts.rounds <= 50:
        parser.error("--members 2..55 (the per-user burst allows ~60 frames at once), --rounds 1..50")
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, opts)))
