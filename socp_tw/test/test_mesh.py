"""The mesh service (PROTOCOL.md §4) with fake links, synchronous signing and task.Clock.

Peers are simulated by signing frames with their own test keys and handing them to
the mesh the way the hub (incoming links) or the peer protocol (outgoing links) do.
The multi-hop tests wire three real meshes together in memory.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from socp_tw import crypto, wire
from socp_tw.bootstrap import BootstrapEntry, BootstrapError, load_bootstrap, parse_bootstrap
from socp_tw.identity import ServerIdentity
from socp_tw.interfaces import IPeerLinks
from socp_tw.services.hub import Hub
from socp_tw.services.mesh import PEERS_FILE, Mesh, PinStoreError, SeenCache
from socp_tw.services.presence import Presence
from socp_tw.services.router import Router
from socp_tw.services.status import StatusReporter
from socp_tw.signer import FrameSigner
from socp_tw.tap import Options, makeService
from socp_tw.test.keys import VECTORS, test_key, vector_id, vector_key
from socp_tw.test.servers import prepare_data_dir
from socp_tw.testing import (
    FakeDialer,
    FakeLink,
    FakeOutgoingLinks,
    FakePeerLinks,
    SynchronousWorkers,
    verify_server_frame,
)

BASE_MS = 1_700_000_000_000
# Ordered ids: LOW < HERE < S1 < S2 < S3 (the dial-race rule compares them).
LOW = "16fd2706-8baf-433b-82eb-8c7fada847da"
HERE = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
S1 = "6fa459ea-ee8a-4ca4-894e-db77e160355e"
S2 = "8c3e5a1b-2d4f-4e6a-9b7c-1d2e3f4a5b6c"
S3 = "9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
KEYS = {HERE: 0, S1: 1, S2: 2, S3: 3, LOW: 4}
ALICE = vector_id("alice")
BOB = vector_id("bob")
USER = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def pub(server_id: str) -> str:
    return crypto.encode_public_key(test_key(KEYS[server_id]))


def user_pub(index: int = 6) -> str:
    return crypto.encode_public_key(test_key(index))


class Node:
    """One server under test: signer, hub, presence and mesh on a shared Clock."""

    def __init__(
        self, case: SynchronousTestCase, server_id: str, clock: Clock, port: int = 9000, **kwargs
    ) -> None:
        self.server_id = server_id
        self.clock = clock
        self.now_ms = lambda: BASE_MS + int(clock.seconds() * 1000)
        key = test_key(KEYS[server_id])
        identity = ServerIdentity(server_id, key, crypto.encode_public_key(key))
        self.signer = FrameSigner(identity, SynchronousWorkers(), now_ms=self.now_ms)
        self.hub = Hub(self.signer)
        self.presence = Presence(server_id)
        kwargs.setdefault("advertise", ("127.0.0.1", port))
        self.mesh = Mesh(self.signer, self.hub, self.presence, reactor=clock, now_ms=self.now_ms, **kwargs)
        self.outgoing = FakeOutgoingLinks()
        self.mesh.set_outgoing(self.outgoing)
        self.mesh.startService()
        self.changes = 0
        self.mesh.add_change_observer(self.count_change)
        case.addCleanup(self.stop)

    def count_change(self) -> None:
        self.changes += 1

    def stop(self) -> None:
        if self.mesh.running:
            self.mesh.stopService()
        self.clock.advance(self.mesh.stop_timeout + 1)


class MeshTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.node = Node(self, HERE, self.clock)
        self.mesh = self.node.mesh
        self.hub = self.node.hub
        self.presence = self.node.presence

    def lines(self, level: LogLevel | None = None) -> list[str]:
        return [formatEvent(e) for e in self.events if level is None or e.get("log_level") == level]

    def now(self) -> int:
        return self.node.now_ms()

    def frame(
        self,
        type: str,
        from_: str,
        payload: dict,
        *,
        to: str = "*",
        ts: int | None = None,
        signer: str | None = None,
        sig: str | None = None,
    ) -> bytes:
        """A frame as server ``from_`` sends it, signed with ``signer``'s key (default: from_'s)."""
        if sig is None:
            sig = crypto.sign_payload(test_key(KEYS[signer or from_]), payload)
        return wire.encode_frame(type, from_, to, self.now() if ts is None else ts, payload, sig)

    def receive(self, link: FakeLink, data: bytes) -> None:
        """Deliver a frame the way the hub (incoming) or the peer protocol (outgoing) does."""
        envelope = wire.parse_envelope(data)
        if link.outgoing:
            self.mesh.frame_received(link, envelope)
        else:
            self.hub.frame_received(link, envelope)

    def address(self, server_id: str, port: int = 9100) -> dict:
        return {"host": "127.0.0.1", "port": port + KEYS[server_id], "pubkey": pub(server_id)}

    def link_in(self, server_id: str, link_id: str | None = None) -> FakeLink:
        """An incoming link identified by SERVER_HELLO_LINK from ``server_id``."""
        link = FakeLink(link_id or f"in-{server_id[:4]}-{len(self.hub.links)}")
        self.hub.link_opened(link)
        self.receive(link, self.frame("SERVER_HELLO_LINK", server_id, self.address(server_id), to=HERE))
        return link

    def link_out(self, server_id: str, link_id: str | None = None) -> tuple[FakeLink, FakeDialer]:
        """An outgoing link we dialled to a server we know (SERVER_HELLO_LINK sent on open)."""
        dialer = FakeDialer("127.0.0.1", 9100 + KEYS[server_id], server_id)
        link = FakeLink(link_id or f"out-{server_id[:4]}")
        link.outgoing = True
        self.mesh.outgoing_opened(link, dialer)
        return link, dialer

    def types(self, link: FakeLink) -> list[str]:
        return [f["type"] for f in link.frames()]


# -- seen_ids ------------------------------------------------------------------------------------


class SeenCacheTests(SynchronousTestCase):
    def test_key_ignores_sig_and_covers_payload(self) -> None:
        a = wire.Envelope("USER_REMOVE", S1, "*", 5, {"user_id": USER}, "sig-1")
        b = wire.Envelope("USER_REMOVE", S1, "*", 5, {"user_id": USER}, "sig-2")
        c = wire.Envelope("USER_REMOVE", S1, "*", 5, {"user_id": ALICE}, "sig-1")
        self.assertEqual(SeenCache.key(a), SeenCache.key(b))
        self.assertNotEqual(SeenCache.key(a), SeenCache.key(c))
        self.assertNotEqual(
            SeenCache.key(a), SeenCache.key(wire.Envelope("USER_REMOVE", S1, "*", 6, {"user_id": USER}))
        )

    def test_bounded_by_age(self) -> None:
        clock = Clock()
        seen = SeenCache(clock, max_size=10, max_age=600)
        seen.add(("a",))
        clock.advance(599)
        self.assertIn(("a",), seen)
        seen.add(("b",))
        clock.advance(2)
        self.assertNotIn(("a",), seen)
        self.assertIn(("b",), seen)
        self.assertEqual(len(seen), 1)

    def test_a_repeat_does_not_keep_a_key_alive(self) -> None:
        clock = Clock()
        seen = SeenCache(clock, max_size=10, max_age=600)
        seen.add(("a",))
        clock.advance(599)
        seen.add(("a",))  # a replay loop must not refresh the entry
        clock.advance(2)
        self.assertNotIn(("a",), seen)

    def test_bounded_by_size(self) -> None:
        seen = SeenCache(Clock(), max_size=3, max_age=600)
        for name in "abcd":
            seen.add((name,))
        self.assertEqual(len(seen), 3)
        self.assertNotIn(("a",), seen)
        self.assertIn(("d",), seen)


# -- the IPeerLinks contract ----------------------------------------------------------------------


class PeerLinksContract:
    """What every IPeerLinks does; ``make()`` returns (peer_links, link_server(server_id))."""

    def make(self):
        raise NotImplementedError

    def test_interface_and_empty_mesh(self) -> None:
        peers, _ = self.make()
        self.assertTrue(verifyObject(IPeerLinks, peers))
        self.assertEqual(peers.connected_servers(), [])
        self.assertFalse(peers.send_to_server(S1, b"{}"))
        self.assertEqual(peers.broadcast(b"{}"), 0)
        self.assertIsNone(peers.server_key(S3))

    def test_linked_server(self) -> None:
        peers, link_server = self.make()
        changes = []
        peers.add_change_observer(lambda: changes.append(peers.connected_servers()))
        link_server(S1)
        self.assertEqual(peers.connected_servers(), [S1])
        self.assertEqual(changes, [[S1]])
        self.assertTrue(peers.send_to_server(S1, b'{"x":1}'))
        self.assertEqual(peers.broadcast(b'{"x":2}'), 1)

    def test_on_frame_registration(self) -> None:
        peers, _ = self.make()
        peers.on_frame("SERVER_DELIVER", lambda envelope, link: None)
        self.assertIsInstance(peers.counters, dict)


class MeshContractTests(PeerLinksContract, MeshTestCase):
    def make(self):
        return self.mesh, self.link_in


class FakePeerLinksContractTests(PeerLinksContract, SynchronousTestCase):
    def make(self):
        peers = FakePeerLinks()
        return peers, peers.link


# -- identification of incoming links --------------------------------------------------------------


class HelloLinkTests(MeshTestCase):
    def test_hello_link_pins_binds_and_greets(self) -> None:
        self.presence.user_online_local(USER, user_pub(), {"name": "u"}, FakeLink("user"))
        link = self.link_in(S1)
        self.assertEqual((link.role, link.identity), ("server", S1))
        self.assertEqual(self.mesh.connected_servers(), [S1])
        self.assertEqual(crypto.encode_public_key(self.mesh.server_key(S1)), pub(S1))
        self.assertEqual(self.mesh.server_address(S1), ("127.0.0.1", 9101))
        # Greeting: an immediate heartbeat, then our local users; everything signed.
        self.assertEqual(self.types(link), ["HEARTBEAT", "USER_ADVERTISE"])
        for frame in link.frames():
            self.assertEqual(frame["from"], HERE)
            self.assertTrue(verify_server_frame(frame, pub(HERE)))
        advertise = link.frames()[1]["payload"]
        self.assertEqual(advertise["server_id"], HERE)
        self.assertEqual(advertise["meta"], {"name": "u", "pubkey": user_pub()})
        self.assertIn(f"Link to server {S1} up (incoming, 127.0.0.1:1)", self.lines())
        self.assertTrue(
            any(f"Pinned key {crypto.fingerprint(pub(S1))} for server {S1}" in x for x in self.lines())
        )
        self.assertEqual(self.node.changes, 1)
        # Later frames of the link reach the mesh directly (hub.bind).
        self.receive(link, self.frame("NO_SUCH_THING", S1, {}, to=HERE))
        self.assertEqual(link.frames()[-1]["payload"]["code"], "UNKNOWN_TYPE")

    def assert_refused(self, link: FakeLink, code: str) -> None:
        self.assertEqual(link.frames()[-1]["type"], "ERROR")
        self.assertEqual(link.frames()[-1]["payload"]["code"], code)
        self.assertEqual(link.closed[0], 1008)
        self.assertEqual(self.mesh.connected_servers(), [])

    def hello(self, server_id: str, payload: dict, **kwargs) -> FakeLink:
        link = FakeLink(f"in-{len(self.hub.links)}")
        self.hub.link_opened(link)
        self.receive(link, self.frame("SERVER_HELLO_LINK", server_id, payload, to=HERE, **kwargs))
        return link

    def test_changed_key_is_refused_loudly(self) -> None:
        self.link_in(S1)
        link = self.hello(S1, self.address(S2), signer=S2)
        self.assertEqual(link.frames()[-1]["payload"]["code"], "BAD_KEY")
        self.assertEqual(link.closed[0], 1008)
        self.assertEqual(self.mesh.counters["key_refused"], 1)
        [error] = self.lines(LogLevel.error)
        self.assertIn(f"REFUSED changed key for server {S1}", error)
        self.assertIn(crypto.fingerprint(pub(S2)), error)
        # The original link is untouched.
        self.assertEqual(self.mesh.connected_servers(), [S1])

    def test_bad_keys_are_refused(self) -> None:
        for case in VECTORS["bad_keys"]:
            link = self.hello(S1, {**self.address(S1), "pubkey": case["pubkey"]}, sig="")
            self.assert_refused(link, "BAD_KEY")

    def test_signature_must_match_the_offered_key(self) -> None:
        link = self.hello(S1, self.address(S1), signer=S2)
        self.assert_refused(link, "INVALID_SIG")

    def test_unsigned_hello_is_trust_on_first_use_only(self) -> None:
        link = self.hello(S1, self.address(S1), sig="")
        self.assertEqual(self.mesh.connected_servers(), [S1])
        self.mesh.link_closed(link, "bye")
        again = self.hello(S1, self.address(S1), sig="")
        self.assert_refused(again, "INVALID_SIG")

    def test_own_id_and_own_key_are_refused(self) -> None:
        self.assert_refused(self.hello(HERE, self.address(HERE)), "BAD_FRAME")
        self.assert_refused(self.hello(S1, {**self.address(S1), "pubkey": pub(HERE)}, sig=""), "BAD_KEY")

    def test_malformed_hello_payloads(self) -> None:
        good = self.address(S1)
        for payload, code in (
            ({**good, "host": "bad host!"}, "BAD_FIELD"),
            ({**good, "port": 70000}, "BAD_FIELD"),
            ({**good, "port": True}, "BAD_FIELD"),
            ({"host": "127.0.0.1", "port": 1}, "MISSING_FIELD"),
        ):
            self.assert_refused(self.hello(S1, payload), code)
        # A port written as a string is tolerated.
        self.hello(S1, {**good, "port": "9101"})
        self.assertEqual(self.mesh.connected_servers(), [S1])

    def test_announce_as_first_frame(self) -> None:
        self.link_in(S2)
        link = FakeLink("in-ann")
        self.hub.link_opened(link)
        self.receive(link, self.frame("SERVER_ANNOUNCE", S1, self.address(S1)))
        self.assertEqual(self.mesh.connected_servers(), [S1, S2])
        self.assertIn(f"Server announced: {S1}", self.lines())


class BootstrapPinTests(SynchronousTestCase):
    def test_bootstrap_address_key_is_enforced(self) -> None:
        clock = Clock()
        entry = BootstrapEntry("127.0.0.1", 9101, pub(S1), test_key(KEYS[S1]).public_key())
        node = Node(self, HERE, clock, bootstrap=[entry])
        # The introducer is dialled with SERVER_HELLO_JOIN...
        [dialer] = node.outgoing.dialers
        self.assertEqual(
            (dialer.host, dialer.port, dialer.join, dialer.resumed), ("127.0.0.1", 9101, True, [0.0])
        )
        # ...and nobody else may claim its address with another key.
        link = FakeLink("in-1")
        node.hub.link_opened(link)
        payload = {"host": "127.0.0.1", "port": 9101, "pubkey": pub(S2)}
        sig = crypto.sign_payload(test_key(KEYS[S2]), payload)
        node.hub.frame_received(link, wire.Envelope("SERVER_HELLO_LINK", S2, HERE, 1, payload, sig))
        self.assertEqual(link.closed[0], 1008)

    def test_bootstrap_server_id_is_pinned_in_advance(self) -> None:
        entry = BootstrapEntry("127.0.0.1", 9101, pub(S1), test_key(KEYS[S1]).public_key(), S1)
        node = Node(self, HERE, Clock(), bootstrap=[entry])
        self.assertEqual(crypto.encode_public_key(node.mesh.server_key(S1)), pub(S1))


# -- the join, introducer side ---------------------------------------------------------------------


class JoinTests(MeshTestCase):
    def join(self, from_: str, key_of: str = S1, sig: str | None = None) -> FakeLink:
        link = FakeLink(f"in-join-{len(self.hub.links)}")
        self.hub.link_opened(link)
        payload = self.address(key_of)
        if sig is None:
            sig = crypto.sign_payload(test_key(KEYS[key_of]), payload)
        self.receive(
            link, wire.encode_frame("SERVER_HELLO_JOIN", from_, "127.0.0.1:9000", self.now(), payload, sig)
        )
        return link

    def test_welcome_lists_us_and_live_servers(self) -> None:
        self.link_in(S2)
        link = self.join(S1)
        self.assertEqual(link.identity, S1)
        welcome = link.frames()[0]
        self.assertEqual((welcome["type"], welcome["from"], welcome["to"]), ("SERVER_WELCOME", HERE, S1))
        self.assertTrue(verify_server_frame(welcome, pub(HERE)))
        payload = welcome["payload"]
        self.assertEqual(payload["assigned_id"], S1)
        servers = {s["server_id"]: s for s in payload["servers"]}
        self.assertEqual(set(servers), {HERE, S2})
        self.assertEqual(
            servers[HERE],
            {
                "server_id": HERE,
                "host": "127.0.0.1",
                "port": 9000,
                "pubkey": pub(HERE),
                "ext": ["deliver-ack"],
            },
        )
        self.assertEqual(servers[S2]["port"], 9102)
        self.assertEqual({c["user_id"] for c in payload["clients"]}, {HERE, S2})
        # Then the link is a normal server link, and S2 is introduced to the joiner.
        self.assertEqual(self.types(link)[1], "HEARTBEAT")
        self.assertIn("SERVER_ANNOUNCE", self.types(link))
        self.assertEqual(self.mesh.connected_servers(), [S1, S2])
        lines = self.lines()
        self.assertIn(f"Server joining {S1}", lines)
        # Its SERVER_ANNOUNCE is logged and flooded on, not echoed.
        s2_link = self.mesh.link_to(S2)
        before = len(s2_link.sent)
        self.receive(link, self.frame("SERVER_ANNOUNCE", S1, self.address(S1)))
        self.assertLess(lines.index(f"Server joining {S1}"), self.lines().index(f"Server announced: {S1}"))
        self.assertEqual(s2_link.frames()[before]["type"], "SERVER_ANNOUNCE")
        self.assertEqual(s2_link.frames()[before]["from"], S1)
        self.assertNotIn(S1, [f["from"] for f in link.frames()])

    def test_auto_id_gets_a_fresh_one(self) -> None:
        link = self.join("auto")
        assigned = link.frames()[0]["payload"]["assigned_id"]
        self.assertTrue(wire.is_uuid4(assigned))
        self.assertEqual(self.mesh.connected_servers(), [assigned])

    def test_id_taken_by_another_key_gets_a_fresh_one(self) -> None:
        self.link_in(S1)
        link = self.join(S1, key_of=S2)
        assigned = link.frames()[0]["payload"]["assigned_id"]
        self.assertNotEqual(assigned, S1)
        self.assertEqual(self.mesh.counters["key_refused"], 1)
        self.assertTrue(any("REFUSED changed key" in x for x in self.lines(LogLevel.error)))

    def test_bad_signature_is_refused(self) -> None:
        link = self.join(S1, sig=crypto.sign_payload(test_key(KEYS[S2]), {"x": 1}))
        self.assertEqual(link.frames()[-1]["payload"]["code"], "INVALID_SIG")
        self.assertEqual(link.closed[0], 1008)

    def test_known_id_must_sign_its_join(self) -> None:
        self.link_in(S1)
        link = self.join(S1, sig="")  # S1's public key is no proof of being S1
        self.assertEqual(link.frames()[-1]["payload"]["code"], "INVALID_SIG")
        self.assertEqual(link.closed[0], 1008)
        # A first-time joiner may leave it unsigned (nothing to check it against yet).
        self.assertEqual(self.join(S2, key_of=S2, sig="").identity, S2)


# -- the join, joiner side ---------------------------------------------------------------------------


class WelcomeTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def start(self, **kwargs) -> tuple[Node, FakeLink, FakeDialer]:
        node = Node(self, HERE, self.clock, peers=[("127.0.0.1", 9101)], **kwargs)
        [dialer] = node.outgoing.dialers
        self.assertEqual((dialer.join, dialer.server_id, dialer.resumed), (True, None, [0.0]))
        link = FakeLink("out-1")
        link.outgoing = True
        node.mesh.outgoing_opened(link, dialer)
        return node, link, dialer

    def welcome(
        self, node: Node, link: FakeLink, payload: dict | None = None, signer: str = S1, sig=None
    ) -> None:
        if payload is None:
            payload = {
                "assigned_id": HERE,
                "servers": [
                    {"server_id": S1, "host": "127.0.0.1", "port": 9101, "pubkey": pub(S1)},
                    {"server_id": S2, "host": "127.0.0.1", "port": 9102, "pubkey": pub(S2)},
                ],
            }
        if sig is None:
            sig = crypto.sign_payload(test_key(KEYS[signer]), payload)
        node.mesh.frame_received(link, wire.Envelope("SERVER_WELCOME", S1, HERE, node.now_ms(), payload, sig))

    def test_join_flow(self) -> None:
        node, link, dialer = self.start()
        [hello] = link.frames()
        self.assertEqual(
            (hello["type"], hello["from"], hello["to"]), ("SERVER_HELLO_JOIN", HERE, "127.0.0.1:9101")
        )
        self.assertEqual(
            hello["payload"],
            {"host": "127.0.0.1", "port": 9000, "pubkey": pub(HERE), "ext": ["deliver-ack"]},
        )
        self.assertTrue(verify_server_frame(hello, pub(HERE)))
        lines = [formatEvent(e) for e in self.events]
        self.assertIn("Connected to peer ws://127.0.0.1:9101", lines)
        # Frames other than the WELCOME are ignored while joining.
        node.mesh.frame_received(link, wire.Envelope("HEARTBEAT", S1, HERE, 1, {}, ""))
        self.assertEqual(node.mesh.connected_servers(), [])
        self.welcome(node, link)
        self.assertEqual(node.mesh.connected_servers(), [S1])
        self.assertEqual((link.identity, dialer.server_id, dialer.join, dialer.healthy), (S1, S1, False, 1))
        self.assertEqual(
            node.mesh.server_key(S2).public_numbers(), test_key(KEYS[S2]).public_key().public_numbers()
        )
        # Every listed server is dialled at once (SERVER_HELLO_LINK), and we announce ourselves.
        [s2] = node.outgoing.for_server(S2)
        self.assertEqual((s2.host, s2.port, s2.join, s2.resumed), ("127.0.0.1", 9102, False, [0.0]))
        announce = link.frames()[-1]
        self.assertEqual((announce["type"], announce["to"]), ("SERVER_ANNOUNCE", "*"))
        self.assertEqual(announce["payload"]["port"], 9000)
        # The pins are persisted only when a data dir is given; this node has none.
        self.assertIn("Joined the mesh through", " ".join(formatEvent(e) for e in self.events))

    def test_assigned_id_is_adopted(self) -> None:
        node, link, _ = self.start()
        payload = {
            "assigned_id": S3,
            "clients": [{"user_id": S1, "host": "127.0.0.1", "port": 9101, "pubkey": pub(S1)}],
        }
        self.welcome(node, link, payload)
        self.assertEqual((node.mesh.server_id, node.signer.server_id, node.presence.server_id), (S3, S3, S3))
        self.assertEqual(link.frames()[-1]["from"], S3)
        warnings = [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.warn]
        self.assertTrue(any(f"assigned us the id {S3}" in w for w in warnings), warnings)

    def test_welcome_with_server_pub_only(self) -> None:
        node, link, _ = self.start()
        self.welcome(node, link, {"assigned_id": HERE, "server_pub": pub(S1), "snapshot": {"x": 1}})
        self.assertEqual(node.mesh.connected_servers(), [S1])

    def test_welcome_without_key_is_refused(self) -> None:
        node, link, _ = self.start()
        self.welcome(node, link, {"assigned_id": HERE, "servers": []})
        self.assertEqual(link.closed[0], 1008)
        self.assertEqual(node.mesh.connected_servers(), [])

    def test_welcome_signed_by_another_key_than_the_bootstrap_pin(self) -> None:
        entry = BootstrapEntry("127.0.0.1", 9101, pub(S1), test_key(KEYS[S1]).public_key())
        node = Node(self, HERE, self.clock, bootstrap=[entry])
        [dialer] = node.outgoing.dialers
        link = FakeLink("out-1")
        link.outgoing = True
        node.mesh.outgoing_opened(link, dialer)
        payload = {
            "assigned_id": HERE,
            "servers": [{"server_id": S1, "host": "h", "port": 1, "pubkey": pub(S2)}],
        }
        self.welcome(node, link, payload, signer=S2)
        self.assertEqual(link.closed[0], 1008)
        self.assertEqual(node.mesh.connected_servers(), [])
        self.assertEqual(node.mesh.counters["key_refused"], 1)
        # An unsigned WELCOME is no better once the key is known in advance.
        link2 = FakeLink("out-2")
        link2.outgoing = True
        node.mesh.outgoing_opened(link2, dialer)
        self.welcome(node, link2, {"assigned_id": HERE, "server_pub": pub(S1)}, sig="")
        self.assertEqual(link2.closed[0], 1008)

    def test_welcome_when_already_linked_by_us(self) -> None:
        node, link, dialer = self.start()
        other = FakeLink("out-other")
        other.outgoing = True
        earlier = FakeDialer("localhost", 9101, S1)
        node.mesh.outgoing_opened(other, earlier)  # we linked to S1 by another name meanwhile
        self.welcome(node, link)
        self.assertIs(node.mesh.link_to(S1), other)
        self.assertEqual(link.closed, (1000, "duplicate link"))
        self.assertEqual(node.outgoing.removed, [dialer])
        self.assertEqual(node.outgoing.for_server(S2)[0].resumed, [0.0])  # the WELCOME still counted

    def test_no_welcome_in_time(self) -> None:
        node, link, _ = self.start()
        self.clock.advance(node.mesh.dead_after + 1)
        self.assertIsNotNone(link.closed)
        node.mesh.link_closed(link, "closed")
        self.assertTrue(any("Join through ws://127.0.0.1:9101 failed" in formatEvent(e) for e in self.events))

    def test_joining_ourselves(self) -> None:
        node, link, dialer = self.start()
        payload = {"assigned_id": S1, "server_pub": pub(HERE)}
        sig = crypto.sign_payload(test_key(KEYS[HERE]), payload)
        node.mesh.frame_received(link, wire.Envelope("SERVER_WELCOME", HERE, HERE, 1, payload, sig))
        self.assertEqual(node.outgoing.removed, [dialer])
        self.assertEqual(link.closed[0], 1008)


# -- frames on server links: verification, gossip, duplicates ------------------------------------------


class DispatchTests(MeshTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.l1 = self.link_in(S1)
        self.l2 = self.link_in(S2)
        self.l1.sent.clear()
        self.l2.sent.clear()

    def advertise(self, origin: str = S1, user: str = USER, server: str | None = None, **kwargs) -> bytes:
        payload = {
            "user_id": user,
            "server_id": server or origin,
            "pubkey": user_pub(),
            "meta": {"pubkey": user_pub()},
        }
        return self.frame("USER_ADVERTISE", origin, payload, **kwargs)

    def test_advertise_recorded_and_flooded_unchanged_never_echoed(self) -> None:
        data = self.advertise()
        self.receive(self.l1, data)
        entry = self.presence.lookup(USER)
        self.assertEqual((entry.server_id, entry.pubkey), (S1, user_pub()))
        self.assertEqual(self.l1.sent, [])
        [forwarded] = self.l2.frames()
        self.assertEqual(forwarded, json.loads(data))
        # The same frame again (a peer echoing gossip back) is absorbed.
        self.receive(self.l2, data)
        self.receive(self.l1, data)
        self.assertEqual(len(self.l2.sent), 1)
        self.assertEqual(self.l1.sent, [])
        self.assertEqual(self.mesh.counters["dropped.duplicate"], 2)

    def test_relayed_gossip_is_verified_with_the_origin_key(self) -> None:
        # From S1, arriving over S2's link: checked with S1's key, not S2's.
        self.receive(self.l2, self.advertise(S1))
        self.assertIsNotNone(self.presence.lookup(USER))
        self.assertEqual(len(self.l1.sent), 1)  # forwarded to the other link (S1's own)
        other = "2c1a4f6e-0c1f-4c39-9d0a-6f0f1e9b8a77"
        self.receive(self.l2, self.advertise(S1, user=other, signer=S2))
        self.assertIsNone(self.presence.lookup(other))
        self.assertEqual(self.mesh.counters["verify_failed"], 1)

    def test_forged_and_unsigned_frames_are_dropped_and_counted(self) -> None:
        self.receive(self.l1, self.advertise(signer=S2))
        self.receive(self.l1, self.advertise(sig=""))
        self.receive(self.l1, self.advertise(sig="not base64 at all!"))
        self.assertIsNone(self.presence.lookup(USER))
        self.assertEqual(self.l2.sent, [])
        self.assertEqual(self.mesh.counters["verify_failed"], 3)
        warnings = self.lines(LogLevel.warn)
        self.assertTrue(any("signature does not verify" in w for w in warnings))
        self.assertTrue(any("unsigned" in w for w in warnings))
        self.assertIsNone(self.l1.closed)
        # A forged frame does not poison seen_ids: the genuine one still gets through.
        self.receive(self.l1, self.advertise(ts=self.now()))
        self.assertIsNotNone(self.presence.lookup(USER))

    def test_a_peer_that_keeps_forging_is_cut_off(self) -> None:
        self.mesh.forged_window = 30.0  # shorter than the 45 s liveness timeout
        for i in range(self.mesh.forged_limit - 1):
            self.receive(self.l1, self.frame("HEARTBEAT", S1, {"n": i}, signer=S2))
        self.assertIsNone(self.l1.closed)
        self.clock.advance(self.mesh.forged_window + 1)  # old failures expire
        self.receive(self.l1, self.frame("HEARTBEAT", S1, {}, signer=S2))
        self.assertIsNone(self.l1.closed)
        for i in range(self.mesh.forged_limit - 1):
            self.receive(self.l1, self.frame("HEARTBEAT", S1, {"m": i}, signer=S2))
        self.assertEqual(self.l1.closed[0], 1008)
        self.assertEqual(self.mesh.counters["cut_off"], 1)
        self.assertEqual(self.mesh.connected_servers(), [S2])
        self.assertTrue(any("Cut off link" in x for x in self.lines(LogLevel.error)))

    def test_unknown_origin_is_dropped_without_penalty(self) -> None:
        self.receive(self.l1, self.advertise(S3))
        self.assertIsNone(self.presence.lookup(USER))
        self.assertEqual(self.mesh.counters["dropped.unknown_origin"], 1)
        self.assertEqual(self.mesh.counters["verify_failed"], 0)

    def test_own_frames_echoed_back_are_dropped(self) -> None:
        self.receive(self.l1, self.advertise(HERE, server=S1))
        self.assertIsNone(self.presence.lookup(USER))
        self.assertEqual(self.mesh.counters["dropped.own_frame"], 1)

    def test_stale_gossip_is_dropped(self) -> None:
        self.receive(self.l1, self.advertise(ts=self.now() - 601_000))
        self.receive(self.l1, self.advertise(ts=self.now() + 601_000))
        self.assertIsNone(self.presence.lookup(USER))
        self.assertEqual(self.mesh.counters["dropped.stale"], 2)

    def test_remove_is_conditional_and_flooded(self) -> None:
        self.receive(self.l1, self.advertise(S1))
        self.l2.sent.clear()
        remove = self.frame("USER_REMOVE", S2, {"user_id": USER, "server_id": S2})
        self.receive(self.l2, remove)
        self.assertIsNotNone(self.presence.lookup(USER))
        self.assertEqual(len(self.l1.sent), 1)
        self.receive(self.l1, self.frame("USER_REMOVE", S1, {"user_id": USER, "server_id": S1}))
        self.assertIsNone(self.presence.lookup(USER))
        self.assertEqual(len(self.l2.sent), 1)

    def test_bad_gossip_is_dropped(self) -> None:
        for payload in (
            {"user_id": "x", "server_id": S1, "pubkey": user_pub()},
            {"user_id": USER, "server_id": S1, "pubkey": "weak"},
            {"user_id": USER, "server_id": S1, "pubkey": user_pub(), "meta": "x"},
            {"user_id": USER, "server_id": HERE, "pubkey": user_pub()},  # places a user on us
        ):
            self.receive(self.l1, self.frame("USER_ADVERTISE", S1, payload))
        self.receive(self.l1, self.frame("USER_REMOVE", S1, {"user_id": USER}))
        self.assertIsNone(self.presence.lookup(USER))
        self.assertEqual(self.mesh.counters["dropped.bad_gossip"], 5)
        self.assertEqual(self.l2.sent, [])

    def test_big_meta_is_not_stored(self) -> None:
        payload = {"user_id": USER, "server_id": S1, "pubkey": user_pub(), "meta": {"junk": "x" * 5000}}
        self.receive(self.l1, self.frame("USER_ADVERTISE", S1, payload))
        self.assertEqual(self.presence.lookup(USER).meta, {"pubkey": user_pub()})
        self.assertEqual(json.loads(self.l2.sent[0])["payload"], payload)  # forwarded unchanged

    def test_unknown_types_answered_once_errors_and_acks_never(self) -> None:
        for _ in range(2):
            self.receive(self.l1, self.frame("SOMETHING_NEW", S1, {}, to=HERE))
        self.receive(self.l1, self.frame("ERROR", S1, {"code": "X", "detail": "y"}, to=HERE))
        self.receive(self.l1, self.frame("ACK", S1, {"msg_ref": "X"}, to=HERE))
        self.receive(self.l1, self.frame("HEARTBEAT", S1, {}, to=HERE))
        [answer] = self.l1.frames()
        self.assertEqual(answer["type"], "ERROR")
        self.assertEqual(
            (answer["payload"]["code"], answer["payload"]["msg_ref"]), ("UNKNOWN_TYPE", "SOMETHING_NEW")
        )
        self.assertEqual(answer["to"], S1)
        self.assertTrue(verify_server_frame(answer, pub(HERE)))
        # Another link gets its own single answer.
        self.receive(self.l2, self.frame("SOMETHING_NEW", S2, {}, to=HERE))
        self.assertEqual(len(self.l2.sent), 1)

    def test_malformed_frames_on_outgoing_links_are_only_logged(self) -> None:
        link, _ = self.link_out(S3)
        link.sent.clear()
        self.mesh.frame_rejected(link, wire.NotJSON("nope"))
        self.assertEqual(link.sent, [])
        self.assertEqual(self.mesh.counters["rejected.BAD_JSON"], 1)

    def test_hello_again_updates_the_address(self) -> None:
        dialer = self.node.outgoing.for_server(S1)[0]
        payload = {**self.address(S1), "port": 9999}
        self.receive(self.l1, self.frame("SERVER_HELLO_LINK", S1, payload, to=HERE))
        self.assertEqual(self.mesh.server_address(S1), ("127.0.0.1", 9999))
        self.assertEqual(dialer.retargeted, [("127.0.0.1", 9999)])


# -- presence gossip of local users -------------------------------------------------------------------


class LocalPresenceTests(MeshTestCase):
    def test_local_users_are_advertised_and_removed_everywhere(self) -> None:
        l1, l2 = self.link_in(S1), self.link_in(S2)
        l1.sent.clear()
        l2.sent.clear()
        calls = self.node.signer._workers.calls
        link = FakeLink("user")
        self.presence.user_online_local(USER, user_pub(), {"name": "x"}, link)
        self.assertEqual(self.node.signer._workers.calls, calls + 1)  # one signature for all links
        [a1], [a2] = l1.frames(), l2.frames()
        self.assertEqual(a1, a2)
        self.assertEqual((a1["type"], a1["to"]), ("USER_ADVERTISE", "*"))
        self.assertEqual(
            a1["payload"],
            {
                "user_id": USER,
                "server_id": HERE,
                "pubkey": user_pub(),
                "meta": {"name": "x", "pubkey": user_pub()},
            },
        )
        self.presence.user_offline_local(USER, link)
        self.assertEqual(l1.frames()[-1]["type"], "USER_REMOVE")
        self.assertEqual(l1.frames()[-1]["payload"], {"user_id": USER, "server_id": HERE})
        # Remote users are not ours to advertise.
        l1.sent.clear()
        self.presence.user_online_remote(ALICE, S1, user_pub(), {})
        self.assertEqual(l1.sent, [])

    def test_no_links_no_gossip(self) -> None:
        self.presence.user_online_local(USER, user_pub(), {}, FakeLink("user"))
        self.assertEqual(self.mesh.counters["forwarded"], 0)


# -- liveness ------------------------------------------------------------------------------------------


class LivenessTests(MeshTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.l1 = self.link_in(S1)
        self.receive(
            self.l1,
            self.frame("USER_ADVERTISE", S1, {"user_id": USER, "server_id": S1, "pubkey": user_pub()}),
        )
        self.l1.sent.clear()

    def test_heartbeat_every_interval(self) -> None:
        for _ in range(3):
            self.clock.advance(self.mesh.heartbeat_interval)
            self.receive(self.l1, self.frame("HEARTBEAT", S1, {}, to=HERE))
        self.assertEqual(self.types(self.l1), ["HEARTBEAT"] * 3)
        self.assertEqual(self.l1.frames()[0]["to"], S1)

    def test_silent_link_is_dead_after_45_s_and_its_users_withdrawn(self) -> None:
        self.assertEqual((self.mesh.dead_after, self.mesh.heartbeat_interval), (45.0, 15.0))
        self.clock.advance(30)
        self.receive(self.l1, self.frame("HEARTBEAT", S1, {}, to=HERE))  # any frame counts as life
        self.clock.advance(44)
        self.assertIsNone(self.l1.closed)
        self.clock.advance(1)
        self.assertEqual(self.l1.closed, (1001, "no heartbeat"))
        self.assertEqual(self.mesh.connected_servers(), [])
        self.assertEqual(self.node.outgoing.for_server(S1)[0].resumed, [0.0])  # redialled
        self.assertIsNotNone(self.presence.lookup(USER))  # grace for a quick relink
        self.clock.advance(self.mesh.withdraw_after)
        self.assertIsNone(self.presence.lookup(USER))
        self.assertTrue(any(f"Withdrew 1 users of server {S1}" in x for x in self.lines()))
        self.assertTrue(any("declared dead" in x for x in self.lines(LogLevel.warn)))
        self.assertEqual(self.mesh.counters["links_dead"], 1)

    def test_relink_within_the_grace_keeps_users(self) -> None:
        self.mesh.link_closed(self.l1, "connection lost")
        self.assertIn(f"Link to server {S1} down (connection lost)", self.lines())
        self.clock.advance(self.mesh.withdraw_after / 2)
        self.link_in(S1, "in-again")
        self.clock.advance(self.mesh.withdraw_after)
        self.assertIsNotNone(self.presence.lookup(USER))

    def test_signed_ctrl_close_withdraws_at_once(self) -> None:
        self.receive(self.l1, self.frame("CTRL_CLOSE", S1, {}, to=HERE))
        self.assertIsNone(self.presence.lookup(USER))
        self.assertEqual(self.mesh.connected_servers(), [])
        self.assertIsNone(self.l1.closed)  # the leaving peer closes; we only wait
        self.clock.advance(self.mesh.close_grace)
        self.assertEqual(self.l1.closed[0], 1000)

    def test_unsigned_ctrl_close_only_closes(self) -> None:
        self.receive(self.l1, b'{"type":"CTRL_CLOSE"}')
        self.assertEqual(self.mesh.connected_servers(), [])
        self.assertIsNotNone(self.presence.lookup(USER))
        self.mesh.link_closed(self.l1, "closed")
        self.clock.advance(self.mesh.withdraw_after)
        self.assertIsNone(self.presence.lookup(USER))

    def test_users_of_unlinked_servers_are_withdrawn(self) -> None:
        # Gossip about S2's user arrives through S1 while we have no link to S2.
        self.link_in(S2).sent.clear()
        self.mesh.link_closed(self.mesh.link_to(S2), "gone")
        other = "2c1a4f6e-0c1f-4c39-9d0a-6f0f1e9b8a77"
        self.receive(
            self.l1,
            self.frame("USER_ADVERTISE", S2, {"user_id": other, "server_id": S2, "pubkey": user_pub()}),
        )
        self.assertIsNotNone(self.presence.lookup(other))
        self.clock.advance(self.mesh.withdraw_after)
        self.assertIsNone(self.presence.lookup(other))
        self.assertIsNotNone(self.presence.lookup(USER))


# -- one link per pair ----------------------------------------------------------------------------------


class DuplicateLinkTests(MeshTestCase):
    def test_we_are_lower_our_dialled_link_wins(self) -> None:
        out, dialer = self.link_out(S1)
        incoming = self.link_in(S1)
        self.assertIs(self.mesh.link_to(S1), out)
        self.assertIsNone(incoming.closed)  # the dialler (S1) closes it...
        self.clock.advance(self.mesh.close_grace)
        self.assertEqual(incoming.closed[0], 1000)  # ...or we do, if it does not
        self.assertEqual(self.node.changes, 1)
        self.assertEqual(dialer.paused, 0)

    def test_incoming_first_then_ours_still_ours_wins(self) -> None:
        incoming = self.link_in(S1)
        dialer = self.node.outgoing.for_server(S1)[0]
        out, _ = self.link_out(S1)
        self.assertIs(self.mesh.link_to(S1), out)
        self.assertEqual(self.mesh.connected_servers(), [S1])
        self.clock.advance(self.mesh.close_grace)
        self.assertIsNotNone(incoming.closed)
        self.assertEqual(dialer.paused, 1)  # the registered dialer of S1 is paused while linked
        self.assertEqual([x for x in self.lines() if x.startswith(f"Link to server {S1} up")].__len__(), 1)

    def test_peer_is_lower_its_dialled_link_wins(self) -> None:
        incoming = self.link_in(LOW)
        out, dialer = self.link_out(LOW)
        self.assertIs(self.mesh.link_to(LOW), incoming)
        self.assertIsNone(out.closed)  # we dialled it: we close it, once its pending frames left
        self.clock.advance(0.25)
        self.assertEqual(out.closed, (1000, "duplicate link"))
        self.assertEqual(dialer.paused, 1)
        self.mesh.link_closed(out, "closed")
        self.assertEqual(self.mesh.connected_servers(), [LOW])

    def test_same_side_twice_a_live_link_is_kept(self) -> None:
        # A second HELLO_LINK while the first link is alive (a replayed HELLO, say: its signature
        # covers only the payload) does not displace it.
        old = self.link_in(S1, "in-old")
        self.clock.advance(self.mesh.heartbeat_interval / 2)
        self.receive(old, self.frame("HEARTBEAT", S1, {}, to=HERE))
        new = self.link_in(S1, "in-new")
        self.assertIs(self.mesh.link_to(S1), old)
        self.clock.advance(self.mesh.close_grace)
        self.assertEqual(new.closed[0], 1000)

    def test_same_side_twice_a_quiet_link_is_replaced(self) -> None:
        # The peer restarted: its old link is half-open here, quiet since it died.
        old = self.link_in(S1, "in-old")
        self.clock.advance(self.mesh.heartbeat_interval)
        new = self.link_in(S1, "in-new")
        self.assertIs(self.mesh.link_to(S1), new)
        self.mesh.link_closed(old, "closed")
        self.assertEqual(self.mesh.connected_servers(), [S1])
        self.assertEqual(self.mesh.counters["links_down"], 0)


# -- routing ----------------------------------------------------------------------------------------------


class RoutingTests(MeshTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.l1, self.l2 = self.link_in(S1), self.link_in(S2)
        self.l1.sent.clear()
        self.l2.sent.clear()
        self.handled: list[tuple[wire.Envelope, FakeLink]] = []
        self.mesh.on_frame("SERVER_DELIVER", lambda envelope, link: self.handled.append((envelope, link)))

    def deliver(self, origin: str, to: str, **kwargs) -> bytes:
        return self.frame(
            "SERVER_DELIVER", origin, {"user_id": USER, "ciphertext": "c", "sender": ALICE}, to=to, **kwargs
        )

    def test_send_to_server(self) -> None:
        self.assertTrue(self.mesh.send_to_server(S1, b"direct"))
        self.assertEqual((self.l1.sent, self.l2.sent), ([b"direct"], []))
        # No direct link: flooded, for the servers in between to pass on.
        self.assertTrue(self.mesh.send_to_server(S3, self.node.signer.frame("SERVER_DELIVER", S3, {"x": 1})))
        self.assertEqual(json.loads(self.l1.sent[-1]), self.l2.frames()[-1])
        self.assertEqual(self.mesh.counters["relay.flooded"], 1)
        self.assertFalse(self.mesh.send_to_server(HERE, b"x"))
        self.assertFalse(self.mesh.send_to_server("not-a-server", b"x"))

    def test_frames_for_us_reach_the_handler_once(self) -> None:
        data = self.deliver(S1, HERE)
        self.receive(self.l1, data)
        self.receive(self.l2, data)  # the same frame by another path
        [(envelope, link)] = self.handled
        self.assertEqual((envelope.from_, link), (S1, self.l1))

    def test_frames_for_a_linked_server_are_relayed_to_it(self) -> None:
        data = self.deliver(S1, S2)
        self.receive(self.l1, data)
        self.assertEqual(self.handled, [])
        self.assertEqual(self.l2.frames(), [json.loads(data)])
        self.assertEqual(self.l1.sent, [])

    def test_frames_for_an_unlinked_server_are_flooded_onwards(self) -> None:
        self.receive(self.l1, self.frame("SERVER_ANNOUNCE", S3, self.address(S3)))  # we know S3, no link
        self.l2.sent.clear()
        data = self.deliver(S1, S3)
        self.receive(self.l1, data)
        self.assertEqual(self.l2.frames(), [json.loads(data)])
        self.assertEqual(self.l1.sent, [])
        self.receive(self.l2, data)  # it comes back round: dropped
        self.assertEqual(len(self.l1.sent), 0)

    def test_forwarded_deliver_for_our_user_ends_here(self) -> None:
        # S1 thought USER was on S2 and forwarded the frame unchanged: its ``to`` names S2, but
        # USER is ours, so it is handled here rather than relayed on.
        self.presence.user_online_local(USER, user_pub(), {}, FakeLink("user"))
        self.l2.sent.clear()
        self.receive(self.l1, self.deliver(S1, S2))
        self.assertEqual(len(self.handled), 1)
        self.assertEqual(self.l2.sent, [])

    def test_forged_deliver_is_not_relayed(self) -> None:
        self.receive(self.l1, self.deliver(S1, S2, signer=S2))
        self.assertEqual((self.l2.sent, self.handled), ([], []))

    def test_handler_failure_is_contained(self) -> None:
        self.mesh.on_frame("SERVER_DELIVER", lambda envelope, link: 1 / 0)
        self.receive(self.l1, self.deliver(S1, HERE))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.mesh.connected_servers(), [S1, S2])


class PreparedWhileVerifyingTests(MeshTestCase):
    """``on_frame(prepare=...)``: a handler may start work (a signature) while the frame's own
    signature is checked; it gets that work only if the frame verifies."""

    class Token:
        def __init__(self, envelope: wire.Envelope) -> None:
            self.envelope, self.used, self.discarded = envelope, False, 0

        def use(self) -> None:
            self.used = True

        def discard(self) -> None:
            if not self.used:  # like PreparedDelivery: a no-op once the work was used
                self.discarded += 1

    deliver = RoutingTests.deliver

    def setUp(self) -> None:
        super().setUp()
        self.l1, self.l2 = self.link_in(S1), self.link_in(S2)
        self.handled: list[tuple] = []
        self.tokens: list[PreparedWhileVerifyingTests.Token] = []
        self.events: list[str] = []
        verify = self.mesh._verify

        def recording_verify(*args, **kwargs):
            self.events.append("verify")
            return verify(*args, **kwargs)

        self.patch(self.mesh, "_verify", recording_verify)

        def prepare(envelope: wire.Envelope) -> PreparedWhileVerifyingTests.Token:
            self.events.append("prepare")
            self.tokens.append(self.Token(envelope))
            return self.tokens[-1]

        def handle(envelope: wire.Envelope, link: FakeLink, token=None) -> None:
            self.events.append("handle")
            self.handled.append((envelope, link, token))
            if token is not None:
                token.use()

        self.mesh.on_frame("SERVER_DELIVER", handle, prepare=prepare)

    def test_prepared_before_the_check_and_handed_over_after_it(self) -> None:
        self.receive(self.l1, self.deliver(S1, HERE))
        self.assertEqual(self.events, ["prepare", "verify", "handle"])
        [(envelope, link, token)] = self.handled
        self.assertIs(token, self.tokens[0])
        self.assertEqual((token.used, token.discarded, link), (True, 0, self.l1))
        self.assertEqual(envelope.from_, S1)

    def test_a_forged_frame_never_reaches_the_handler_and_its_token_is_discarded(self) -> None:
        self.receive(self.l1, self.deliver(S1, HERE, signer=S2))
        self.assertEqual(self.events, ["prepare", "verify"])
        self.assertEqual((self.handled, self.tokens[0].discarded), ([], 1))
        self.assertEqual(self.mesh.counters["verify_failed"], 1)
        # That link sent a bad signature lately: its frames are checked before anything starts.
        self.events.clear()
        self.receive(self.l1, self.deliver(S1, HERE, ts=self.now() + 1))
        self.assertEqual(self.events, ["verify", "handle"])
        self.assertIsNone(self.handled[0][2])

    def test_preparing_resumes_once_the_bad_signature_is_out_of_the_window(self) -> None:
        self.receive(self.l1, self.deliver(S1, HERE, signer=S2))
        self.clock.advance(self.mesh.forged_window + 1)
        self.events.clear()
        self.receive(self.l1, self.deliver(S1, HERE, ts=self.now() + 1))
        self.assertEqual(self.events, ["prepare", "verify", "handle"])

    def test_only_frames_addressed_to_us_are_prepared(self) -> None:
        self.receive(self.l1, self.deliver(S1, S2))  # relayed on, not ours
        self.assertEqual((self.events, self.tokens), (["verify"], []))

    def test_a_duplicate_is_not_prepared_again(self) -> None:
        data = self.deliver(S1, HERE)
        self.receive(self.l1, data)
        self.receive(self.l2, data)
        self.assertEqual(self.events, ["prepare", "verify", "handle"])

    def test_a_failing_handler_discards_the_token(self) -> None:
        received = []

        def broken(envelope, link, token=None) -> None:
            received.append(token)
            raise ZeroDivisionError()

        tokens = []
        self.mesh.on_frame(
            "SERVER_DELIVER",
            broken,
            prepare=lambda envelope: tokens.append(self.Token(envelope)) or tokens[-1],
        )
        self.receive(self.l1, self.deliver(S1, HERE))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(received, tokens)  # handed to the handler, which failed before using it
        self.assertEqual(tokens[0].discarded, 1)

    def test_a_failing_prepare_is_contained(self) -> None:
        def broken(envelope):
            raise ZeroDivisionError()

        self.mesh.on_frame("SERVER_DELIVER", lambda envelope, link: self.handled.append(link), prepare=broken)
        self.receive(self.l1, self.deliver(S1, HERE))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.handled, [self.l1])  # handled as a frame with nothing prepared


# -- three real meshes in memory: multi-hop and gossip loops ---------------------------------------


class Pipe:
    """An in-memory connection between a dialling mesh and an accepting one."""

    def __init__(self, dialler: Node, acceptor: Node, name: str) -> None:
        self.out = FakeLink(f"out-{name}")
        self.out.outgoing = True
        self.inc = FakeLink(f"in-{name}")
        self.out.send = lambda frame: self._carry(frame, acceptor, self.inc, self.out)
        self.inc.send = lambda frame: self._carry(frame, dialler, self.out, self.inc)
        self.out.close = lambda code=1000, reason=None: self._close(dialler, acceptor)
        self.inc.close = self.out.close
        self.open = True
        acceptor.hub.link_opened(self.inc)
        dialer = FakeDialer("127.0.0.1", 9000 + KEYS[acceptor.server_id], None, join=True)
        dialler.outgoing.dialers.append(dialer)
        dialler.mesh._introducers.append(dialer)
        dialler.mesh.outgoing_opened(self.out, dialer)
        dialler.clock.advance(0)

    def _carry(self, frame, node: Node, to_link: FakeLink, from_link: FakeLink) -> None:
        if isinstance(frame, Deferred):
            frame.addCallback(lambda data: self._carry(data, node, to_link, from_link))
            return
        from_link.sent.append(frame)
        node.clock.callLater(0, self._arrive, frame, node, to_link)  # the network is asynchronous

    def _arrive(self, frame: bytes, node: Node, to_link: FakeLink) -> None:
        if not self.open:
            return
        envelope = wire.parse_envelope(frame)
        if to_link.outgoing:
            node.mesh.frame_received(to_link, envelope)
        else:
            node.hub.frame_received(to_link, envelope)

    def _close(self, dialler: Node, acceptor: Node) -> None:
        if self.open:
            self.open = False
            dialler.mesh.link_closed(self.out, "closed")
            acceptor.hub.link_closed(self.inc, "closed")


class MultiHopTests(SynchronousTestCase):
    """A - B - C with no A - C link (the mesh still forming)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.a = Node(self, S1, self.clock, port=9001)
        self.b = Node(self, S2, self.clock, port=9002)
        self.c = Node(self, S3, self.clock, port=9003)
        for node in (self.a, self.b, self.c):
            node.router = Router(node.presence, node.signer, node.mesh, clock=node.clock)
        Pipe(self.a, self.b, "ab")
        Pipe(self.c, self.b, "cb")
        self.alice_link = FakeLink("alice", "user", ALICE)
        self.bob_link = FakeLink("bob", "user", BOB)
        self.a.presence.user_online_local(
            ALICE, crypto.encode_public_key(vector_key("alice")), {}, self.alice_link
        )
        self.c.presence.user_online_local(BOB, crypto.encode_public_key(vector_key("bob")), {}, self.bob_link)
        self.clock.advance(0)

    def test_the_mesh_is_a_chain_and_presence_crosses_it(self) -> None:
        self.assertEqual(self.a.mesh.connected_servers(), [S2])
        self.assertEqual(self.c.mesh.connected_servers(), [S2])
        self.assertEqual(self.b.mesh.connected_servers(), [S1, S3])
        # A learnt C's key from C's flooded SERVER_ANNOUNCE and dials it (after a grace).
        self.assertIsNotNone(self.a.mesh.server_key(S3))
        self.assertTrue(self.a.outgoing.for_server(S3))
        self.assertEqual(self.a.presence.lookup(BOB).server_id, S3)
        self.assertEqual(self.c.presence.lookup(ALICE).server_id, S1)

    def test_dm_crosses_two_hops_exactly_once(self) -> None:
        ts = self.a.now_ms()
        ciphertext = wire.b64u_encode(b"\x02" * 512)
        sig = crypto.sign_content(vector_key("alice"), crypto.dm_preimage(ciphertext, ALICE, BOB, ts))
        alice_pub = crypto.encode_public_key(vector_key("alice"))
        fields = {"ciphertext": ciphertext, "content_sig": sig}
        self.assertEqual(self.a.router.route("MSG_DIRECT", BOB, fields, ts, ALICE, alice_pub), S3)
        self.clock.advance(0)
        delivered = [f for f in self.bob_link.frames() if f["type"] == "USER_DELIVER"]
        self.assertEqual(len(delivered), 1)
        self.assertEqual((delivered[0]["ts"], delivered[0]["payload"]["sender"]), (ts, ALICE))
        self.assertEqual(self.b.mesh.counters["relay.forwarded"], 1)

    def test_errors_find_their_way_back(self) -> None:
        # C no longer hosts BOB but A still thinks so: C answers USER_NOT_FOUND to A, through B.
        self.c.presence.user_offline_local(BOB, self.bob_link)
        self.clock.advance(0)
        self.a.presence.user_online_remote(BOB, S3, crypto.encode_public_key(vector_key("bob")), {})
        ts = self.a.now_ms()
        ciphertext = wire.b64u_encode(b"\x03" * 512)
        sig = crypto.sign_content(vector_key("alice"), crypto.dm_preimage(ciphertext, ALICE, BOB, ts))
        fields = {"ciphertext": ciphertext, "content_sig": sig}
        self.a.router.route(
            "MSG_DIRECT", BOB, fields, ts, ALICE, crypto.encode_public_key(vector_key("alice"))
        )
        self.clock.advance(0)
        errors = [f for f in self.alice_link.frames() if f["type"] == "ERROR"]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["payload"]["code"], "USER_NOT_FOUND")

    def test_gossip_in_a_loop_is_processed_once(self) -> None:
        Pipe(self.a, self.c, "ac")  # a triangle now
        self.assertEqual(self.c.mesh.connected_servers(), [S1, S2])
        user = "2c1a4f6e-0c1f-4c39-9d0a-6f0f1e9b8a77"
        before = {n: n.mesh.counters["gossip.advertise"] for n in (self.b, self.c)}
        self.a.presence.user_online_local(user, user_pub(), {}, FakeLink("u"))
        self.clock.advance(0)
        for node in (self.b, self.c):
            self.assertEqual(node.mesh.counters["gossip.advertise"] - before[node], 1)
            self.assertEqual(node.presence.lookup(user).server_id, S1)
        self.assertGreaterEqual(
            self.b.mesh.counters["dropped.duplicate"] + self.c.mesh.counters["dropped.duplicate"], 1
        )


