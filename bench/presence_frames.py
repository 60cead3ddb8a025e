"""Presence frames per login: what one user's arrival costs a server with N users on it.

One real server (a separate process).  ``--users`` raw WebSocket users connect in
batches of ``--batch`` (a plain first-use USER_HELLO each, RSA-4096 public keys with
random moduli: free to make) and count every frame the server sends them without
parsing it.  Once the server is idle, ``--probe`` more users log in one at a time, the
server going idle after each, and for each login the frames are counted:

* **to the others**: the newcomer's USER_ADVERTISE relayed to every local user (and the
  public channel's membership push, if any);
* **to the newcomer**: its ACK, the replay of every online user's advert, the channel
  state;

with the server CPU each login took.  The storm line is the whole arrival: frames the
server sent in all, and per login.  This is the quantity issue 17 asks to stop growing
with the square of the users (docs/MESH.md, "Presence to local users").

    python bench/presence_frames.py [--users 1000] [--batch 25] [--probe 10] [--lists]

``--lists``: every user asks for batched presence (USER_HELLO ``presence: "lists"``).
"""

from __future__ import annotations

import argparse
import time

from _harness import (
    RawUser,
    ServerProcess,
    connect_user,
    generate_keys,
    machine_description,
    stop_all,
    work_dir,
)
from idle_memory import fake_public_key, quiet
from twisted.internet import defer, task

from socp_tw import wire


class ListUser(RawUser):
    """A user whose hello asks for batched presence (``presence: "lists"``, docs/MESH.md)."""

    def hello(self) -> defer.Deferred:
        payload = {"client": self.client_name, "pubkey": self.pubkey, "presence": "lists"}
        self.send_frame("USER_HELLO", "*", payload)
        return self.acked


def counting_user(lists: bool) -> RawUser:
    kind = ListUser if lists else RawUser
    return kind(wire.new_uuid4(), fake_public_key(), on_message=lambda user, message: True)


async def connect_batch(url: str, count: int, lists: bool = False) -> list[RawUser]:
    users = [counting_user(lists) for _ in range(count)]
    connecting = [defer.Deferred.fromCoroutine(connect_user(url, user)) for user in users]
    return list(await defer.gatherResults(connecting))


def frames(users: list[RawUser]) -> int:
    return sum(user.frames_received for user in users)


async def main(reactor, options) -> None:
    print(machine_description())
    keys = generate_keys(1)
    work = work_dir()
    server = ServerProcess(work, "s0", keys[0], log_level="warn")
    users: list[RawUser] = []
    try:
        await server.listening()
        base_cpu = server.cpu_seconds()
        started = time.monotonic()
        for start in range(0, options.users, options.batch):
            users += await connect_batch(server.url, min(options.batch, options.users - start), options.lists)
        await quiet(server)
        storm_time = time.monotonic() - started
        storm_cpu = server.cpu_seconds() - base_cpu
        storm_frames = frames(users)
        to_others, to_newcomer, cpus = [], [], []
        for _ in range(options.probe):
            before, cpu = frames(users), server.cpu_seconds()
            [newcomer] = await connect_batch(server.url, 1, options.lists)
            await quiet(server, settle=0.5)
            cpus.append(server.cpu_seconds() - cpu)
            to_others.append(frames(users) - before)
            to_newcomer.append(newcomer.frames_received)
            users.append(newcomer)
    finally:
        for user in users:
            user.close()
        stop_all([server], work)
    n = options.users
    kind = "batched USER_LIST (presence: lists)" if options.lists else "per-event USER_ADVERTISE/REMOVE"
    print(
        f"presence frames: {n} users arriving in batches of {options.batch}, "
        f"then {options.probe} logins; {kind}"
    )
    print(
        f"  storm: {storm_frames} frames to the users in {storm_time:.1f} s, "
        f"{storm_frames / n:.0f} per login; "
        f"server CPU {storm_cpu:.1f} s ({storm_cpu / n * 1e3:.1f} ms per login)"
    )
    print(
        f"  one login at {n}: {sum(to_others) / len(to_others):.0f} frames to the others, "
        f"{sum(to_newcomer) / len(to_newcomer):.0f} to the newcomer; "
        f"server CPU {sum(cpus) / len(cpus) * 1e3:.0f} ms (quiet-wait granularity included)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=1000, help="users connected first (default 1000)")
    parser.add_argument(
        "--batch", type=int, default=25, help="users connecting at once (default 25, at most 100)"
    )
    parser.add_argument(
        "--lists", action="store_true", help='users ask for batched presence ("presence": "lists")'
    )
    parser.add_argument("--probe", type=int, default=10, help="single logins measured after (default 10)")
    opts = parser.parse_args()
    if not 1 <= opts.users <= 5000 or not 1 <= opts.batch <= 100 or not 1 <= opts.probe <= 100:
        parser.error("--users 1..5000, --batch 1..100, --probe 1..100")
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, opts)))
