"""(g) Store-and-forward: N DMs for offline users held, then delivered at their login, beside the
online DM path measured in the same run.

One real server (a separate process).  ``--recipients`` users say hello once (so the server
knows their keys) and leave; ``--senders`` users then send ``--messages`` pre-signed DMs to
them, spread evenly (within every bound and every sender's burst).  Measured:

1. holding: from the first DM sent until every ``queued`` ACK is back (each DM written to
   SQLite before its ACK), and the server's CPU per DM;
2. the online path, for comparison: the same number of DMs to as many users who are online,
   until every USER_DELIVER has arrived, and the server's CPU per DM;
3. delivery at login: every offline recipient connects at once; the time until all held DMs
   have arrived (each a USER_DELIVER signed by the server), and the CPU per DM.

    python bench/held_messages.py [--messages 10000] [--senders 100] [--recipients 100]
"""

from __future__ import annotations

import argparse
import os
import time

from _harness import (
    RawUser,
    UserKey,
    close_users,
    connect_user,
    generate_keys,
    machine_description,
    presign,
    sleep,
    start_mesh,
    stop_all,
    until,
    work_dir,
)
from twisted.internet import defer, task

from socp_tw import wire


class Counts:
    def __init__(self) -> None:
        self.queued = self.delivered = self.errors = self.removes = 0

    def on_frame(self, user: RawUser, frame: dict) -> None:
        kind = frame.get("type")
        payload = frame.get("payload", {})
        if kind == "ACK" and payload.get("msg_ref") == "MSG_DIRECT" and payload.get("status") == "queued":
            self.queued += 1
        elif kind == "USER_DELIVER":
            self.delivered += 1
        elif kind == "USER_REMOVE":
            self.removes += 1
        elif kind == "ERROR":
            self.errors += 1
            if self.errors <= 5:
                print(f"  ERROR to {user.user_id[:8]}: {payload}")


async def send_all(senders: list[RawUser], frames: list[bytes]) -> None:
    """Frame i is sender (i mod senders)'s: each sends its share at once (within its burst)."""
    for i, frame in enumerate(frames):
        senders[i % len(senders)].send(frame)
        if i % len(senders) == len(senders) - 1:
            await sleep(0)


async def main(reactor, options) -> None:
    print(machine_description())
    keys = generate_keys(3)
    user_key, other_key = UserKey(keys[1]), UserKey(keys[2])
    work = work_dir()
    (server,) = await start_mesh(work, 1, keys[:1], log_level=options.log_level)
    counts = Counts()
    users: list[RawUser] = []
    try:
        offline = [
            RawUser(wire.new_uuid4(), other_key.text, counts.on_frame) for _ in range(options.recipients)
        ]
        for user in offline:
            await connect_user(server.url, user)
        senders = [RawUser(wire.new_uuid4(), user_key.text, counts.on_frame) for _ in range(options.senders)]
        online = [
            RawUser(wire.new_uuid4(), other_key.text, counts.on_frame) for _ in range(options.recipients)
        ]
        for user in senders + online:
            users.append(await connect_user(server.url, user))
        close_users(offline)
        await until(lambda: counts.removes >= options.recipients * len(users), "the recipients gone", 60)
        await sleep(1.0)

        n = options.messages

        def jobs(recipients: list[RawUser]) -> list[tuple]:
            return [
                (
                    senders[i % len(senders)].user_id,
                    user_key,
                    recipients[i % len(recipients)].user_id,
                    other_key,
                )
                for i in range(n)
            ]

        started = time.perf_counter()
        held_frames = [frame for _, frame in presign(jobs(offline))]
        online_frames = [frame for _, frame in presign(jobs(online))]
        print(
            f"  {2 * n} DMs signed by the clients in {time.perf_counter() - started:.1f} s (not timed below)"
        )

        cpu0 = server.cpu_seconds()
        start = time.perf_counter()
        await send_all(senders, held_frames)
        await until(lambda: counts.queued >= n, "every DM queued", 300, step=0.005)
        hold_time, hold_cpu = time.perf_counter() - start, server.cpu_seconds() - cpu0

        delivered_before = counts.delivered
        cpu0 = server.cpu_seconds()
        start = time.perf_counter()
        await send_all(senders, online_frames)
        await until(lambda: counts.delivered - delivered_before >= n, "every online DM delivered", 300, 0.005)
        online_time, online_cpu = time.perf_counter() - start, server.cpu_seconds() - cpu0

        again = [RawUser(user.user_id, other_key.text, counts.on_frame) for user in offline]
        delivered_before = counts.delivered
        cpu0 = server.cpu_seconds()
        start = time.perf_counter()
        for user in again:
            users.append(await connect_user(server.url, user))
        await until(lambda: counts.delivered - delivered_before >= n, "every held DM delivered", 300, 0.005)
        login_time, login_cpu = time.perf_counter() - start, server.cpu_seconds() - cpu0
    finally:
        close_users(users)
        await sleep(0.2)
        stop_all([server], work, keep=options.keep)
    print(f"Store-and-forward, {n} DMs from {len(senders)} senders to {options.recipients} users:")
    print(
        f"  held (offline recipients): {hold_time:.2f} s = {n / hold_time:.0f} DMs/s,"
        f" server CPU {hold_cpu * 1e3 / n:.2f} ms per DM"
    )
    print(
        f"  online DM path, same run: {online_time:.2f} s = {n / online_time:.0f} DMs/s,"
        f" server CPU {online_cpu * 1e3 / n:.2f} ms per DM"
    )
    ratio_time, ratio_cpu = hold_time / online_time, hold_cpu / online_cpu
    print(f"  holding / online: {ratio_time:.2f} of the time, {ratio_cpu:.2f} of the CPU")
    print(
        f"  delivered at login ({options.recipients} logins at once): {login_time:.2f} s ="
        f" {n / login_time:.0f} DMs/s, server CPU {login_cpu * 1e3 / n:.2f} ms per DM"
    )
    print(f"  errors: {counts.errors}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--messages", type=int, default=10_000, help="DMs held (and sent online) (default 10000)"
    )
    parser.add_argument("--senders", type=int, default=100, help="sending users (default 100)")
    parser.add_argument(
        "--recipients", type=int, default=100, help="offline and online recipients (default 100)"
    )
    parser.add_argument("--log-level", default="warn", help="server's --log-level (default warn)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server log)")
    opts = parser.parse_args()
    if not 1 <= opts.senders <= 1000 or not 1 <= opts.recipients <= 1000:
        parser.error("--senders and --recipients must be 1..1000")
    if opts.messages // opts.senders > 200 or opts.messages // opts.recipients > 1000:
        parser.error("keep each sender's share within its burst (200) and each recipient's within 1000")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, opts)))
