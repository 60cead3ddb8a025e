"""Identifying server links (services/mesh/handshake.py): HELLO_LINK, the join on both sides, id adoption."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import crypto, wire
from socp_tw.bootstrap import BootstrapEntry
from socp_tw.test.keys import VECTORS, test_key
from socp_tw.test.services.mesh.support import (
    HERE,
    KEYS,
    S1,
    S2,
    S3,
    USER,
    FakeDialer,
    MeshTestCase,
    Node,
    TwoLinksTestCase,
    pub,
    user_pub,
)
from socp_tw.testing import FakeLink, verify_server_frame

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
        # Once pinned, an unsigned one must carry the pinned key and not displace the live link
        # (INTEROP.md row 9).
        second = self.hello(S1, self.address(S1), sig="")
        self.assertEqual(second.frames()[-1]["payload"]["code"], "INVALID_SIG")
        self.assertEqual(self.mesh.link_to(S1), link)
        self.mesh.link_closed(link, "bye")
        self.assert_refused(self.hello(S1, {**self.address(S1), "pubkey": pub(S2)}, sig=""), "BAD_KEY")

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
                "ext": ["deliver-ack", "link-set"],
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
            {"host": "127.0.0.1", "port": 9000, "pubkey": pub(HERE), "ext": ["deliver-ack", "link-set"]},
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
        # Unsigned and keyless: nothing to check it with (a signed one asks: INTEROP.md row 8).
        node, link, _ = self.start()
        self.welcome(node, link, {"assigned_id": HERE, "servers": []}, sig="")
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
        # An unsigned WELCOME with another key than the pin is no better (INTEROP.md row 7).
        link2 = FakeLink("out-2")
        link2.outgoing = True
        node.mesh.outgoing_opened(link2, dialer)
        self.welcome(node, link2, {"assigned_id": HERE, "server_pub": pub(S2)}, sig="")
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


class HelloAgainTests(TwoLinksTestCase):
    def test_hello_again_updates_the_address(self) -> None:
        dialer = self.node.outgoing.for_server(S1)[0]
        payload = {**self.address(S1), "port": 9999}
        self.receive(self.l1, self.frame("SERVER_HELLO_LINK", S1, payload, to=HERE))
        self.assertEqual(self.mesh.server_address(S1), ("127.0.0.1", 9999))
        self.assertEqual(dialer.retargeted, [("127.0.0.1", 9999)])