# -- persistence --------------------------------------------------------------------------------------------


class PinPersistenceTests(SynchronousTestCase):
    def test_pins_survive_a_restart(self) -> None:
        data_dir = Path(self.mktemp())
        data_dir.mkdir()
        clock = Clock()
        node = Node(self, HERE, clock, data_dir=data_dir)
        link = FakeLink("in-1")
        node.hub.link_opened(link)
        payload = {"host": "127.0.0.1", "port": 9101, "pubkey": pub(S1)}
        sig = crypto.sign_payload(test_key(KEYS[S1]), payload)
        node.hub.frame_received(
            link, wire.Envelope("SERVER_HELLO_LINK", S1, HERE, node.now_ms(), payload, sig)
        )
        path = data_dir / PEERS_FILE
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        stored = json.loads(path.read_text())["servers"][S1]
        self.assertEqual((stored["pubkey"], stored["port"], stored["linked"]), (pub(S1), 9101, True))
        # A new process: the pin and the address are back, and the server is redialled.
        again = Node(self, HERE, clock, data_dir=data_dir)
        self.assertEqual(crypto.encode_public_key(again.mesh.server_key(S1)), pub(S1))
        [dialer] = again.outgoing.for_server(S1)
        self.assertEqual((dialer.port, dialer.join, dialer.resumed), (9101, False, [0.0]))

    def test_corrupt_pins_stop_the_start(self) -> None:
        data_dir = Path(self.mktemp())
        data_dir.mkdir()
        (data_dir / PEERS_FILE).write_text("{not json")
        with self.assertRaises(PinStoreError):
            Node(self, HERE, Clock(), data_dir=data_dir)
        (data_dir / PEERS_FILE).write_text(json.dumps({"servers": {S1: {"pubkey": "weak"}}}))
        with self.assertRaises(PinStoreError):
            Node(self, HERE, Clock(), data_dir=data_dir)


