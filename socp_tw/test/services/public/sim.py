"""Simulated servers for the public channel's unit tests, joined by an in-memory mesh.

Each simulated server (:class:`Node`) has the real Presence, Router, signer and PublicChannel,
a MemoryStore, synchronous workers and a FakeUserFrames; :class:`Net` stands in for the mesh
(IPeerLinks): it verifies the transport signature of every frame, de-duplicates like
``seen_ids`` and can deliver the queued frames in any order, so convergence is tested under
reordering.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from socp_tw import crypto, wire
from socp_tw.identity import ServerIdentity
from socp_tw.interfaces import IPeerLinks
from socp_tw.services.presence import Presence
from socp_tw.services.public import (
    GROUP,
    ChannelState,
    MemberState,
    PublicChannel,
)
from socp_tw.services.router import Router
from socp_tw.signer import FrameSigner
from socp_tw.test.keys import test_key, vector_key
from socp_tw.testing import FakeLink, FakeUserFrames, MemoryStore, SynchronousWorkers, verify_server_frame

# Server ids sort A < B < C: A is the leader whenever it is linked.
A = "0aaaaaaa-0000-4000-8000-000000000001"
B = "0bbbbbbb-0000-4000-8000-000000000002"
C = "0ccccccc-0000-4000-8000-000000000003"
X = "0ddddddd-0000-4000-8000-000000000004"  # a server of another implementation
SERVER_KEYS = {A: 0, B: 1, C: 2}
ALICE, BOB, CAROL, DAVE = (
    "a11ce000-0000-4000-8000-00000000000a",
    "b0b00000-0000-4000-8000-00000000000b",
    "ca201000-0000-4000-8000-00000000000c",
    "da7e0000-0000-4000-8000-00000000000d",
)


def user_key(user_id: str):
    return {ALICE: vector_key("alice"), BOB: vector_key("bob"), CAROL: test_key(3), DAVE: test_key(4)}[
        user_id
    ]


def user_pub(user_id: str) -> str:
    return crypto.encode_public_key(user_key(user_id))


def server_pub(server_id: str) -> str:
    return crypto.encode_public_key(test_key(SERVER_KEYS[server_id]))


def resolved(frame: bytes | Deferred) -> bytes:
    """The bytes of a frame, waiting for nothing: the workers here are synchronous."""
    if not isinstance(frame, Deferred):
        return frame
    got: list = []

    def keep(data):
        got.append(data)
        return data  # the same Deferred may be read again (one per receiving server)

    frame.addCallback(keep)
    assert got and isinstance(got[0], bytes), got
    return got[0]


def link_id(a: str, b: str) -> str:
    return "link:" + ":".join(sorted((a, b)))


def event(member, present=True, lamport=1, origin=A, seq=1, host=None, pubkey="key") -> MemberState:
    return MemberState(member, present, lamport, origin, seq, host or origin, pubkey if present else None)


# ---------------------------------------------------------------- simulated servers


@implementer(IPeerLinks)
class NetLinks:
    """One server's view of :class:`Net`."""

    def __init__(self, net: Net, server_id: str) -> None:
        self.net = net
        self.server_id = server_id
        self.handlers: dict[str, Callable] = {}
        self.observers: list[Callable[[], None]] = []
        self.counters: Counter[str] = Counter()

    def connected_servers(self) -> list[str]:
        return sorted(self.net.links.get(self.server_id, set()))

    def server_key(self, server_id: str):
        return self.net.keys.get(server_id)

    def acks_deliveries(self, server_id: str) -> bool:
        return False

    def heard_since(self, server_id: str, when: float) -> bool:
        return server_id in self.connected_servers()

    def unresponsive(self, server_id: str, since: float) -> None:
        pass

    def send_to_server(self, server_id: str, frame) -> bool:
        if server_id not in self.net.links.get(self.server_id, set()):
            if isinstance(frame, Deferred):
                frame.addErrback(lambda f: None)
            return False
        self.net.queue.append((self.server_id, server_id, frame))
        return True

    def broadcast(self, frame, exclude=None) -> int:
        peers = [p for p in self.connected_servers() if link_id(self.server_id, p) != exclude]
        for peer in peers:
            self.net.queue.append((self.server_id, peer, frame))
        self.net.broadcasts.append((self.server_id, frame))
        return len(peers)

    def relay(self, envelope: wire.Envelope, link) -> int:
        """A plain flood of the frame as it came (no link-set rule here: the worst case)."""
        raw = wire.encode_frame(
            envelope.type, envelope.from_, envelope.to, envelope.ts, envelope.payload, envelope.sig
        )
        return self.broadcast(raw, exclude=getattr(link, "link_id", None))

    def on_frame(self, type: str, handler: Callable, prepare: Callable | None = None) -> None:
        self.handlers[type] = handler  # frames here arrive verified: nothing is prepared ahead

    def add_change_observer(self, callback: Callable[[], None]) -> None:
        self.observers.append(callback)


