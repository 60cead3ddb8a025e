"""The users of ``connect_storm.py``: light storm users that only count, and the DM probe.

:class:`StormUser` is a :class:`RawUser` that says a first-use USER_HELLO (with
``"presence": "follow"`` like ``socp-client``, ``"lists"``, or without it: the spec's
per-event presence), waits for its ACK and from then on only counts what the server sends: bytes,
and messages by walking the WebSocket frame headers without copying any payload, so
that thousands of them cost the load generator little.  It answers pings and closes.

:class:`DmProbe` is a few real-key users on the same server sending each other a
conforming MSG_DIRECT every ``interval`` seconds (open loop: a send does not wait for
the previous delivery), pre-signed a few seconds ahead in threads (the ts window allows
300 s), and records each DM's latency under the phase it was sent in, and the public
channel pushes (PUBLIC_CHANNEL_UPDATED) one of them receives per phase.  In follow mode
each follows its partner (PRESENCE_FOLLOW) as ``socp-client`` follows whom it talks to, and
the first subscribes to the public channel, as ``socp-client`` does on its first ``/all``.
"""

from __future__ import annotations

import socket
import struct
import time
from collections import Counter, defaultdict, deque

from _harness import RawUser, UserKey, _UserFactory, percentile, presign
from idle_memory import fake_public_key
from twisted.internet import task, threads

from socp_tw import wire

LOST_AFTER = 5.0  # seconds: a DM not delivered by then is counted lost
LATE_AFTER = 0.1  # seconds: the p99 target