# -- the status line ----------------------------------------------------------------------------------------


class StatusTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.clock = Clock()
        self.peers = FakePeerLinks()
        self.presence = Presence(HERE)
        self.status = StatusReporter(self.peers, self.presence, interval=30, clock=self.clock)
        self.status.startService()
        self.addCleanup(self.status.stopService)

    def status_lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events if formatEvent(e).startswith("Status: ")]

    def test_periodic_and_on_change(self) -> None:
        self.clock.advance(30)
        self.assertEqual(
            self.status_lines(),
            ["Status: Known servers: (none) | users local=0 total=0 | links=0 | rejected=0"],
        )
        self.presence.user_online_local(USER, "k", {}, FakeLink())
        self.presence.user_online_remote(ALICE, S1, "k", {})
        self.peers.counters["verify_failed"] = 2
        self.peers.link(S2)
        self.peers.link(S1)  # two changes in one turn: one line
        self.clock.advance(0)
        self.assertEqual(
            self.status_lines()[-1],
            f"Status: Known servers: {S1} {S2} | users local=1 total=2 | links=2 | rejected=2",
        )
        self.assertEqual(len(self.status_lines()), 2)
        self.clock.advance(30)
        self.assertEqual(len(self.status_lines()), 3)

    def test_stopped_reporter_is_silent(self) -> None:
        self.status.stopService()
        self.peers.link(S1)
        self.clock.advance(60)
        self.assertEqual(self.status_lines(), [])