class Node:
    """One simulated server."""

    def __init__(self, net: Net, server_id: str, store: MemoryStore | None = None, **options) -> None:
        self.net = net
        self.server_id = server_id
        key = test_key(SERVER_KEYS[server_id])
        self.identity = ServerIdentity(server_id, key, crypto.encode_public_key(key))
        self.workers = SynchronousWorkers()
        self.signer = FrameSigner(self.identity, self.workers, now_ms=net.now_ms)
        self.presence = Presence(server_id)
        self.store = store if store is not None else MemoryStore()
        self.peers = NetLinks(net, server_id)
        self.router = Router(self.presence, self.signer, self.peers, clock=net.clock)
        self.users = FakeUserFrames(self.presence)
        self.public = PublicChannel(
            self.store,
            self.presence,
            self.peers,
            self.router,
            self.users,
            self.signer,
            self.workers,
            clock=net.clock,
            **options,
        )
        self.links: dict[str, FakeLink] = {}
        net.nodes[server_id] = self
        net.keys[server_id] = key.public_key()

    def start(self) -> Node:
        self.public.startService()
        return self

    @property
    def state(self) -> ChannelState:
        return self.public.state

    def frames(
        self, user_id: str, types: tuple[str, ...] = ("PUBLIC_CHANNEL_UPDATED", "PUBLIC_CHANNEL_KEY_SHARE")
    ):
        """Frames sent to a local user since the last call, checked as server-signed, of ``types``."""
        link = self.links[user_id]
        out = link.frames()
        link.sent.clear()
        for frame in out:
            assert verify_server_frame(frame, self.identity.public_key_text), frame
            assert frame["from"] == self.server_id
        return [f for f in out if f["type"] in types]


