"""The public channel, unit level: the membership CRDT, and servers wired by an in-memory mesh.

Each simulated server has the real Presence, Router, signer and PublicChannel, a MemoryStore
and synchronous workers; :class:`Net` stands in for the mesh (IPeerLinks): it verifies the
transport signature of every frame, de-duplicates like ``seen_ids`` and can deliver the
queued frames in any order, so convergence is tested under reordering.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections import Counter
from collections.abc import Callable
from functools import partial
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from socp_tw import crypto, wire
from socp_tw.content import ContentError
from socp_tw.identity import ServerIdentity
from socp_tw.interfaces import IPeerLinks
from socp_tw.services.presence import Presence
from socp_tw.services.public import (
    GROUP,
    ChannelState,
    MemberState,
    PublicChannel,
    make_key_parts,
    parse_event,
    parse_origins,
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


# ---------------------------------------------------------------- the CRDT alone


def event(member, present=True, lamport=1, origin=A, seq=1, host=None, pubkey="key") -> MemberState:
    return MemberState(member, present, lamport, origin, seq, host or origin, pubkey if present else None)


class ChannelStateTests(SynchronousTestCase):
    def test_every_event_bumps_the_version(self) -> None:
        state = ChannelState()
        join = state.next_event(A, ALICE, True, A, "k")
        self.assertEqual((join.lamport, join.seq), (1, 1))
        changed, raised = state.merge([join])
        self.assertEqual((changed, raised, state.version), ([join], {A: 1}, 1))
        leave = state.next_event(A, ALICE, False, A, "ignored")
        self.assertEqual((leave.lamport, leave.seq, leave.pubkey), (2, 2, None))
        state.merge([leave])
        self.assertEqual((state.version, state.members()), (2, {}))
        self.assertFalse(state.is_member(ALICE))
        # Merging what is known changes nothing: idempotent.
        self.assertEqual(state.merge([join, leave], {A: 2}), ([], {}))
        self.assertEqual(state.version, 2)

    def test_last_writer_wins_by_lamport_then_origin_then_seq(self) -> None:
        state = ChannelState()
        state.merge([event(ALICE, True, lamport=5, origin=B)])
        state.merge([event(ALICE, False, lamport=4, origin=C, seq=9)])  # older: loses
        self.assertTrue(state.is_member(ALICE))
        state.merge([event(ALICE, False, lamport=5, origin=C)])  # same lamport, higher origin: wins
        self.assertFalse(state.is_member(ALICE))
        state.merge([event(ALICE, True, lamport=5, origin=C.upper(), seq=2)])  # origin compared lower-cased
        self.assertTrue(state.is_member(ALICE))
        self.assertEqual(state.lamport, 5)
        self.assertEqual(state.version, 9 + 2 + 1)  # counters: B 1, C max(9, 1), C.upper() 2

    def test_counters_alone_bump_the_version(self) -> None:
        state = ChannelState()
        self.assertEqual(state.merge([], {A: 3, B: 2}), ([], {A: 3, B: 2}))
        self.assertEqual(state.merge([], {A: 1, B: 4}), ([], {B: 4}))
        self.assertEqual(state.version, 7)

    def test_bounded(self) -> None:
        state = ChannelState(max_members=1)
        state.merge([event(ALICE), event(BOB, seq=2)])
        self.assertEqual((list(state.states), state.refused_full, state.version), ([ALICE], 1, 2))
        state.merge([event(ALICE, False, lamport=2, seq=3)])  # known members still change
        self.assertFalse(state.is_member(ALICE))

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from([ALICE, BOB, CAROL]),
                st.booleans(),
                st.integers(1, 6),
                st.sampled_from([A, B, C]),
                st.integers(1, 5),
            ),
            max_size=25,
        ),
        st.randoms(use_true_random=False),
    )
    def test_merge_order_does_not_matter(self, raw, rnd) -> None:
        # (origin, seq) names one event: keep one per name, as real origins never reuse one.
        events = list({(o, s): event(m, p, lam, o, s) for m, p, lam, o, s in raw}.values())
        first, second = ChannelState(), ChannelState()
        for e in events:
            first.merge([e])
        shuffled = events + rnd.sample(events, len(events) // 2)  # duplicates too
        rnd.shuffle(shuffled)
        half = len(shuffled) // 2
        second.merge(shuffled[:half])
        second.merge(shuffled[half:], {})
        self.assertEqual(first.states, second.states)
        self.assertEqual((first.version, first.lamport), (second.version, second.lamport))
        self.assertEqual(first.members(), second.members())


class ParsingTests(SynchronousTestCase):
    def good(self) -> dict[str, Any]:
        return event(ALICE, origin=B, host=C).to_wire()

    def test_round_trip(self) -> None:
        self.assertEqual(parse_event(self.good()), event(ALICE, origin=B, host=C))
        leave = event(ALICE, False, origin=B).to_wire()
        self.assertNotIn("pubkey", leave)
        self.assertEqual(parse_event({**leave, "pubkey": "ignored"}).pubkey, None)

    def test_malformed_events(self) -> None:
        good = self.good()
        for bad, code in [
            ("not an object", "BAD_FIELD"),
            ({**good, "member_id": "alice"}, "BAD_UUID"),
            ({k: v for k, v in good.items() if k != "origin"}, "MISSING_FIELD"),
            ({**good, "present": 1}, "BAD_FIELD"),
            ({**good, "lamport": 0}, "BAD_FIELD"),
            ({**good, "lamport": 2**60}, "BAD_FIELD"),
            ({**good, "seq": "1"}, "BAD_FIELD"),
            ({**good, "host": 7}, "BAD_FIELD"),
            ({k: v for k, v in good.items() if k != "pubkey"}, "MISSING_FIELD"),
        ]:
            with self.assertRaises(wire.FrameError) as caught:
                parse_event(bad)
            self.assertEqual(caught.exception.code, code, bad)

    def test_origins(self) -> None:
        self.assertEqual(parse_origins(None), {})
        self.assertEqual(parse_origins({A: 3, B: 0}), {A: 3, B: 0})
        for bad in ([A], {"x": 1}, {A: -1}, {A: True}, {wire.new_uuid4(): 1 for _ in range(1001)}):
            self.assertRaises(wire.FrameError, parse_origins, bad)


class KeyPartsTests(SynchronousTestCase):
    def test_parts_are_signed_and_unwrap(self) -> None:
        creator = test_key(0)
        creator_pub = crypto.encode_public_key(creator)
        signer = FrameSigner(ServerIdentity(A, creator, creator_pub), SynchronousWorkers())
        members = [(ALICE, user_pub(ALICE)), (BOB, user_pub(BOB)), (CAROL, user_pub(CAROL))]
        parts = make_key_parts(signer.sign_content_now, creator_pub, members, 2)
        self.assertEqual([len(p["shares"]) for p in parts], [2, 1])
        keys = set()
        for part in parts:
            preimage = crypto.keyshare_preimage(part["shares"], creator_pub)
            self.assertTrue(crypto.verify_content_sig(creator, preimage, part["content_sig"]))
            for share in part["shares"]:
                keys.add(crypto.oaep_decrypt(user_key(share["member"]), share["wrapped_public_channel_key"]))
        self.assertEqual(len(keys), 1)
        self.assertEqual(len(keys.pop()), 32)
        again = make_key_parts(signer.sign_content_now, creator_pub, members[:1], 2)
        fresh = crypto.oaep_decrypt(user_key(ALICE), again[0]["shares"][0]["wrapped_public_channel_key"])
        self.assertNotIn(fresh, keys)


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
        self.router = Router(self.presence, self.signer, self.peers)
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


# ---------------------------------------------------------------- one server


class SingleServerTests(PublicTestBase):
    def test_interfaces_and_registration(self) -> None:
        node = self.node(A)
        self.assertTrue(verifyObject(IPeerLinks, node.peers))
        self.assertIn("MSG_PUBLIC_CHANNEL", node.users.handlers)
        self.assertEqual(
            set(node.peers.handlers) & {"PUBLIC_CHANNEL_ADD", "PUBLIC_CHANNEL_UPDATED"},
            {
                "PUBLIC_CHANNEL_ADD",
                "PUBLIC_CHANNEL_UPDATED",
            },
        )
        self.assertTrue(node.public.ready)
        self.assertEqual(node.state.version, 0)

    def test_join_snapshot_and_key(self) -> None:
        node = self.node(A)
        link = FakeLink("alice", role="user", identity=ALICE)
        node.links[ALICE] = link
        node.presence.user_online_local(ALICE, user_pub(ALICE), {}, link)
        # Nothing before the hello's ACK (sent by the user side once observers return).
        self.assertEqual(link.sent, [])
        self.net.clock.advance(0)
        snapshot, share = node.frames(ALICE)
        self.assertEqual(snapshot["type"], "PUBLIC_CHANNEL_UPDATED")
        self.assertEqual(snapshot["to"], "*")  # shared by the users arriving before the next update
        self.assertEqual(
            snapshot["payload"],
            {
                "version": 1,
                "wraps": [],
                "members": [{"user_id": ALICE, "pubkey": user_pub(ALICE)}],
                "removed": [],
                "reset": True,
            },
        )
        self.assertEqual(share["type"], "PUBLIC_CHANNEL_KEY_SHARE")
        payload = share["payload"]
        self.assertEqual(
            (payload["version"], payload["creator"], payload["part"], payload["parts"]), (1, A, 0, 1)
        )
        self.assertEqual(payload["creator_pub"], server_pub(A))
        preimage = crypto.keyshare_preimage(payload["shares"], payload["creator_pub"])
        self.assertTrue(crypto.verify_content_sig(test_key(0), preimage, payload["content_sig"]))
        [mine] = payload["shares"]
        group_key = crypto.oaep_decrypt(user_key(ALICE), mine["wrapped_public_channel_key"])
        self.assertEqual(len(group_key), 32)
        # Persisted: the version, the member, and only the wrapped key.
        group = node.store.groups[GROUP]
        self.assertEqual(group["origins"], {A: 1})
        self.assertEqual(group["members"], {ALICE: mine["wrapped_public_channel_key"]})
        self.assertEqual(group["meta"], {"key_version": 1, "key_creator": A})
        self.assertNotIn(group_key.hex(), json.dumps(group))
        self.assertEqual(node.public.counters["keys_made"], 1)

    def test_join_and_leave_bump_and_tell_the_others(self) -> None:
        node = self.node(A)
        self.net.join_user(node, ALICE)
        self.net.join_user(node, BOB)
        self.assertEqual(node.state.version, 2)
        # Alice's key was made at once; Bob's join comes within rekey_interval: its key waits.
        self.net.clock.advance(node.public.rekey_interval - 0.01)
        frames = node.frames(ALICE)
        [delta] = [f for f in frames if f["type"] == "PUBLIC_CHANNEL_UPDATED" and not f["payload"]["reset"]]
        self.assertEqual(delta["payload"]["members"], [{"user_id": BOB, "pubkey": user_pub(BOB)}])
        self.assertEqual((delta["payload"]["version"], delta["payload"]["removed"]), (2, []))
        shares = [f for f in frames if f["type"] == "PUBLIC_CHANNEL_KEY_SHARE"]
        self.assertEqual([s["payload"]["version"] for s in shares], [1])
        self.net.clock.advance(0.01)
        shares = node.frames(ALICE)
        self.assertEqual([s["payload"]["version"] for s in shares], [2])
        self.assertEqual([len(s["payload"]["shares"]) for s in shares], [2])
        self.net.clock.advance(node.public.rekey_interval)  # quiet: the next change is keyed at once
        self.net.drop_user(node, BOB)
        self.assertEqual(node.state.version, 3)
        self.assertEqual(node.state.members(), {ALICE: user_pub(ALICE)})
        updated, share = node.frames(ALICE)
        self.assertEqual(updated["payload"]["removed"], [BOB])
        self.assertEqual((updated["payload"]["version"], updated["payload"]["members"]), (3, []))
        self.assertEqual(share["payload"]["version"], 3)
        self.assertEqual(node.store.groups[GROUP]["members"].keys(), {ALICE})
        self.assertEqual(node.store.groups[GROUP]["states"][BOB]["present"], False)
        self.assertEqual(node.public.counters["events_made"], 3)

    def test_restart_never_resets_the_version(self) -> None:
        store = MemoryStore()
        first = Node(self.net, A, store=store).start()
        self.net.join_user(first, ALICE)
        self.net.join_user(first, BOB)
        self.net.drop_user(first, BOB)
        self.assertEqual(first.state.version, 3)
        # A crash: Alice's link is gone without a leave being recorded.
        first.public.ready = False
        first.public.running = False
        again = Node(self.net, A, store=store).start()
        # Alice was hosted here and is not connected: she left (one more event).
        self.assertEqual(again.state.version, 4)
        self.assertEqual(again.state.members(), {})
        self.assertEqual(again.public.counters["swept_own"], 1)
        self.net.join_user(again, CAROL)
        self.assertEqual(again.state.version, 5)
        self.assertEqual(store.groups[GROUP]["origins"], {A: 5})

    def test_events_are_saved_before_they_are_sent(self) -> None:
        store = GatedStore()
        node = Node(self.net, A, store=store).start()
        self.net.join_user(node, ALICE)
        self.assertEqual(node.state.version, 1)
        self.assertEqual(self.sent_adds(), [])
        store.release()
        [add] = self.sent_adds()
        self.assertEqual((add["add"], add["remove"], add["if_version"], add["version"]), ([ALICE], [], 0, 1))
        self.assertEqual(add["counters"], {A: 1})
        self.assertEqual(add["events"], [node.state.states[ALICE].to_wire()])

    def test_unsaved_events_are_not_sent(self) -> None:
        store = GatedStore()
        node = Node(self.net, A, store=store).start()
        self.net.join_user(node, ALICE)
        store.release(fail_with=RuntimeError("disk full"))
        self.assertEqual(self.sent_adds(), [])
        self.assertEqual(node.public.counters["persist_failed"], 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_work_before_the_state_is_loaded_waits(self) -> None:
        store = GatedStore(gate_loads=True)
        node = Node(self.net, A, store=store).start()
        self.assertFalse(node.public.ready)
        link = self.net.join_user(node, ALICE)
        handler = node.users.handlers["MSG_PUBLIC_CHANNEL"]
        pending = handler(link, ALICE, public_message(ALICE, ALICE))
        self.assertNoResult(pending)
        self.assertEqual(node.state.version, 0)
        store.release()
        self.assertTrue(node.public.ready)
        self.assertEqual(node.state.version, 1)
        self.successResultOf(pending)
        self.assertEqual(
            [f["type"] for f in node.frames(ALICE, ("PUBLIC_CHANNEL_UPDATED", "MSG_PUBLIC_CHANNEL"))],
            ["PUBLIC_CHANNEL_UPDATED", "MSG_PUBLIC_CHANNEL"],
        )

    def test_stopping_says_our_users_left(self) -> None:
        a, b = self.mesh(A, B)
        self.net.join_user(a, ALICE)
        self.net.pump()
        self.assertEqual(b.state.members(), {ALICE: user_pub(ALICE)})
        a.public.stopService()
        self.net.pump()
        self.assertEqual((b.state.members(), b.state.version), ({}, 2))
        self.assertEqual(a.store.groups[GROUP]["members"], {})
        # After the stop, presence changes are not ours to handle any more.
        self.net.drop_user(a, ALICE)
        self.assertEqual(a.state.version, 2)

    def test_no_group_in_store_disables(self) -> None:
        store = MemoryStore()
        del store.groups[GROUP]
        node = Node(self.net, A, store=store).start()
        self.assertFalse(node.public.ready)
        self.net.join_user(node, ALICE)
        self.assertEqual(node.state.version, 0)


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


# ---------------------------------------------------------------- MSG_PUBLIC_CHANNEL


class MessageTests(PublicTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.a, self.b = self.mesh(A, B)
        self.alice = self.net.join_user(self.a, ALICE)
        self.bob = self.net.join_user(self.a, BOB)
        self.carol = self.net.join_user(self.b, CAROL)
        self.net.pump()
        for node, user in ((self.a, ALICE), (self.a, BOB), (self.b, CAROL)):
            node.frames(user)
        self.handler = self.a.users.handlers["MSG_PUBLIC_CHANNEL"]

    def send(self, envelope: wire.Envelope, sender: str = ALICE):
        return self.handler(self.a.links[sender], sender, envelope)

    def test_local_member(self) -> None:
        message = public_message(ALICE, BOB)
        self.assertIsNone(self.send(message))
        [frame] = self.a.frames(BOB, ("MSG_PUBLIC_CHANNEL",))
        self.assertEqual((frame["from"], frame["to"], frame["ts"]), (A, BOB, message.ts))
        self.assertEqual(
            frame["payload"],
            {
                "ciphertext": message.payload["ciphertext"],
                "content_sig": message.payload["content_sig"],
                "sender": ALICE,
                "sender_pub": user_pub(ALICE),
            },
        )
        self.assertEqual(crypto.oaep_decrypt(user_key(BOB), frame["payload"]["ciphertext"]), b"hi all")
        self.assertEqual(self.a.public.counters["routed"], 1)

    def test_remote_member(self) -> None:
        message = public_message(ALICE, CAROL)
        self.send(message)
        self.net.pump()
        [frame] = self.b.frames(CAROL, ("MSG_PUBLIC_CHANNEL",))
        self.assertEqual((frame["from"], frame["ts"], frame["payload"]["sender"]), (B, message.ts, ALICE))
        [(_, _, deliver)] = [d for d in self.net.delivered if d[2]["type"] == "SERVER_DELIVER"]
        self.assertEqual(deliver["payload"]["type"], "MSG_PUBLIC_CHANNEL")
        self.assertEqual(deliver["to"], B)

    def test_to_public_refused_with_an_explanation(self) -> None:
        with self.assertRaises(wire.FrameError) as caught:
            self.send(public_message(ALICE, BOB, to="public"))
        self.assertEqual(caught.exception.code, "BAD_FIELD")
        self.assertIn("once per member", caught.exception.detail)
        with self.assertRaises(wire.FrameError) as caught:
            self.send(public_message(ALICE, BOB, to="nobody"))
        self.assertEqual(caught.exception.code, "BAD_UUID")

    def test_not_a_member(self) -> None:
        with self.assertRaises(wire.FrameError) as caught:
            self.send(public_message(ALICE, DAVE))
        self.assertEqual(caught.exception.code, "USER_NOT_FOUND")
        self.assertEqual(self.a.public.counters["not_member"], 1)

    def test_member_not_reachable(self) -> None:
        self.b.presence.user_offline_local(CAROL)  # gone, but its leave not merged here yet
        self.a.presence.user_offline_remote(CAROL, B)
        self.send(public_message(ALICE, CAROL))
        [(link, error)] = self.a.users.errors
        self.assertIs(link, self.alice)
        self.assertEqual(error.pop("detail"), f"member {CAROL} is not online")
        self.assertEqual(error, {"code": "USER_NOT_FOUND", "msg_ref": "MSG_PUBLIC_CHANNEL", "user_id": CAROL})

    def test_forged_content_sig(self) -> None:
        forged = public_message(ALICE, BOB, content_sig=public_message(BOB, BOB).payload["content_sig"])
        failure = self.failureResultOf(self.send(forged), ContentError)
        self.assertEqual(failure.value.code, "INVALID_SIG")
        self.assertEqual(self.a.frames(BOB, ("MSG_PUBLIC_CHANNEL",)), [])

    def test_other_preimage_variant_accepted(self) -> None:
        message = public_message(ALICE, BOB)
        ciphertext = message.payload["ciphertext"]
        piped = crypto.sign_content(user_key(ALICE), f"{ciphertext}|{ALICE}|{message.ts}".encode())
        self.successResultOf(self.send(public_message(ALICE, BOB, ciphertext=ciphertext, content_sig=piped)))
        self.assertEqual(len(self.a.frames(BOB, ("MSG_PUBLIC_CHANNEL",))), 1)

    def test_sender_key_must_be_the_authenticated_one(self) -> None:
        with self.assertRaises(wire.FrameError) as caught:
            self.send(public_message(ALICE, BOB, sender_pub=user_pub(BOB)))
        self.assertEqual(caught.exception.code, "INVALID_SIG")

    def test_malformed(self) -> None:
        message = public_message(ALICE, BOB)
        for name, code in (("ciphertext", "MISSING_FIELD"), ("sender_pub", "MISSING_FIELD")):
            payload = {k: v for k, v in message.payload.items() if k != name}
            with self.assertRaises(wire.FrameError) as caught:
                self.send(wire.Envelope("MSG_PUBLIC_CHANNEL", ALICE, BOB, message.ts, payload))
            self.assertEqual(caught.exception.code, code)

    def test_forged_on_the_way_is_refused_by_the_recipients_server(self) -> None:
        # A SERVER_DELIVER whose content_sig does not verify never reaches Carol.
        message = public_message(ALICE, CAROL)
        payload = {
            "user_id": CAROL,
            "ciphertext": message.payload["ciphertext"],
            "content_sig": public_message(BOB, CAROL).payload["content_sig"],
            "sender": ALICE,
            "sender_pub": user_pub(ALICE),
            "type": "MSG_PUBLIC_CHANNEL",
        }
        self.net.queue.append((A, B, self.a.signer.frame_now("SERVER_DELIVER", B, payload, ts=message.ts)))
        self.net.pump()
        self.assertEqual(self.b.frames(CAROL, ("MSG_PUBLIC_CHANNEL",)), [])
        errors = [d[2]["payload"] for d in self.net.delivered if d[2]["type"] == "ERROR"]
        self.assertEqual([e["code"] for e in errors], ["INVALID_SIG"])


# ---------------------------------------------------------------- gossip and convergence


class ConvergenceTests(PublicTestBase):
    def test_concurrent_joins_converge_in_any_order(self) -> None:
        for seed in range(6):
            self.net = Net()
            nodes = self.mesh(A, B, C)
            a, b, c = nodes
            rnd = random.Random(seed)
            # Joins on A and B at once: neither has heard of the other's when it makes its event.
            self.net.join_user(a, ALICE)
            self.net.join_user(b, BOB)
            self.net.join_user(b, CAROL)
            self.net.drop_user(b, CAROL)
            self.net.pump(rnd)
            self.net.clock.advance(a.public.rekey_interval)  # the leader keys the burst's end state
            self.net.pump(rnd)
            self.assert_converged(nodes)
            self.assertEqual(a.state.version, 4)
            self.assertEqual(set(a.state.members()), {ALICE, BOB})
            self.assertGreaterEqual(sum(n.public.counters["concurrent_events"] for n in nodes), 1)
            # Everybody ends with the leader's key for the final version and members.
            for node in nodes:
                self.assertEqual((node.public.key.version, node.public.key.creator), (4, A), seed)
                self.assertEqual(node.store.groups[GROUP]["meta"]["key_version"], 4)
            self.assertEqual(b.public.counters["keys_made"] + c.public.counters["keys_made"], 0)

    def test_server_that_was_away_catches_up(self) -> None:
        a, b = self.mesh(A, B)
        self.net.join_user(a, ALICE)
        self.net.join_user(b, BOB)
        self.net.pump()
        c = self.node(C)
        self.net.join_user(c, CAROL)  # C alone: its own event only
        self.assertEqual(c.state.version, 1)
        self.net.link(C, B)  # only to B: the state exchange and re-gossip reach A through B
        self.net.pump()
        self.assert_converged([a, b, c])
        self.assertEqual(set(a.state.members()), {ALICE, BOB, CAROL})
        self.assertEqual(a.state.version, 3)
        self.assertGreaterEqual(c.public.counters["state_sent"], 1)

    def test_leave_then_join_elsewhere_before_the_leave_arrives(self) -> None:
        a, b = self.mesh(A, B)
        self.net.join_user(a, ALICE)
        self.net.pump()
        self.net.unlink(A, B)
        # Cut off from B, A sees more events, then Alice leaves A: that leave has the higher
        # lamport, while Alice, already on B, joined there with a lower one.
        self.net.join_user(a, DAVE)
        self.net.drop_user(a, DAVE)
        self.net.drop_user(a, ALICE)
        b.presence.user_online_local(
            ALICE, user_pub(ALICE), {}, FakeLink("alice-b", role="user", identity=ALICE)
        )
        self.assertGreater(a.state.states[ALICE].order(), b.state.states[ALICE].order())
        self.net.link(A, B)
        self.net.pump()
        self.assert_converged([a, b])
        # B saw its connected user "leave" and joined her again: she stays a member.
        self.assertTrue(a.state.is_member(ALICE))
        self.assertEqual(a.state.states[ALICE].host_id, B)
        self.assertEqual(b.public.counters["rejoined"], 1)

    def test_leader_removes_members_of_a_vanished_server(self) -> None:
        nodes = self.mesh(A, B, C, evict_after=30.0, sweep_interval=5.0)
        a, b, c = nodes
        self.net.join_user(c, CAROL)
        self.net.pump()
        version = a.state.version
        # C dies: its links drop and the mesh withdraws Carol; C never says she left.
        c.public.running = False
        self.net.unlink(A, C)
        self.net.unlink(B, C)
        a.presence.server_lost(C)
        b.presence.server_lost(C)
        self.advance(25)
        self.assertTrue(a.state.is_member(CAROL))
        self.advance(15)
        self.assert_converged([a, b])
        self.assertFalse(a.state.is_member(CAROL))
        self.assertEqual(a.state.version, version + 1)  # one leave, made by the leader only
        self.assertEqual((a.public.counters["swept"], b.public.counters["swept"]), (1, 0))

    def test_leader_adds_users_of_servers_that_do_not_speak_this(self) -> None:
        a, b = self.mesh(A, B, evict_after=10.0)
        for node in (a, b):
            node.presence.user_online_remote(DAVE, X, user_pub(DAVE), {})
        self.advance(15)
        self.assert_converged([a, b])
        self.assertEqual(a.state.states[DAVE].host_id, X)
        self.assertTrue(b.state.is_member(DAVE))
        for node in (a, b):
            node.presence.user_offline_remote(DAVE, X)
        self.advance(15)
        self.assertFalse(b.state.is_member(DAVE))
        self.assertEqual(b.state.version, 2)

    def test_user_on_two_servers_does_not_flap(self) -> None:
        a, b = self.mesh(A, B)
        self.net.join_user(a, ALICE)
        b.presence.user_online_local(
            ALICE, user_pub(ALICE), {}, FakeLink("alice-b", role="user", identity=ALICE)
        )
        sent = self.net.pump()
        self.assertLess(sent, 20)
        self.assert_converged([a, b])
        self.assertTrue(a.state.is_member(ALICE))
        self.assertEqual(a.state.version, 2)

    def test_large_membership_in_parts(self) -> None:
        options = {"shares_per_part": 2, "states_per_frame": 2, "members_per_frame": 2}
        a, b = self.mesh(A, B, **options)
        for user in (ALICE, BOB, CAROL):
            self.net.join_user(b, user)
        self.net.pump()
        self.advance(a.public.rekey_interval)
        c = self.node(C, **options)
        self.net.link(A, C)
        self.net.link(B, C)
        self.net.pump()
        self.assert_converged([a, b, c])
        self.assertEqual(c.public.key.version, 3)
        self.assertEqual(len(c.public.key.parts), 2)
        self.assertEqual(c.public.counters["keys_made"], 0)  # A's key came with A's state
        self.net.join_user(c, DAVE)
        self.net.pump()
        self.advance(a.public.rekey_interval)
        frames = c.frames(DAVE)
        updates = [f["payload"] for f in frames if f["type"] == "PUBLIC_CHANNEL_UPDATED"]
        self.assertEqual([u["reset"] for u in updates], [True, False])  # a snapshot in two parts
        self.assertEqual({m["user_id"] for u in updates for m in u["members"]}, {ALICE, BOB, CAROL, DAVE})
        [share] = [f["payload"] for f in frames if f["type"] == "PUBLIC_CHANNEL_KEY_SHARE"]
        self.assertEqual((share["version"], share["parts"], share["creator"]), (4, 2, A))
        self.assertIn(DAVE, [s["member"] for s in share["shares"]])
        self.assertEqual(c.public.key.version, 4)


class KeyTests(PublicTestBase):
    def test_only_the_leader_makes_keys_and_others_hand_them_out(self) -> None:
        a, b = self.mesh(A, B)
        self.net.join_user(b, BOB)
        self.net.pump()
        self.assertEqual((a.public.counters["keys_made"], b.public.counters["keys_made"]), (1, 0))
        [share] = [f for f in b.frames(BOB) if f["type"] == "PUBLIC_CHANNEL_KEY_SHARE"]
        payload = share["payload"]
        self.assertEqual((payload["creator"], payload["creator_pub"], share["from"]), (A, server_pub(A), B))
        preimage = crypto.keyshare_preimage(payload["shares"], payload["creator_pub"])
        self.assertTrue(crypto.verify_content_sig(test_key(0), preimage, payload["content_sig"]))
        self.assertEqual(
            b.store.groups[GROUP]["members"][BOB], payload["shares"][0]["wrapped_public_channel_key"]
        )

    def test_keyless_version_gets_a_key_from_the_watchdog(self) -> None:
        # A server of another implementation has the lowest id: it leads but makes no keys.
        b, c = self.mesh(B, C, key_timeout=10.0)
        self.net.link(B, A)  # "A" is linked to B but runs no PublicChannel
        self.net.join_user(b, BOB)
        self.net.pump()
        self.assertIsNone(b.public.key)
        self.net.clock.advance(9)
        self.assertIsNone(c.public.key)
        self.net.clock.advance(1)
        self.net.pump()
        for node in (b, c):
            self.assertEqual((node.public.key.version, node.public.key.creator), (1, B))
            self.assertEqual(node.public.counters["key_watchdog"], 1)

    def test_lower_creator_wins_a_tie(self) -> None:
        a, b = self.mesh(A, B)
        self.net.unlink(A, B)  # both lead their own half and make a key for the same state
        self.net.join_user(a, ALICE)
        b.public.state.merge([a.state.states[ALICE]], {A: 1})
        b.public.rekeying.check()
        self.assertEqual(b.public.key.creator, B)
        self.net.link(A, B)
        self.net.pump()
        self.assertEqual((a.public.key.creator, b.public.key.creator), (A, A))

    def test_forged_key_updates_dropped(self) -> None:
        _, b = self.mesh(A, B)
        self.net.join_user(b, BOB)
        self.net.pump()
        good = next(d[2] for d in self.net.delivered if d[2]["type"] == "PUBLIC_CHANNEL_UPDATED")["payload"]
        handler = b.peers.handlers["PUBLIC_CHANNEL_UPDATED"]
        link = FakeLink(link_id(A, B), role="server", identity=A)
        bad_payloads = [
            {**good, "content_sig": crypto.sign_content(test_key(2), b"something else")},
            {**good, "creator_pub": server_pub(C)},
            {**good, "wraps": [{"member_id": BOB, "wrapped_key": "AAAA"}]},
            {k: v for k, v in good.items() if k != "content_sig"},
            {**good, "part": 1},
            {**good, "wraps": [{"member_id": BOB}]},
            {**good, "version": "1"},
        ]
        for payload in bad_payloads:
            handler(wire.Envelope("PUBLIC_CHANNEL_UPDATED", A, "*", self.net.now_ms(), payload, "sig"), link)
        self.assertEqual(b.public.counters["dropped.PUBLIC_CHANNEL_UPDATED"], len(bad_payloads))
        self.assertEqual(self.net.queue, [])  # none passed on
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        # The real one is still the key; the alternative field name "wrapped" is accepted.
        renamed = {
            **good,
            "wraps": [{"member_id": w["member_id"], "wrapped": w["wrapped_key"]} for w in good["wraps"]],
        }
        b.public.key = None
        handler(wire.Envelope("PUBLIC_CHANNEL_UPDATED", A, "*", self.net.now_ms(), renamed, "sig"), link)
        self.assertEqual(b.public.key.version, 1)


class RekeyIntervalTests(PublicTestBase):
    """The leader makes at most one key per ``rekey_interval`` while the version keeps changing."""

    def key_shares(self, node: Node, user_id: str) -> list[dict]:
        return [f["payload"] for f in node.frames(user_id) if f["type"] == "PUBLIC_CHANNEL_KEY_SHARE"]

    def test_a_burst_of_joins_gets_one_key_after_it(self) -> None:
        node = self.node(A, rekey_interval=5.0)
        self.net.join_user(node, ALICE)  # after a quiet time: keyed at once
        self.assertEqual(node.public.key.version, 1)
        for user in (BOB, CAROL, DAVE):
            self.net.clock.advance(1)
            self.net.join_user(node, user)
        self.net.clock.advance(1.99)  # 4.99 s after Alice's key
        self.assertEqual(node.public.counters["keys_started"], 1)
        self.assertEqual(node.public.key.version, 1)
        for user in (BOB, CAROL, DAVE):  # joined after version 1: nothing of its key
            self.assertEqual(self.key_shares(node, user), [])
        self.key_shares(node, ALICE)
        self.net.clock.advance(0.01)
        self.assertEqual(node.public.counters["keys_started"], 2)
        self.assertEqual(node.public.counters["rekeys_deferred"], 1)
        self.assertEqual(node.public.key.version, 4)
        self.assertEqual(node.public.key.member_ids(), {ALICE, BOB, CAROL, DAVE})
        for user in (ALICE, BOB, CAROL, DAVE):
            [share] = self.key_shares(node, user)
            self.assertEqual(share["version"], 4)
            [mine] = [s for s in share["shares"] if s["member"] == user]
            self.assertEqual(len(crypto.oaep_decrypt(user_key(user), mine["wrapped_public_channel_key"])), 32)
        self.assertEqual(node.store.groups[GROUP]["meta"]["key_version"], 4)

    def test_a_member_who_left_during_the_wait_gets_no_new_key(self) -> None:
        node = self.node(A, rekey_interval=5.0)
        self.net.join_user(node, ALICE)
        self.net.join_user(node, BOB)
        self.net.join_user(node, CAROL)
        self.net.drop_user(node, CAROL)
        self.key_shares(node, CAROL)
        self.net.clock.advance(5)
        self.assertEqual((node.public.key.version, node.public.key.member_ids()), (4, {ALICE, BOB}))
        self.assertEqual(self.key_shares(node, CAROL), [])
        self.assertEqual([s["version"] for s in self.key_shares(node, BOB)], [4])
        self.assertEqual(node.store.groups[GROUP]["members"].keys(), {ALICE, BOB})

    def test_changes_that_keep_coming_are_keyed_at_most_once_per_interval(self) -> None:
        node = self.node(A, rekey_interval=5.0)
        self.net.join_user(node, ALICE)
        started = []
        for second in range(1, 21):
            self.net.clock.advance(1)
            if second % 2:
                self.net.join_user(node, BOB)
            else:
                self.net.drop_user(node, BOB)
            started.append(node.public.counters["keys_started"])
        self.assertEqual(node.state.version, 21)
        self.assertLessEqual(started[-1], 1 + 20 // 5)
        self.assertGreaterEqual(started[-1], 20 // 5)  # but keys keep coming during the stream
        self.net.clock.advance(5)
        self.assertEqual(node.public.key.version, 21)
        self.assertEqual(node.public.key.member_ids(), set(node.state.members()))

    def test_zero_interval_keys_every_version(self) -> None:
        node = self.node(A, rekey_interval=0.0)
        self.net.join_user(node, ALICE)
        self.net.join_user(node, BOB)
        self.assertEqual([s["version"] for s in self.key_shares(node, ALICE)], [1, 2])
        self.assertEqual(node.public.counters["rekeys_deferred"], 0)

    def test_other_servers_wait_for_the_leaders_deferred_key(self) -> None:
        a, b = self.mesh(A, B, rekey_interval=5.0, key_timeout=10.0)
        for user in (BOB, CAROL, DAVE):
            self.net.join_user(b, user)
            self.net.pump()
        self.advance(5)
        for node in (a, b):
            self.assertEqual((node.public.key.version, node.public.key.creator), (3, A))
        self.assertEqual((b.public.counters["keys_made"], b.public.counters["key_watchdog"]), (0, 0))
        self.assertEqual(a.public.counters["keys_made"], 2)

    def test_stopping_cancels_a_deferred_key_and_update(self) -> None:
        node = self.node(A, rekey_interval=5.0)
        self.net.join_user(node, ALICE)
        self.net.join_user(node, BOB)
        self.assertEqual(len(self.net.clock.getDelayedCalls()), 4)  # sweep, key, update, snapshot kept
        node.public.stopService()
        self.assertEqual(self.net.clock.getDelayedCalls(), [])


class PushIntervalTests(PublicTestBase):
    """Local users are told membership changes at most once per ``push_interval``."""

    def updates(self, node: Node, user_id: str) -> list[dict]:
        return [f["payload"] for f in node.frames(user_id, ("PUBLIC_CHANNEL_UPDATED",))]

    def test_a_burst_of_joins_is_one_update(self) -> None:
        node = self.node(A, push_interval=0.5)
        self.net.join_user(node, ALICE)
        self.assertEqual([u["version"] for u in self.updates(node, ALICE)], [1])  # the snapshot
        for user in (BOB, CAROL, DAVE):
            self.net.clock.advance(0.1)
            self.net.join_user(node, user)
        self.net.drop_user(node, DAVE)  # joined and left between two updates
        self.net.clock.advance(0.18)  # 0.48 s after the last update
        self.assertEqual(self.updates(node, ALICE), [])
        snapshots = {user: self.updates(node, user) for user in (BOB, CAROL)}
        self.net.clock.advance(0.04)
        [update] = self.updates(node, ALICE)
        self.assertEqual(update["version"], 5)
        self.assertEqual([m["user_id"] for m in update["members"]], sorted([BOB, CAROL]))
        self.assertEqual((update["removed"], update["reset"]), ([], False))
        self.assertEqual(node.public.counters["membership_pushed"], 2)
        for user in (BOB, CAROL):  # the snapshot (as of the last update), then the same update
            [snapshot] = snapshots[user]
            self.assertEqual((snapshot["version"], snapshot["reset"]), (1, True))
            self.assertEqual([m["user_id"] for m in snapshot["members"]], [ALICE])
            self.assertEqual(self.updates(node, user), [update])
        self.assertEqual([u["reset"] for u in self.updates(node, DAVE)], [True])  # gone before the update

    def test_users_arriving_between_two_updates_share_one_snapshot(self) -> None:
        node = self.node(A, push_interval=0.5)
        self.net.join_user(node, ALICE)
        self.net.clock.advance(0.1)
        self.net.join_user(node, BOB)  # the update for Bob waits: both get the snapshot of version 1
        links = [node.links[ALICE], node.links[BOB]]
        snapshots = [[resolved(f) for f in link.sent if b'"reset":true' in resolved(f)] for link in links]
        self.assertEqual(snapshots[0], snapshots[1])
        self.assertEqual(node.public.counters["snapshots_signed"], 1)
        self.net.clock.advance(0.4)  # the update: Carol gets a new snapshot, of version 2
        self.net.join_user(node, CAROL)
        [carol] = [u for u in self.updates(node, CAROL) if u["reset"]]
        self.assertEqual(carol["version"], 2)
        self.assertEqual([m["user_id"] for m in carol["members"]], sorted([ALICE, BOB]))
        self.assertEqual(node.public.counters["snapshots_signed"], 2)
        self.net.clock.advance(1)
        self.assertIsNone(node.public.pushes.snapshot)  # not kept once nobody arrives

    def test_a_failed_snapshot_is_signed_again_for_the_next_user(self) -> None:
        node = self.node(A, push_interval=0.5)
        self.net.join_user(node, ALICE)
        self.net.clock.advance(0.1)
        real = node.signer.frame
        self.net.clock.advance(1)  # Alice's snapshot is no longer kept
        self.assertIsNone(node.public.pushes.snapshot)
        self.patch(node.signer, "frame", lambda *a, **k: fail(RuntimeError("pool down")))
        self.net.join_user(node, BOB)
        for _, frame in self.net.broadcasts:  # the ADD for Bob's join failed to sign too
            if isinstance(frame, Deferred):
                frame.addErrback(lambda _: None)
        self.flushLoggedErrors(RuntimeError)
        self.assertEqual([u for u in self.updates(node, BOB) if u["reset"]], [])  # his link skipped it
        self.assertIsNone(node.public.pushes.snapshot)
        self.patch(node.signer, "frame", real)
        self.net.join_user(node, CAROL)
        [carol] = [u for u in self.updates(node, CAROL) if u["reset"]]
        self.assertEqual(carol["version"], 2)
        self.assertEqual([m["user_id"] for m in carol["members"]], sorted([ALICE, BOB]))

    def test_a_change_after_a_quiet_interval_is_told_at_once(self) -> None:
        node = self.node(A, push_interval=0.5)
        self.net.join_user(node, ALICE)
        self.updates(node, ALICE)
        self.net.clock.advance(0.5)
        self.net.join_user(node, BOB)
        [update] = self.updates(node, ALICE)
        self.assertEqual(update["version"], 2)
        self.assertEqual(update["members"], [{"user_id": BOB, "pubkey": user_pub(BOB)}])
        self.assertEqual(node.public.counters["pushes_deferred"], 0)


class HostileGossipTests(PublicTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.a, self.b = self.mesh(A, B)
        self.handler = self.b.peers.handlers["PUBLIC_CHANNEL_ADD"]
        self.link = FakeLink(link_id(A, B), role="server", identity=A)

    def receive(self, payload: dict, to: str = "*") -> None:
        self.handler(wire.Envelope("PUBLIC_CHANNEL_ADD", A, to, self.net.now_ms(), payload, "sig"), self.link)

    def test_malformed_dropped_whole(self) -> None:
        good = event(ALICE, origin=A, pubkey=user_pub(ALICE)).to_wire()
        for payload in (
            {"events": "no"},
            {"events": [good, {**good, "seq": -1}]},
            {"events": [good], "counters": {"x": 1}},
            {"events": [good] * 1001},
        ):
            self.receive(payload)
        self.assertEqual(self.b.state.version, 0)
        self.assertEqual(self.b.public.counters["dropped.PUBLIC_CHANNEL_ADD"], 4)
        self.assertEqual(self.net.queue, [])

    def test_bad_member_key_drops_that_event(self) -> None:
        weak = event(ALICE, origin=A, pubkey="bm90IGEga2V5").to_wire()
        fine = event(BOB, origin=A, seq=2, pubkey=user_pub(BOB)).to_wire()
        self.receive({"events": [weak, fine], "counters": {A: 2}})
        self.assertEqual(set(self.b.state.members()), {BOB})
        self.assertEqual(self.b.state.version, 2)
        self.assertEqual(self.b.public.counters["dropped.PUBLIC_CHANNEL_ADD"], 1)

    def test_keys_are_stored_normalised(self) -> None:
        pem = crypto.encode_public_key(user_key(ALICE), pem=True)
        self.receive({"events": [event(ALICE, origin=A, pubkey=pem).to_wire()]})
        self.assertEqual(self.b.state.members(), {ALICE: user_pub(ALICE)})

    def test_foreign_add_without_events_ignored(self) -> None:
        self.receive({"add": [ALICE], "if_version": 0})
        self.assertEqual((self.b.state.version, self.b.public.counters["foreign_add"]), (0, 1))


# ---------------------------------------------------------------- the client side (/all, /members)


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def show(self, text: str) -> None:
        self.lines.extend(text.split("\n"))

    def ask_password(self, prompt: str) -> Deferred:
        raise AssertionError("no password expected")


class _ClientLink:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send(self, data: bytes) -> None:
        self.sent.append(json.loads(data))

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        pass


class ClientPublicTests(SynchronousTestCase):
    """ClientSession's public channel, logged in by hand as Alice on server A (test_key(0))."""

    def setUp(self) -> None:
        from socp_tw.client.pins import PinStore
        from socp_tw.client.session import ClientSession

        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.ui = _Lines()
        self.pins = PinStore(self.mktemp())
        session = self.session = ClientSession(
            self.ui, self.pins, "ws://127.0.0.1:1", workers=SynchronousWorkers(), clock=self.clock
        )
        self.link = _ClientLink()
        session.connection_made(self.link)
        session.user_id, session._key, session._pub = ALICE, user_key(ALICE), user_pub(ALICE)
        session.logged_in = session._want_online = True
        session.server_id, session._server_key = A, test_key(0).public_key()
        self.ui.lines.clear()
        self.addCleanup(session.shutdown)

    def push(self, frame_type: str, payload: dict, ts: int = 1_700_000_000_500, key=None, to: str = ALICE):
        sig = crypto.sign_payload(key or test_key(0), payload)
        self.session.frame_received(wire.Envelope(frame_type, A, to, ts, payload, sig))

    def members(self, *user_ids: str, version: int = 3, reset: bool = True, removed=()) -> None:
        payload = {
            "version": version,
            "wraps": [],
            "members": [{"user_id": u, "pubkey": user_pub(u)} for u in user_ids],
            "removed": list(removed),
            "reset": reset,
        }
        self.push("PUBLIC_CHANNEL_UPDATED", payload)

    def test_membership_snapshot_then_changes(self) -> None:
        self.members(ALICE, BOB, CAROL, version=3)
        self.assertEqual(set(self.session.public_members), {ALICE, BOB, CAROL})
        self.members(DAVE, version=5, reset=False, removed=[BOB])
        self.assertEqual(
            (set(self.session.public_members), self.session.public_version), ({ALICE, CAROL, DAVE}, 5)
        )
        self.session.members()
        self.assertEqual(self.ui.lines[0], "Public channel, version 5 (3 members):")
        self.assertIn(f"* {ALICE}  [{crypto.fingerprint(user_key(ALICE))}] (you)", self.ui.lines)
        self.assertIn(f"  {DAVE}  [{crypto.fingerprint(user_key(DAVE))}]", self.ui.lines)
        # Lost connection: forgotten until the next snapshot.
        self.session.connection_lost("test")
        self.assertEqual((self.session.public_version, self.session.public_members), (None, {}))

    def test_updates_not_signed_by_the_server_ignored(self) -> None:
        self.members(ALICE, BOB)
        payload = {"version": 9, "wraps": [], "members": [], "removed": [BOB], "reset": True}
        self.push("PUBLIC_CHANNEL_UPDATED", payload, key=test_key(1))
        self.push("PUBLIC_CHANNEL_UPDATED", {"version": "9", "members": []})
        self.assertEqual((set(self.session.public_members), self.session.public_version), ({ALICE, BOB}, 3))

    def sent_public(self) -> list[dict]:
        return [f for f in self.link.sent if f["type"] == "MSG_PUBLIC_CHANNEL"]

    def test_all_sends_one_signed_copy_per_other_member(self) -> None:
        self.members(ALICE, BOB, CAROL)
        self.successResultOf(self.session.send_all("hello everyone"))
        frames = self.sent_public()
        self.assertEqual(sorted(f["to"] for f in frames), sorted([BOB, CAROL]))
        for frame in frames:
            payload = frame["payload"]
            self.assertEqual((frame["from"], payload["sender_pub"]), (ALICE, user_pub(ALICE)))
            self.assertTrue(crypto.verify_payload(user_key(ALICE), payload, frame["sig"]))
            preimage = crypto.public_preimage(payload["ciphertext"], ALICE, frame["ts"])
            self.assertTrue(crypto.pss_verify(user_key(ALICE), preimage, payload["content_sig"]))
            plain = crypto.oaep_decrypt(user_key(frame["to"]), payload["ciphertext"])
            self.assertEqual(plain, b"hello everyone")
        self.assertIn("[KEY] pinned the keys of 2 public channel members (first contact)", self.ui.lines)
        self.assertIn("[public] sent to 2 members: hello everyone", self.ui.lines)
        self.assertEqual(self.pins.user_key(BOB), user_pub(BOB))

    def test_all_splits_long_text_like_dms(self) -> None:
        from socp_tw.client.session import PART_RE

        self.members(ALICE, BOB)
        text = "é" * 400  # 800 bytes: two parts
        self.successResultOf(self.session.send_all(text))
        frames = self.sent_public()
        self.assertEqual(len(frames), 2)
        plains = [crypto.oaep_decrypt(user_key(BOB), f["payload"]["ciphertext"]).decode() for f in frames]
        self.assertTrue(all(PART_RE.match(p) for p in plains))
        self.assertIn(f"[public] sent to 1 members, 2 parts each: {text}", self.ui.lines)

    def test_all_with_nobody_else_or_no_membership(self) -> None:
        pending = self.session.send_all("anyone?")
        self.assertNoResult(pending)  # waits for the snapshot that follows a login
        self.clock.advance(10)
        self.successResultOf(pending)
        self.assertIn(
            "[ERROR] message not sent: the server has not told us the public channel's members", self.ui.lines
        )
        self.members(ALICE)
        self.successResultOf(self.session.send_all("anyone?"))
        self.assertIn("[public] nobody else is in the public channel: message not sent", self.ui.lines)
        self.assertEqual(self.sent_public(), [])

    def test_all_skips_a_member_whose_key_changed(self) -> None:
        self.pins.pin_user(BOB, user_pub(CAROL))
        self.members(ALICE, BOB, CAROL)
        self.successResultOf(self.session.send_all("careful"))
        self.assertEqual([f["to"] for f in self.sent_public()], [CAROL])
        self.assertIn(f"[WARNING] /all skips {BOB}: its key changed", self.ui.lines)
        self.assertTrue(any("THE KEY OF" in line and BOB in line for line in self.ui.lines))

    def incoming(self, sender: str, text: bytes, ts: int = 1_700_000_000_100, **over) -> dict:
        ciphertext = crypto.oaep_encrypt(user_key(ALICE).public_key(), text)
        payload = {
            "ciphertext": ciphertext,
            "content_sig": crypto.sign_content(
                user_key(sender), crypto.public_preimage(ciphertext, sender, ts)
            ),
            "sender": sender,
            "sender_pub": user_pub(sender),
        }
        payload.update(over)
        return payload

    def test_incoming_shown_exactly_once(self) -> None:
        payload = self.incoming(BOB, b"hi alice")
        self.push("MSG_PUBLIC_CHANNEL", payload, ts=1_700_000_000_100)
        self.push("MSG_PUBLIC_CHANNEL", payload, ts=1_700_000_000_100)  # a repeat on the way
        self.assertEqual(self.ui.lines.count(f"[public] {BOB}: hi alice"), 1)
        self.assertEqual(self.session.counters["public_duplicates"], 1)
        # The same text again is another message.
        self.push("MSG_PUBLIC_CHANNEL", self.incoming(BOB, b"hi alice", ts=7), ts=7)
        self.assertEqual(self.ui.lines.count(f"[public] {BOB}: hi alice"), 2)

    def test_incoming_multipart(self) -> None:
        from socp_tw.client.session import encode_dm_parts

        text = "z" * 1000
        parts = encode_dm_parts(text)
        for index, plain in reversed(list(enumerate(parts))):
            self.push("MSG_PUBLIC_CHANNEL", self.incoming(CAROL, plain, ts=100 + index), ts=100 + index)
        self.assertEqual(self.ui.lines[-1], f"[public] {CAROL}: {text}")
        self.assertEqual(self.session.counters["public_received"], 1)

    def test_incoming_forgeries_rejected(self) -> None:
        good = self.incoming(BOB, b"real")
        cases = [
            (self.incoming(BOB, b"x", content_sig=good["content_sig"]), {}, "invalid signature"),
            (good, {"key": test_key(1)}, "invalid server signature"),
            (good, {"to": CAROL}, "not addressed to you"),
            ({**good, "sender": "bob"}, {}, "no valid sender id"),
            ({k: v for k, v in good.items() if k != "ciphertext"}, {}, "malformed"),
        ]
        for payload, options, reason in cases:
            self.push("MSG_PUBLIC_CHANNEL", payload, **options)
            self.assertIn(reason, self.ui.lines[-1])
            self.assertTrue(self.ui.lines[-1].startswith("[WARNING] rejected public message"))
        self.assertFalse([line for line in self.ui.lines if line.startswith("[public]")])
        self.pins.pin_user(BOB, user_pub(CAROL))
        self.push("MSG_PUBLIC_CHANNEL", good, ts=1_700_000_000_100)  # genuine, but not the pinned key
        self.assertIn("signed by a key different", self.ui.lines[-1])

    def test_key_share(self) -> None:
        creator_pub = server_pub(A)
        [part] = make_key_parts(
            partial(crypto.sign_content, test_key(0)),
            creator_pub,
            [(ALICE, user_pub(ALICE)), (BOB, user_pub(BOB))],
            64,
        )
        payload = {**part, "creator_pub": creator_pub, "version": 3, "creator": A, "part": 0, "parts": 1}
        self.push("PUBLIC_CHANNEL_KEY_SHARE", payload)
        share = self.session.public_key_share
        self.assertEqual((share["version"], share["creator"]), (3, A))
        self.assertEqual(len(crypto.oaep_decrypt(user_key(ALICE), share["wrapped"])), 32)
        self.session.public_key_share = None
        for bad in (
            {**payload, "content_sig": part["content_sig"][::-1]},
            {**payload, "creator_pub": server_pub(B)},  # not our server's key though it says it made it
            {**payload, "shares": part["shares"][1:]},
        ):
            self.push("PUBLIC_CHANNEL_KEY_SHARE", bad)
        self.assertIsNone(self.session.public_key_share)
        self.assertEqual(self.session.counters["key_share_rejected"], 3)
