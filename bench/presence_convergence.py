"""(d) Presence convergence time for a login in a 5-server mesh, beside the RSA work it forces.

Five real servers (separate processes), each joined to the first, full mesh.  One
observer user on each of servers 1-4 (raw WebSocket users, TOFU hellos).  Each round
a user opens a connection to server 0 (not timed) and sends USER_HELLO; the time runs
from that write until every observer has received the USER_ADVERTISE its server
relays, i.e. until all five servers know the user is online.  Then the user
disconnects and the time until every observer has the USER_REMOVE is measured the
same way.  The same user id logs in every round (pinned on its first hello, as a
returning user would be).

The floor, timed in this run: the hosting server signs the USER_ADVERTISE it floods
(and the hello's ACK); each of the four other servers verifies it and signs the
copy it relays to its users.  On the critical path: signature, verification,
signature; in all: 6 signatures and 4 verifications over the machine's cores.
The floor is the larger of the two.

    python bench/presence_convergence.py [--servers 5] [--rounds 20]
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
    percentile,
    sleep,
    start_mesh,
    stop_all,
    summary,
    work_dir,
)
from twisted.internet import defer, task

from socp_tw import wire


async def main(reactor, options) -> None:
    print(machine_description())
    before = floor_mod.measure()
    n = options.servers
    keys = generate_keys(n + 1)
    user_key = UserKey(keys[n])
    work = work_dir()
    print(f"starting a mesh of {n} servers...")
    servers = await start_mesh(work, n, keys[:n], log_level=options.log_level)
    subject_id = wire.new_uuid4()
    events: dict[tuple[str, str], float] = {}
    waiters: dict[str, tuple[set[str], defer.Deferred]] = {}

    def on_frame(user: RawUser, frame: dict) -> None:
        kind = frame.get("type")
        if kind in ("USER_ADVERTISE", "USER_REMOVE") and frame["payload"].get("user_id") == subject_id:
            events[(user.user_id, kind)] = time.perf_counter()
            pending = waiters.get(kind)
            if pending is not None:
                pending[0].discard(user.user_id)
                if not pending[0]:
                    del waiters[kind]
                    pending[1].callback(None)

    def expect(kind: str) -> defer.Deferred:
        d = defer.Deferred()
        d.addTimeout(30, reactor)
        waiters[kind] = ({o.user_id for o in observers}, d)
        return d

    observers: list[RawUser] = []
    login, logout = [], []
    try:
        for server in servers[1:]:
            observers.append(
                await connect_user(server.url, RawUser(wire.new_uuid4(), user_key.text, on_frame))
            )
        await sleep(2.0)
        for round_ in range(options.rounds + 1):
            subject = RawUser(subject_id, user_key.text)
            await connect_user(servers[0].url, subject, hello=False)
            online = expect("USER_ADVERTISE")
            start = time.perf_counter()
            subject.hello()
            await online
            took = max(events[(o.user_id, "USER_ADVERTISE")] for o in observers) - start
            await sleep(options.pause)
            offline = expect("USER_REMOVE")
            start = time.perf_counter()
            subject.transport.abortConnection()  # the server sees the TCP connection drop
            await offline
            gone = max(events[(o.user_id, "USER_REMOVE")] for o in observers) - start
            if round_ > 0:  # the first login also pins the key (a database write)
                login.append(took)
                logout.append(gone)
            await sleep(options.pause)
    finally:
        for user in observers:
            user.close()
        await sleep(0.3)
        stop_all(servers, work, keep=options.keep)
    after = floor_mod.measure()
    floor = before.combine(after)
    others = n - 1
    path = floor.cpu_seconds(signs=2, verifies=1)
    total = floor.parallel_seconds(signs=2 + others, verifies=others)
    bound = max(path, total)
    p50 = percentile(login, 50)
    print(f"presence convergence, {n}-server full mesh, {len(login)} logins and logouts:")
    print(f"  login  (hello -> advertised on all {n} servers): {summary(login)}")
    print(f"  logout (disconnect -> removed on all {n} servers): {summary(logout)}")
    print(f"  {floor.describe()}")
    print(
        f"  floor: path 2 signatures + 1 verification {path * 1e3:.2f} ms; all servers "
        f"{2 + others} signatures + {others} verifications over {floor.cores} cores {total * 1e3:.2f} ms"
    )
    print(
        f"  login p50 / floor = {p50 / bound:.2f}   logout p50 / floor = {percentile(logout, 50) / bound:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=5, help="servers in the mesh (default 5)")
    parser.add_argument("--rounds", type=int, default=20, help="logins measured (default 20)")
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between events (default 0.5)")
    parser.add_argument("--log-level", default="info", help="servers' --log-level (default info)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    opts = parser.parse_args()
    if not 2 <= opts.servers <= 8 or not 1 <= opts.rounds <= 200:
        parser.error("--servers 2..8, --rounds 1..200")
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, opts)))