class Net:
    """The in-memory mesh joining :class:`Node` objects."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self._tick = itertools.count()
        self.nodes: dict[str, Node] = {}
        self.keys: dict[str, Any] = {}
        self.links: dict[str, set[str]] = {}
        self.queue: list[tuple[str, str, Any]] = []
        self.broadcasts: list[tuple[str, Any]] = []
        self.seen: dict[str, set] = {}
        self.delivered: list[tuple[str, str, dict]] = []

    def now_ms(self) -> int:
        # Distinct ts per frame, like a real clock moving on: seen_ids keys stay unique.
        return int(self.clock.seconds() * 1000) + next(self._tick)

    def link(self, a: str, b: str) -> None:
        self.links.setdefault(a, set()).add(b)
        self.links.setdefault(b, set()).add(a)
        for server_id in (a, b):
            node = self.nodes.get(server_id)
            if node is not None:
                for callback in node.peers.observers:
                    callback()

    def unlink(self, a: str, b: str) -> None:
        self.links.get(a, set()).discard(b)
        self.links.get(b, set()).discard(a)
        self.queue = [q for q in self.queue if {q[0], q[1]} != {a, b}]
        for server_id in (a, b):
            node = self.nodes.get(server_id)
            if node is not None:
                for callback in node.peers.observers:
                    callback()

    def join_user(self, node: Node, user_id: str) -> FakeLink:
        """``user_id`` completes USER_HELLO on ``node``; its advertise reaches every other server."""
        link = FakeLink(f"user-{user_id[:4]}-{node.server_id[:2]}", role="user", identity=user_id)
        node.links[user_id] = link
        node.presence.user_online_local(user_id, user_pub(user_id), {}, link)
        for other in self.nodes.values():
            if other is not node:
                other.presence.user_online_remote(user_id, node.server_id, user_pub(user_id), {})
        self.clock.advance(0)
        return link

    def drop_user(self, node: Node, user_id: str) -> None:
        node.presence.user_offline_local(user_id)
        for other in self.nodes.values():
            if other is not node:
                other.presence.user_offline_remote(user_id, node.server_id)
        self.clock.advance(0)  # the end of the reactor turn: the leave's event is made

    def pump(self, rnd: random.Random | None = None, limit: int = 10_000) -> int:
        """Deliver queued frames (in random order with ``rnd``) until none is left."""
        count = 0
        while self.queue:
            count += 1
            assert count < limit, "frames keep flowing: a gossip loop?"
            index = rnd.randrange(len(self.queue)) if rnd is not None else 0
            sender, receiver, frame = self.queue.pop(index)
            self._deliver(sender, receiver, resolved(frame))
        return count

    def _deliver(self, sender: str, receiver: str, data: bytes) -> None:
        node = self.nodes.get(receiver)
        if node is None or receiver not in self.links.get(sender, set()):
            return
        envelope = wire.parse_envelope(data)
        assert crypto.verify_payload(self.keys[envelope.from_], envelope.payload, envelope.sig), envelope
        if envelope.from_ == receiver:
            return
        digest = hashlib.sha256(wire.canonical(envelope.payload)).hexdigest()
        key = (envelope.ts, envelope.from_, envelope.to, digest)
        seen = self.seen.setdefault(receiver, set())
        if key in seen:
            return
        seen.add(key)
        self.delivered.append((sender, receiver, json.loads(data)))
        handler = node.peers.handlers.get(envelope.type)
        if handler is not None:
            handler(envelope, FakeLink(link_id(sender, receiver), role="server", identity=sender))


class PublicTestBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Net()

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass one second at a time (a LoopingCall runs once per jump), pumping."""
        for _ in range(int(seconds)):
            self.net.clock.advance(1)
            self.net.pump()

    def node(self, server_id: str, **options) -> Node:
        return Node(self.net, server_id, **options).start()

    def mesh(self, *server_ids: str, **options) -> list[Node]:
        nodes = [self.node(s, **options) for s in server_ids]
        for a, b in itertools.combinations(server_ids, 2):
            self.net.link(a, b)
        self.net.pump()
        return nodes

    def assert_converged(self, nodes: list[Node]) -> None:
        first = nodes[0].state
        for node in nodes[1:]:
            self.assertEqual(node.state.version, first.version, node.server_id)
            self.assertEqual(node.state.states, first.states, node.server_id)
            self.assertEqual(node.state.origins, first.origins, node.server_id)
        for node in nodes:
            group = node.store.groups[GROUP]
            self.assertEqual(sum(group["origins"].values()), first.version)
            self.assertEqual(set(group["members"]), set(first.members()))

    def sent_adds(self, sender: str | None = None) -> list[dict]:
        """Payloads of PUBLIC_CHANNEL_ADD frames broadcast (by ``sender``)."""
        out = []
        for who, frame in self.net.broadcasts:
            decoded = json.loads(resolved(frame))
            if decoded["type"] == "PUBLIC_CHANNEL_ADD" and sender in (None, who):
                out.append(decoded["payload"])
        return out


class GatedStore(MemoryStore):
    """A MemoryStore whose writes (and optionally loads) wait for :meth:`release`."""

    def __init__(self, gate_loads: bool = False) -> None:
        super().__init__()
        self.gate_loads = gate_loads
        self.waiting: list[tuple[Deferred, Callable[[], Deferred]]] = []

    def _gate(self, call: Callable[[], Deferred]) -> Deferred:
        d: Deferred = Deferred()
        self.waiting.append((d, call))
        return d

    def load_group(self, group_id):
        if self.gate_loads:
            return self._gate(lambda: MemoryStore.load_group(self, group_id))
        return super().load_group(group_id)

    def save_group_state(self, group_id, states, origins):
        return self._gate(lambda: MemoryStore.save_group_state(self, group_id, states, origins))

    def release(self, fail_with: Exception | None = None) -> None:
        waiting, self.waiting = self.waiting, []
        self.gate_loads = False
        for d, call in waiting:
            (fail(fail_with) if fail_with is not None else call()).chainDeferred(d)


def public_message(sender: str, recipient: str, text: bytes = b"hi all", ts: int = 1_700_000_000_000, **over):
    """A MSG_PUBLIC_CHANNEL envelope as a conforming client sends it."""
    ciphertext = crypto.oaep_encrypt(user_key(recipient).public_key(), text)
    payload = {
        "ciphertext": ciphertext,
        "sender_pub": user_pub(sender),
        "content_sig": crypto.sign_content(user_key(sender), crypto.public_preimage(ciphertext, sender, ts)),
    }
    to = over.pop("to", recipient)
    payload.update(over)
    return wire.Envelope("MSG_PUBLIC_CHANNEL", sender, to, ts, payload, "")