class StormUser(RawUser):
    """A TOFU user that counts the server's messages after its hello's ACK without parsing them."""

    def __init__(self, presence: str, **kwargs) -> None:
        super().__init__(wire.new_uuid4(), fake_public_key(), on_message=lambda user, message: True, **kwargs)
        self.presence = presence
        self.bytes_received = 0
        self.failure: str | None = None
        self._scanning = False
        self._skip = 0  # payload bytes of the current message still to come
        self._head = b""  # an incomplete frame header (or control frame) carried over

    def hello(self):
        payload = {"client": self.client_name, "pubkey": self.pubkey}
        if self.presence in ("follow", "lists"):
            payload["presence"] = self.presence
        self.send_frame("USER_HELLO", "*", payload)
        return self.acked

    def dataReceived(self, data: bytes) -> None:
        self.bytes_received += len(data)
        if self._scanning:
            self._scan(data)
            return
        super().dataReceived(data)
        if self.acked.called:  # the rest (after the ACK) is counted by _scan from now on
            self._scanning = True
            rest, self._buffer = self._buffer, b""
            if rest:
                self._scan(rest)

    def _scan(self, data: bytes) -> None:
        skip = self._skip
        if skip >= len(data):
            self._skip = skip - len(data)
            return
        if self._head:
            data = self._head + data
            self._head = b""
        n = len(data)
        pos = skip
        count = 0
        while n - pos >= 2:
            b0, b1 = data[pos], data[pos + 1] & 0x7F
            if b1 < 126:
                head, length = 2, b1
            elif b1 == 126:
                if n - pos < 4:
                    break
                head, length = 4, int.from_bytes(data[pos + 2 : pos + 4], "big")
            else:
                if n - pos < 10:
                    break
                head, length = 10, int.from_bytes(data[pos + 2 : pos + 10], "big")
            opcode = b0 & 0x0F
            if opcode >= 0x8:  # control: needs its payload here
                if n - pos < head + length:
                    break
                self._control(opcode, data[pos + head : pos + head + length])
            elif b0 & 0x80:
                count += 1
            pos += head + length
        self.frames_received += count
        if pos >= n:
            self._skip = pos - n
        else:
            self._skip = 0
            self._head = data[pos:]

    def _control(self, opcode: int, payload: bytes) -> None:
        if opcode == 0x9:
            self._write_frame(0xA, payload)
        elif opcode == 0x8:
            self._write_frame(0x8, payload[:2])
            self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the connection as a network blip would: RST, nothing flushed."""
        transport = self.transport
        if transport is None or not transport.connected:
            return
        try:
            transport.getHandle().setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        transport.abortConnection()


def start_user(reactor, port: int, user: RawUser, failures: Counter) -> None:
    """Connect ``user`` to 127.0.0.1:``port`` and say hello; a failure is counted, not raised."""

    def failed(failure) -> None:
        reason = str(failure.value)[:120]
        if getattr(user, "failure", None) is None:
            user.failure = reason
            failures[reason.split(":", 1)[0]] += 1

    user.opened.addCallbacks(lambda _: user.hello() and None, failed)
    user.acked.addErrback(failed)
    reactor.connectTCP("127.0.0.1", port, _UserFactory(user), timeout=30)


class DmProbe:
    """``len(keys)`` real-key users in pairs (0<->1, 2<->3, ...) exchanging DMs every ``interval`` s."""

    def __init__(self, reactor, keys: list, interval: float = 0.05, presence: str = "follow") -> None:
        self.reactor = reactor
        self.keys = [UserKey(k) for k in keys]
        self.users = [StormDmUser(self, key.text, presence) for key in self.keys]
        self.interval = interval
        self.phase = "baseline"
        self.pool: deque = deque()
        self.sent: dict[str, tuple[float, str]] = {}
        self.arrived: dict[str, float] = {}
        self.starved = Counter()  # ticks without a signed DM ready, per phase
        self.pushes: dict[str, set] = defaultdict(set)  # phase -> public channel versions pushed
        self.push_frames = Counter()
        self.errors = Counter()
        self._refilling = False
        self._next = 0
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = reactor

    async def connect(self, port: int) -> None:
        failures: Counter = Counter()
        for user in self.users:
            start_user(self.reactor, port, user, failures)
        from _harness import until

        await until(lambda: all(u.acked.called for u in self.users), "the DM users' hellos", 30)
        if failures:
            raise RuntimeError(f"DM users refused: {dict(failures)}")
        if self.users[0].presence == "follow":
            for i, user in enumerate(self.users):
                partner = self.users[i ^ 1 if (i ^ 1) < len(self.users) else 0]
                user.send_frame("PRESENCE_FOLLOW", "*", {"user_ids": [partner.user_id]})
            self.users[0].send_frame("PUBLIC_CHANNEL_SUBSCRIBE", "*", {})
        self._refill()
        await until(lambda: len(self.pool) >= 20, "the first signed DMs", 60)

    def start(self) -> None:
        self._loop.start(self.interval, now=False)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _refill(self) -> None:
        if self._refilling or len(self.pool) > 60:
            return
        self._refilling = True
        jobs = []
        for _ in range(80):
            i = self._next % len(self.users)
            j = i ^ 1 if (i ^ 1) < len(self.users) else 0
            jobs.append((i, (self.users[i].user_id, self.keys[i], self.users[j].user_id, self.keys[j])))
            self._next += 1
        d = threads.deferToThread(presign, [job for _, job in jobs])

        def done(made) -> None:
            self.pool.extend(
                (i, ciphertext, frame) for (i, _), (ciphertext, frame) in zip(jobs, made, strict=True)
            )
            self._refilling = False

        def failed(failure) -> None:
            self._refilling = False
            self.errors[f"presign: {failure.value}"] += 1

        d.addCallbacks(done, failed)

    def _tick(self) -> None:
        self._refill()
        if not self.pool:
            self.starved[self.phase] += 1
            return
        i, ciphertext, frame = self.pool.popleft()
        self.sent[ciphertext] = (time.perf_counter(), self.phase)
        self.users[i].send(frame)

    def on_frame(self, user: RawUser, frame: dict) -> None:
        kind = frame.get("type")
        if kind == "USER_DELIVER":
            ciphertext = frame.get("payload", {}).get("ciphertext")
            if ciphertext in self.sent and ciphertext not in self.arrived:
                self.arrived[ciphertext] = time.perf_counter()
        elif kind == "PUBLIC_CHANNEL_UPDATED" and user is self.users[0]:
            self.push_frames[self.phase] += 1
            self.pushes[self.phase].add(frame.get("payload", {}).get("version"))
        elif kind == "ERROR":
            self.errors[str(frame.get("payload", {}).get("code"))] += 1

    def stats(self, phase: str) -> dict:
        """Latencies of the DMs sent in ``phase``: p50/p99/max (s), late (> 100 ms), lost (> 5 s)."""
        latencies, lost = [], 0
        for ciphertext, (sent, when) in self.sent.items():
            if when != phase:
                continue
            arrived = self.arrived.get(ciphertext)
            if arrived is None or arrived - sent > LOST_AFTER:
                lost += 1
            else:
                latencies.append(arrived - sent)
        return {
            "sent": len(latencies) + lost,
            "p50": percentile(latencies, 50),
            "p99": percentile(latencies, 99),
            "max": max(latencies, default=float("nan")),
            "late": sum(1 for x in latencies if x > LATE_AFTER),
            "lost": lost,
            "starved": self.starved[phase],
            "pushes": len(self.pushes[phase] - {None}),
            "push_frames": self.push_frames[phase],
        }

    def close(self) -> None:
        for user in self.users:
            user.close()


class StormDmUser(RawUser):
    """A DM probe user: a real key, a hello with the storm's presence mode, every frame parsed."""

    def __init__(self, probe: DmProbe, pubkey: str, presence: str) -> None:
        super().__init__(wire.new_uuid4(), pubkey, on_frame=probe.on_frame, client_name="socp-bench-dm")
        self.presence = presence
        self.failure: str | None = None

    hello = StormUser.hello
