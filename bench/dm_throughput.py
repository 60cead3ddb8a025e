"""(b) Sustained cross-server DM throughput with N concurrent senders, beside the signing floor.

Two real servers (separate processes, B joined to A); ``--senders`` users on A each
send to their own recipient on B (raw WebSocket users, TOFU hellos).  Every message
is a conforming MSG_DIRECT made before the clock runs.  Each sender keeps at most
``--window`` messages in flight and paces itself under the servers' per-user rate
limit (``--rate`` per second), so the offered load (senders x rate) exceeds what the
servers can sign and the servers, not the senders, set the pace.  After a warm-up,
deliveries are counted for ``--seconds``.

The floor: each cross-server DM forces two server signatures (A's SERVER_DELIVER,
B's USER_DELIVER) and three verifications (the content_sig at A and at B, A's
signature at B).  Both servers share this machine's cores, so the signing floor is
the machine's signing capacity, measured in this run with every core signing at once
(``floor.py``), divided by 2; the ratio against the capacity the machine would have if
its cores scaled linearly (``cores / one signature alone``) is printed beside.  The bench
also reports the servers' CPU per message against the RSA CPU per message, a ratio
that other load on a shared machine disturbs less.

    python bench/dm_throughput.py [--senders 48] [--seconds 10] [--window 2] [--rate 16]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections import Counter, deque

import floor as floor_mod
from _harness import (
    CpuMeter,
    RawUser,
    UserKey,
    connect_user,
    describe_cpu,
    generate_keys,
    machine_description,
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

WARMUP = 2.0
SETTLE = 0.5  # after a floor sample, the servers' queues refill before a window is counted
FLOOR_SECONDS = 0.5  # every core signing, between two windows
TICK = 0.02  # token refills; a sender whose message arrives sends its next one at once
DELIVER_HEAD = b'{"type":"USER_DELIVER",'  # how our servers' frames start (encode_signed_frame)
CIPHERTEXT_KEY = b'"ciphertext":"'  # the first key of the canonical payload


class Sender:
    """One sending user: its queue of pre-signed frames, in-flight count and token bucket."""

    def __init__(self, user: RawUser, rate: float, burst: float) -> None:
        self.user = user
        self.queue: deque[tuple[bytes, tuple[bytes, bytes]]] = deque()  # (ciphertext, masked frame)
        self.in_flight = 0
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = time.perf_counter()

    def can_send(self, now: float, window: int) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        return bool(self.queue) and self.in_flight < window and self.tokens >= 1


async def main(reactor, options) -> None:
    print(machine_description())
    before = floor_mod.measure()
    floor_key = floor_mod.bench_key()
    signers = floor_mod.SigningProcesses(floor_key, floor_mod.signing_data(floor_key), os.cpu_count() or 1)
    keys = generate_keys(4)
    server_keys, sender_key, recipient_key = keys[:2], UserKey(keys[2]), UserKey(keys[3])
    work = work_dir()
    servers = await two_servers(work, server_keys, log_level=options.log_level)
    a, b = servers
    sent_at: dict[bytes, tuple[float, Sender]] = {}  # by ciphertext
    delivered: list[tuple[float, float]] = []  # (arrival, latency)
    errors: Counter[str] = Counter()
    seen: dict[str, set[str]] = {}
    state = {"window": options.window, "paused": False}

    def on_message(user: RawUser, message: bytes) -> bool:
        """A USER_DELIVER from our servers, found without parsing it: the load generator's CPU
        comes out of the servers' share of the machine.  Anything else is parsed (on_frame)."""
        if not message.startswith(DELIVER_HEAD):
            return False
        start = message.find(CIPHERTEXT_KEY)
        if start < 0:
            return False
        start += len(CIPHERTEXT_KEY)
        delivered_one(message[start : message.index(b'"', start)])
        return True

    def delivered_one(ciphertext: bytes) -> None:
        now = time.perf_counter()
        entry = sent_at.pop(ciphertext, None)
        if entry is not None:
            start, sender = entry
            delivered.append((now, now - start))
            sender.in_flight -= 1
            send_from(sender, now)

    def on_frame(user: RawUser, frame: dict) -> None:
        kind = frame.get("type")
        if kind == "USER_DELIVER":
            delivered_one(str(frame["payload"]["ciphertext"]).encode("ascii"))
        elif kind == "USER_ADVERTISE":
            seen.setdefault(user.user_id, set()).add(frame["payload"]["user_id"])
        elif kind == "ERROR":
            errors[frame["payload"].get("code", "?")] += 1

    senders: list[Sender] = []

    def pump() -> None:
        """Every sender sends what its window and tokens allow (the ticker, and after a pause)."""
        now = time.perf_counter()
        for sender in senders:
            send_from(sender, now)

    def send_from(sender: Sender, now: float) -> None:
        if state["paused"]:
            return
        while sender.can_send(now, state["window"]):
            ciphertext, frame = sender.queue.popleft()
            sender.tokens -= 1
            sender.in_flight += 1
            sent_at[ciphertext] = (now, sender)
            sender.user.send_masked(frame)

    users: list[RawUser] = []
    ticker = task.LoopingCall(pump)
    try:
        for _ in range(options.senders):
            user = RawUser(wire.new_uuid4(), sender_key.text, on_frame, on_message=on_message)
            users.append(await connect_user(a.url, user))
            senders.append(Sender(user, options.rate, min(options.rate, 10)))
        recipients = [
            RawUser(wire.new_uuid4(), recipient_key.text, on_frame, on_message=on_message) for _ in senders
        ]
        for user in recipients:
            users.append(await connect_user(b.url, user))
        wanted = {r.user_id for r in recipients}
        await until(lambda: all(wanted <= seen.get(s.user.user_id, set()) for s in senders), "presence", 60)
        await sleep(1.0)  # public channel joins and re-keying settle

        expected = before.signs_per_s / 2
        offered = options.senders * options.rate
        pauses = math.ceil(options.seconds / options.slice) if options.slice else 0
        loaded = WARMUP + options.seconds + SETTLE * pauses
        count = math.ceil(min(expected * 1.6, offered) * loaded)  # never run dry: the floor moves
        print(
            f"pre-signing {count} messages (signing floor ~{expected:.0f}/s, offered "
            f"{options.senders} x {options.rate:g}/s = {offered:.0f}/s)..."
        )
        jobs = [
            (
                senders[i % len(senders)].user.user_id,
                sender_key,
                recipients[i % len(senders)].user_id,
                recipient_key,
            )
            for i in range(count)
        ]
        for i, (ciphertext, frame) in enumerate(presign(jobs)):
            senders[i % len(senders)].queue.append((ciphertext.encode("ascii"), RawUser.masked(frame)))

        cpu0 = sum(s.cpu_seconds() for s in servers)
        start = time.perf_counter()
        for sender in senders:
            sender.last = start
        ticker.start(TICK)
        await sleep(WARMUP)

        async def window(seconds: float) -> dict:
            """Count deliveries and the servers' CPU over ``seconds`` of full load."""
            meter = CpuMeter(servers)
            t0, cpu0_, reactor0, n0 = now_counts()
            await sleep(seconds)
            t1, cpu1, reactor1, n1 = now_counts()
            return {
                "start": t0,
                "end": t1,
                "delivered": n1 - n0,
                "cpu": cpu1 - cpu0_,
                "reactor": reactor1 - reactor0,
                "usage": meter.stop(),
            }

        def now_counts() -> tuple[float, float, float, int]:
            return (
                time.perf_counter(),
                sum(s.cpu_seconds() for s in servers),
                sum(s.reactor_cpu_seconds() for s in servers),
                len(delivered),
            )

        async def floor_between() -> float:
            """Pause the senders, let the servers drain, time every core signing, resume."""
            state["paused"] = True
            await until(lambda: not sent_at, "in-flight messages to drain", 20)
            per_signature, _ = signers.measure(FLOOR_SECONDS)
            state["paused"] = False
            pump()
            return per_signature

        windows = []
        floor_samples = []  # CPU seconds per signature, every core signing, around each window
        if options.slice:
            floor_samples.append(await floor_between())
            remaining = options.seconds
            while remaining > 1e-6:
                length = min(options.slice, remaining)
                await sleep(SETTLE)
                windows.append(await window(length))
                floor_samples.append(await floor_between())
                remaining -= length
        else:
            windows.append(await window(options.seconds))
        ran_out = sum(1 for s in senders if not s.queue)
        ticker.stop()
        try:
            await until(lambda: not sent_at, "in-flight messages to arrive", 20)
        except RuntimeError:
            pass  # reported below as lost
        lost = len(sent_at)
        cpu_last = sum(s.cpu_seconds() for s in servers)
    finally:
        if ticker.running:
            ticker.stop()
        signers.close()
        for user in users:
            user.close()
        await sleep(0.2)
        stop_all(servers, work, keep=options.keep)
    after = floor_mod.measure()
    floor = before.combine(after)
    seconds = sum(w["end"] - w["start"] for w in windows)
    count = sum(w["delivered"] for w in windows)
    rate = count / seconds
    signing_floor = floor.signs_per_s / 2
    linear_floor = floor.signs_per_s_if_linear / 2
    rsa_floor = floor.cores / (2 * floor.sign_all_cores + 3 * floor.verify)
    cpu_per_msg = sum(w["cpu"] for w in windows) / count
    rsa_per_msg = floor.cpu_seconds(signs=2, verifies=3)
    usage = dict(sum((Counter(w["usage"]) for w in windows), Counter()))
    latencies = [lat for at, lat in delivered if any(w["start"] <= at <= w["end"] for w in windows)]
    each = f"window {options.window}, <= {options.rate:g}/s each"
    print(f"DM throughput A -> B, {options.senders} senders ({each}):")
    print(f"  {count} delivered in {seconds:.2f} s = {rate:.1f} messages/s")
    print(f"  latency under load: {summary(latencies)}")
    print(f"  {floor.describe()}")
    if floor_samples:
        # Each window against the floor timed just before and just after it: signatures alone,
        # and the wording (the two signatures and the three verifications).
        signing, forced = [], []
        for i, w in enumerate(windows):
            sign = (floor_samples[i] + floor_samples[i + 1]) / 2
            achieved = w["delivered"] / (w["end"] - w["start"])
            signing.append(achieved / (floor.cores / (2 * sign)))
            forced.append(achieved / (floor.cores / (2 * sign + 3 * floor.verify)))
        in_run = statistics.median(floor_samples)
        print(
            f"  floor timed during the run ({len(windows)} windows of {options.slice:g} s, "
            f"every core signing for {FLOOR_SECONDS:g} s before and after each): "
            f"a signature {in_run * 1e3:.2f} ms median "
            f"({min(floor_samples) * 1e3:.2f}-{max(floor_samples) * 1e3:.2f}) -> signing floor "
            f"{floor.cores / in_run / 2:.1f} messages/s"
        )
        print(
            f"  achieved / signing floor timed around each window: median {statistics.median(signing):.2f} "
            f"(windows: {', '.join(f'{r:.2f}' for r in signing)})   (target >= 0.80)"
        )
        print(
            f"  achieved / floor of the 2 signatures + 3 verifications, timed around each window: "
            f"median {statistics.median(forced):.2f} (windows: {', '.join(f'{r:.2f}' for r in forced)})"
        )
    print(
        f"  signing floor from before and after the run (capacity / 2 signatures per message): "
        f"{signing_floor:.1f} messages/s "
        f"(before {before.signs_per_s / 2:.0f}, after {after.signs_per_s / 2:.0f}); "
        f"achieved / that = {rate / signing_floor:.2f}; with the 3 verifications: {rsa_floor:.1f}/s "
        f"(achieved / that: {rate / rsa_floor:.2f})"
    )
    print(
        f"  (against {linear_floor:.1f}/s, the floor if the cores scaled linearly: {rate / linear_floor:.2f})"
    )
    print(f"  {describe_cpu(usage)}")
    print(
        f"  server CPU per message {cpu_per_msg * 1e3:.2f} ms, of which RSA {rsa_per_msg * 1e3:.2f} ms "
        f"-> RSA share of server CPU {rsa_per_msg / cpu_per_msg:.2f}"
    )
    reactor_per_msg = sum(w["reactor"] for w in windows) / count
    pool_per_sig = (cpu_per_msg - reactor_per_msg) / 2
    print(
        f"  of which the reactor threads {reactor_per_msg * 1e3:.2f} ms per message (3 verifications "
        f"{floor.cpu_seconds(verifies=3) * 1e3:.2f} ms of it), the signing pools "
        f"{pool_per_sig * 1e3:.2f} ms per signature (one signature alone: {floor.sign * 1e3:.2f} ms, "
        f"one per core at once: {floor.sign_all_cores * 1e3:.2f} ms"
        + (f", during the run: {statistics.median(floor_samples) * 1e3:.2f} ms)" if floor_samples else ")")
    )
    outcome = f"total delivered {len(delivered)}, never delivered {lost}, errors {dict(errors) or 'none'}"
    print(f"  {outcome}", end="")
    print(f", {ran_out} senders ran out of messages" if ran_out else "")
    print(f"  (server CPU over the whole run: {cpu_last - cpu0:.1f} s)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=48, help="concurrent senders (default 48)")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window (default 10 s)")
    parser.add_argument("--window", type=int, default=2, help="messages in flight per sender (default 2)")
    parser.add_argument("--rate", type=float, default=16.0, help="messages/s per sender at most (default 16)")
    parser.add_argument(
        "--slice",
        type=float,
        default=2.0,
        help="seconds of load between two floor samples taken during the run (default 2; 0: one window, "
        "the floor only before and after)",
    )
    parser.add_argument("--log-level", default="info", help="servers' --log-level (default info)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    opts = parser.parse_args()
    if not 1 <= opts.senders <= 1000 or not 1 <= opts.seconds <= 60 or not 1 <= opts.window <= 100:
        parser.error("--senders 1..1000, --seconds 1..60, --window 1..100")
    if opts.slice and not 0.5 <= opts.slice <= opts.seconds:
        parser.error("--slice must be 0 or 0.5..--seconds")
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, opts)))