# -- the bootstrap file and the command line -----------------------------------------------------


class BootstrapFileTests(SynchronousTestCase):
    def test_yaml_and_json(self) -> None:
        yaml_text = f"- host: 127.0.0.1\n  port: 8765\n  pubkey: {pub(S1)}\n  server_id: {S1}\n"
        [entry] = parse_bootstrap(yaml_text)
        self.assertEqual(
            (entry.host, entry.port, entry.server_id, entry.url),
            ("127.0.0.1", 8765, S1, "ws://127.0.0.1:8765"),
        )
        json_text = json.dumps({"servers": [{"host": "::1", "port": "8766", "pubkey": pub(S2)}]})
        [entry] = parse_bootstrap(json_text)
        self.assertEqual(
            (entry.host, entry.port, entry.server_id, entry.url), ("::1", 8766, None, "ws://[::1]:8766")
        )

    def test_errors_name_the_entry(self) -> None:
        for text, message in (
            ("{{{", "not valid YAML"),
            ("just a string", "must hold a list"),
            ("- 5", "entry 0 must be a mapping"),
            (f"- {{host: h, port: 0, pubkey: {pub(S1)}}}", "entry 0: 'port'"),
            ("- {host: h, port: 1, pubkey: nope}", "entry 0: 'pubkey' is unusable"),
            (f"- {{host: h, port: 1, pubkey: {pub(S1)}, server_id: x}}", "'server_id' must be a UUID"),
            (
                f"- {{host: h, port: 1, pubkey: {pub(S1)}}}\n- {{host: h, port: 1, pubkey: {pub(S2)}}}",
                "two keys",
            ),
        ):
            with self.assertRaises(BootstrapError) as caught:
                parse_bootstrap(text)
            self.assertIn(message, str(caught.exception))

    def test_missing_file(self) -> None:
        with self.assertRaises(BootstrapError):
            load_bootstrap(self.mktemp())


class MeshOptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        config = Options()
        config.parseOptions(list(args))
        return config

    def test_defaults(self) -> None:
        config = self.parse()
        self.assertEqual(
            (
                config["status-interval"],
                config["advertise_address"],
                config["bootstrap_entries"],
                config["peer_addresses"],
            ),
            (30.0, None, [], []),
        )

    def test_mesh_options(self) -> None:
        path = Path(self.mktemp())
        path.write_text(json.dumps([{"host": "127.0.0.1", "port": 8765, "pubkey": pub(S1)}]))
        config = self.parse(
            "--peer", "ws://127.0.0.1:8765", "--peer", "ws://[::1]:9", "--bootstrap", str(path),
            "--status-interval", "2.5", "--advertise", "ws://chat.example.org:443",
        )  # fmt: skip
        self.assertEqual(config["peer_addresses"], [("127.0.0.1", 8765), ("::1", 9)])
        self.assertEqual(len(config["bootstrap_entries"]), 1)
        self.assertEqual(config["status-interval"], 2.5)
        self.assertEqual(config["advertise_address"], ("chat.example.org", 443))

    def test_bad_mesh_options(self) -> None:
        missing = self.mktemp()
        for args in (
            ["--bootstrap", missing],
            ["--status-interval", "soon"],
            ["--status-interval", "0"],
            ["--advertise", "http://x:1"],
            ["--advertise", "ws://x:0"],
            ["--peer", "127.0.0.1:8765"],
        ):
            self.assertRaises(usage.UsageError, self.parse, *args)

    def test_service_graph(self) -> None:
        data = prepare_data_dir(self, 0)
        top = makeService(
            self.parse("--bind", "ws://127.0.0.1:0", "--data-dir", data, "--peer", "ws://127.0.0.1:1")
        )
        names = [s.name for s in top]
        self.assertLess(names.index("listener"), names.index("status"))
        self.assertLess(names.index("presence"), names.index("mesh"))
        self.assertLess(names.index("mesh"), names.index("router"))
        self.assertLess(names.index("router"), names.index("listener"))
        self.assertLess(names.index("listener"), names.index("outgoing"))
        mesh = top.getServiceNamed("mesh")
        self.assertIs(top.getServiceNamed("outgoing").mesh, mesh)

    def test_corrupt_pins_exit(self) -> None:
        data = prepare_data_dir(self, 0)
        (Path(data) / PEERS_FILE).write_text("nope")
        with self.assertRaises(SystemExit) as caught:
            makeService(self.parse("--bind", "ws://127.0.0.1:0", "--data-dir", data))
        self.assertIn(PEERS_FILE, str(caught.exception))
