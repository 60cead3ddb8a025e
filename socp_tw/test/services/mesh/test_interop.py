"""Interoperation with other SOCP servers (docs/INTEROP.md), mesh side: one transcript per row.

The frames are the ones issue 15 observed from other implementations, made with test keys.
"""

from __future__ import annotations

import json

from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import crypto, wire
from socp_tw.bootstrap import BootstrapEntry
from socp_tw.services.mesh.refusals import REFUSAL_HOLD, SIGNED_REFUSALS
from socp_tw.services.router import Router
from socp_tw.test.keys import test_key, vector_key
from socp_tw.test.services.mesh.support import (
    ALICE,
    BOB,
    HERE,
    KEYS,
    S1,
    S2,
    USER,
    MeshTestCase,
    Node,
    TwoLinksTestCase,
    pub,
    user_pub,
)
from socp_tw.testing import FakeDialer, FakeLink
from socp_tw.testing.signing import verify_server_frame


class KeyInMetaOnlyTests(TwoLinksTestCase):
    """Row 1: USER_ADVERTISE {user_id, server_id, meta: {pubkey}} and {user_id, server_id, meta: {}}."""

    def pem_key(self, index: int = 6) -> str:
        return crypto.encode_public_key(crypto.load_public_key(user_pub(index)), pem=True)

    def test_key_only_in_meta_is_taken_and_pinned(self) -> None:
        payload = {"user_id": USER, "server_id": S1, "meta": {"pubkey": self.pem_key()}}
        data = self.frame("USER_ADVERTISE", S1, payload)
        self.receive(self.l1, data)
        entry = self.presence.lookup(USER)
        self.assertEqual((entry.server_id, entry.pubkey), (S1, self.pem_key()))
        self.assertIsNotNone(self.mesh._user_keys.lookup(USER))
        self.assertEqual(self.l2.frames(), [json.loads(data)])  # relayed unchanged

    def test_key_only_in_meta_still_meets_the_pin(self) -> None:
        self.receive(self.l1, self.advertise(S1))
        other = {"user_id": USER, "server_id": S2, "meta": {"pubkey": self.pem_key(7)}}
        self.receive(self.l2, self.frame("USER_ADVERTISE", S2, other))
        self.assertEqual(self.presence.lookup(USER).server_id, S1)
        self.assertEqual(self.mesh.counters["user_key_refused"], 1)

    def test_keyless_advert_records_the_location_only(self) -> None:
        data = self.frame("USER_ADVERTISE", S1, {"user_id": USER, "server_id": S1, "meta": {}})
        self.receive(self.l1, data)
        entry = self.presence.lookup(USER)
        self.assertEqual((entry.server_id, entry.pubkey), (S1, ""))
        self.assertIsNone(self.mesh._user_keys.lookup(USER))  # nothing pinned from no key
        self.assertEqual(self.l2.frames(), [json.loads(data)])
        self.assertEqual(self.mesh.counters["gossip.advertise_keyless"], 1)
        # A keyed advert later pins as usual.
        self.receive(self.l1, self.advertise(S1))
        self.assertEqual(self.presence.lookup(USER).pubkey, user_pub())
        self.assertIsNotNone(self.mesh._user_keys.lookup(USER))

    def test_keyless_advert_never_changes_a_pinned_key(self) -> None:
        self.receive(self.l1, self.advertise(S1))
        pin = self.mesh._user_keys.lookup(USER)
        moved = {"user_id": USER, "server_id": S2, "meta": {}}
        self.receive(self.l2, self.frame("USER_ADVERTISE", S2, moved))
        entry = self.presence.lookup(USER)
        self.assertEqual((entry.server_id, entry.pubkey), (S2, user_pub()))  # the pinned key stays
        self.assertEqual(self.mesh._user_keys.lookup(USER), pin)
        # And a keyed advert with another key is still refused after it.
        changed = {"user_id": USER, "server_id": S2, "pubkey": user_pub(7)}
        self.receive(self.l2, self.frame("USER_ADVERTISE", S2, changed))
        self.assertEqual(self.presence.lookup(USER).pubkey, user_pub())
        self.assertEqual(self.mesh.counters["user_key_refused"], 1)

    def test_keyless_advert_only_from_the_hosting_server(self) -> None:
        speaks_for_s1 = {"user_id": USER, "server_id": S1, "meta": {}}
        self.receive(self.l2, self.frame("USER_ADVERTISE", S2, speaks_for_s1))
        self.assertIsNone(self.presence.lookup(USER))
        self.assertEqual(self.mesh.counters["dropped.not_hosting_server"], 1)


class AnnounceMirrorsEncodingTests(MeshTestCase):
    """Row 2: after a WELCOME that carried the introducer's key as b64u(PEM), our SERVER_ANNOUNCE
    goes to that peer with our key as b64u(PEM), and to the other (DER) peers as DER."""

    def test_announce_mirrors_each_peers_encoding(self) -> None:
        der_peer = self.link_in(S2)
        der_peer.sent.clear()
        dialer = self.mesh.join("127.0.0.1", 9101)
        link = FakeLink("out-join")
        link.outgoing = True
        self.mesh.outgoing_opened(link, dialer)
        s1_pem = crypto.encode_public_key(test_key(KEYS[S1]), pem=True)
        payload = {
            "assigned_id": HERE,
            "servers": [{"server_id": S1, "host": "127.0.0.1", "port": 9101, "pubkey": s1_pem}],
        }
        self.receive(link, self.frame("SERVER_WELCOME", S1, payload, to=HERE))
        [to_s1] = [f for f in link.frames() if f["type"] == "SERVER_ANNOUNCE" and f["from"] == HERE]
        [to_s2] = [f for f in der_peer.frames() if f["type"] == "SERVER_ANNOUNCE" and f["from"] == HERE]
        self.assertEqual(to_s1["payload"]["pubkey"], crypto.encode_public_key(test_key(KEYS[HERE]), pem=True))
        self.assertEqual(to_s2["payload"]["pubkey"], pub(HERE))
        for frame in (to_s1, to_s2):
            self.assertTrue(verify_server_frame(frame, pub(HERE)))


class JoinTestCase(SynchronousTestCase):
    """A node dialling an introducer S1 (pinned in advance, or not)."""

    def setUp(self) -> None:
        self.clock = Clock()

    def start(self, pinned: bool) -> tuple[Node, FakeLink]:
        if pinned:
            entry = BootstrapEntry("127.0.0.1", 9101, pub(S1), test_key(KEYS[S1]).public_key())
            node = Node(self, HERE, self.clock, bootstrap=[entry])
        else:
            node = Node(self, HERE, self.clock, peers=[("127.0.0.1", 9101)])
        [dialer] = node.outgoing.dialers
        link = FakeLink("out-1")
        link.outgoing = True
        node.mesh.outgoing_opened(link, dialer)
        return node, link


class UnsignedWelcomeTests(JoinTestCase):
    """Row 7: SERVER_WELCOME without a ``sig`` field."""

    def unsigned_welcome(self, node: Node, link: FakeLink, key: str) -> None:
        payload = {
            "assigned_id": HERE,
            "servers": [{"server_id": S1, "host": "127.0.0.1", "port": 9101, "pubkey": key}],
        }
        data = json.dumps(
            {"type": "SERVER_WELCOME", "from": S1, "to": HERE, "ts": node.now_ms(), "payload": payload}
        ).encode()
        node.mesh.frame_received(link, wire.parse_envelope(data))

    def test_unsigned_welcome_with_the_pinned_key_is_accepted(self) -> None:
        node, link = self.start(pinned=True)
        self.unsigned_welcome(node, link, crypto.encode_public_key(test_key(KEYS[S1]), pem=True))
        self.assertEqual(node.mesh.connected_servers(), [S1])
        self.assertIsNone(link.closed)
        self.assertEqual(node.mesh.counters["welcome.unsigned"], 1)
        # Every later frame is verified with the pinned key.
        forged = {"user_id": USER, "server_id": S1, "pubkey": user_pub()}
        sig = crypto.sign_payload(test_key(KEYS[S2]), forged)
        node.mesh.frame_received(link, wire.Envelope("USER_ADVERTISE", S1, "*", node.now_ms(), forged, sig))
        self.assertIsNone(node.presence.lookup(USER))

    def test_unsigned_welcome_with_another_key_is_refused(self) -> None:
        node, link = self.start(pinned=True)
        self.unsigned_welcome(node, link, pub(S2))
        self.assertEqual(node.mesh.connected_servers(), [])
        self.assertEqual(link.closed[0], 1008)

    def test_unsigned_welcome_without_a_pin_pins_its_key(self) -> None:
        node, link = self.start(pinned=False)
        self.unsigned_welcome(node, link, pub(S1))
        self.assertEqual(node.mesh.connected_servers(), [S1])
        self.assertEqual(
            node.mesh.server_key(S1).public_numbers(), test_key(KEYS[S1]).public_key().public_numbers()
        )


class UnsignedLinkTests(MeshTestCase):
    """Row 9: SERVER_HELLO_LINK with ``"sig": ""`` and ``"to": "server"`` from a server pinned
    from its (equally unsigned) SERVER_HELLO_JOIN."""

    def unsigned(self, type_: str, payload: dict, to: str) -> FakeLink:
        link = FakeLink(f"in-{len(self.hub.links)}")
        self.hub.link_opened(link)
        self.receive(link, self.frame(type_, S1, payload, to=to, sig=""))
        return link

    def test_unsigned_link_with_the_pinned_key_is_accepted(self) -> None:
        join = self.unsigned("SERVER_HELLO_JOIN", self.address(S1), to="127.0.0.1:9000")
        self.assertEqual(self.mesh.connected_servers(), [S1])
        self.mesh.link_closed(join, "closed by the peer after WELCOME")
        link = self.unsigned("SERVER_HELLO_LINK", self.address(S1), to="server")
        self.assertEqual(self.mesh.connected_servers(), [S1])
        self.assertIsNone(link.closed)
        self.assertEqual(self.mesh.counters["link.unsigned"], 1)
        # Later frames on it are verified with the pinned key: a forged advert is dropped.
        forged = {"user_id": USER, "server_id": S1, "pubkey": user_pub()}
        self.receive(link, self.frame("USER_ADVERTISE", S1, forged, signer=S2))
        self.assertIsNone(self.presence.lookup(USER))
        self.receive(link, self.frame("USER_ADVERTISE", S1, forged))
        self.assertEqual(self.presence.lookup(USER).server_id, S1)


class LocalBobTestCase(TwoLinksTestCase):
    """Links from S1 and S2, a Router, and BOB online here."""

    def setUp(self) -> None:
        super().setUp()
        self.router = Router(self.presence, self.node.signer, self.mesh, clock=self.clock)
        self.bob_link = FakeLink("bob")
        self.presence.user_online_local(BOB, crypto.encode_public_key(vector_key("bob")), {}, self.bob_link)
        self.l1.sent.clear()
        self.l2.sent.clear()
        self.bob_link.sent.clear()

    def original_dm(self) -> dict:
        ts = self.now() - 50  # the user's own ts, kept inside
        ciphertext = crypto.oaep_encrypt(vector_key("bob").public_key(), b"hi")
        sig = crypto.sign_content(vector_key("alice"), crypto.dm_preimage(ciphertext, ALICE, BOB, ts))
        payload = {
            "ciphertext": ciphertext,
            "sender_pub": crypto.encode_public_key(vector_key("alice")),
            "content_sig": sig,
        }
        alice_sig = crypto.sign_payload(vector_key("alice"), payload)
        return {
            "type": "MSG_DIRECT",
            "from": ALICE,
            "to": BOB,
            "ts": ts,
            "payload": payload,
            "sig": alice_sig,
        }


class UserFromTests(LocalBobTestCase):
    """Row 10: a peer forwards user frames with ``from`` = the user's id."""

    def test_nested_server_deliver_is_attributed_to_the_link(self) -> None:
        original = self.original_dm()
        self.receive(
            self.l1, self.frame("SERVER_DELIVER", ALICE, {**original, "user_id": BOB}, to=HERE, signer=S1)
        )
        [deliver] = self.bob_link.frames()
        self.assertEqual(deliver["type"], "USER_DELIVER")
        self.assertEqual((deliver["payload"]["sender"], deliver["ts"]), (ALICE, original["ts"]))
        self.assertEqual(deliver["payload"]["ciphertext"], original["payload"]["ciphertext"])
        self.assertEqual(self.mesh.counters["user_from.attributed"], 1)
        self.assertEqual(self.mesh.counters["dropped.unknown_origin"], 0)

    def test_not_verified_by_the_links_key_is_dropped(self) -> None:
        original = self.original_dm()
        self.receive(
            self.l1, self.frame("SERVER_DELIVER", ALICE, {**original, "user_id": BOB}, to=HERE, signer=S2)
        )
        self.assertEqual(self.bob_link.sent, [])
        self.assertEqual(self.mesh.counters["verify_failed"], 1)

    def test_a_bad_content_sig_is_still_refused(self) -> None:
        original = self.original_dm()
        original["payload"]["content_sig"] = original["sig"]
        self.receive(
            self.l1, self.frame("SERVER_DELIVER", ALICE, {**original, "user_id": BOB}, to=HERE, signer=S1)
        )
        self.assertEqual(self.bob_link.sent, [])
        [error] = [f for f in self.l1.frames() if f["type"] == "ERROR"]  # answered to the link's server
        self.assertEqual((error["to"], error["payload"]["code"]), (S1, "INVALID_SIG"))

    def test_raw_public_message_is_attributed_to_the_link(self) -> None:
        ts = self.now()
        ciphertext = crypto.oaep_encrypt(vector_key("bob").public_key(), b"hi all")
        payload = {
            "ciphertext": ciphertext,
            "sender_pub": crypto.encode_public_key(vector_key("alice")),
            "content_sig": crypto.sign_content(
                vector_key("alice"), crypto.public_preimage(ciphertext, ALICE, ts)
            ),
        }
        self.receive(self.l1, self.frame("MSG_PUBLIC_CHANNEL", ALICE, payload, to=BOB, ts=ts, signer=S1))
        [message] = self.bob_link.frames()
        self.assertEqual((message["type"], message["payload"]["sender"]), ("MSG_PUBLIC_CHANNEL", ALICE))


class FirstFrameTests(MeshTestCase):
    """Row 11: ``server_id`` in each ``clients`` entry of our WELCOME; an announce-first link
    for a peer that never answers SERVER_HELLO_LINK (and back, for one that refuses that)."""

    def test_welcome_clients_carry_server_id(self) -> None:
        link = FakeLink("in-join")
        self.hub.link_opened(link)
        self.receive(link, self.frame("SERVER_HELLO_JOIN", S1, self.address(S1), to="127.0.0.1:9000"))
        [welcome] = [f for f in link.frames() if f["type"] == "SERVER_WELCOME"]
        self.assertTrue(welcome["payload"]["clients"])
        for entry in welcome["payload"]["clients"]:
            self.assertEqual(entry["server_id"], entry["user_id"])

    def redial(self, dialer) -> FakeLink:
        link = FakeLink(f"out-{len(self.mesh._links)}-{self.clock.seconds()}")
        link.outgoing = True
        self.mesh.outgoing_opened(link, dialer)
        return link

    def never_answered(self, link: FakeLink) -> None:
        self.clock.advance(self.mesh.dead_after + 1)
        self.assertIsNotNone(link.closed)
        self.mesh.link_closed(link, "no frame")

    def test_link_without_answer_falls_back_to_announce_first(self) -> None:
        link, dialer = self.link_out(S1)
        self.assertEqual(self.types(link)[:1], ["SERVER_HELLO_LINK"])
        self.never_answered(link)
        self.assertTrue(dialer.announce_first)
        again = self.redial(dialer)
        [first] = again.frames()[:1]
        self.assertEqual((first["type"], first["to"]), ("SERVER_ANNOUNCE", "*"))
        self.assertTrue(verify_server_frame(first, pub(HERE)))
        # A peer that refuses an announce-first link too: back to HELLO_LINK next time.
        self.never_answered(again)
        self.assertFalse(dialer.announce_first)
        self.assertEqual(self.types(self.redial(dialer))[:1], ["SERVER_HELLO_LINK"])

    def test_a_link_that_answered_keeps_its_first_frame(self) -> None:
        self.mesh.link_closed(self.link_in(S1), "bye")  # S1's key is pinned now
        link, dialer = self.link_out(S1)
        self.receive(link, self.frame("HEARTBEAT", S1, {}, to=HERE))
        self.mesh.link_closed(link, "peer restarted")
        self.assertFalse(getattr(dialer, "announce_first", False))


class KeylessWelcomeTests(JoinTestCase):
    """Row 8: a signed SERVER_WELCOME {assigned_id, clients: []} that names no key of its server."""

    def keyless_welcome(self, node: Node, link: FakeLink, signer: str = S1) -> None:
        payload = {"assigned_id": HERE, "clients": []}
        sig = crypto.sign_payload(test_key(KEYS[signer]), payload)
        node.mesh.frame_received(link, wire.Envelope("SERVER_WELCOME", S1, HERE, node.now_ms(), payload, sig))

    def announce(self, node: Node, link: FakeLink, signer: str = S1) -> None:
        payload = {"host": "127.0.0.1", "port": 9101, "pubkey": pub(signer)}
        sig = crypto.sign_payload(test_key(KEYS[signer]), payload)
        node.mesh.frame_received(
            link, wire.Envelope("SERVER_ANNOUNCE", S1, HERE, node.now_ms(), payload, sig)
        )

    def test_the_key_is_learnt_in_band(self) -> None:
        node, link = self.start(pinned=False)
        link.sent.clear()
        self.keyless_welcome(node, link)
        self.assertIsNone(link.closed)
        [ask] = link.frames()
        self.assertEqual((ask["type"], ask["to"]), ("SERVER_HELLO_LINK", S1))
        self.announce(node, link)
        self.assertEqual(node.mesh.connected_servers(), [S1])
        self.assertEqual(
            node.mesh.server_key(S1).public_numbers(), test_key(KEYS[S1]).public_key().public_numbers()
        )

    def test_a_welcome_the_announced_key_did_not_sign_is_refused(self) -> None:
        node, link = self.start(pinned=False)
        self.keyless_welcome(node, link, signer=S2)
        self.announce(node, link)
        self.assertEqual(node.mesh.connected_servers(), [])
        self.assertEqual(link.closed[0], 1008)

    def test_an_announce_not_signed_by_its_key_is_refused(self) -> None:
        node, link = self.start(pinned=False)
        self.keyless_welcome(node, link)
        payload = {"host": "127.0.0.1", "port": 9101, "pubkey": pub(S1)}
        sig = crypto.sign_payload(test_key(KEYS[S2]), payload)
        node.mesh.frame_received(
            link, wire.Envelope("SERVER_ANNOUNCE", S1, HERE, node.now_ms(), payload, sig)
        )
        self.assertEqual(node.mesh.connected_servers(), [])
        self.assertEqual(link.closed[0], 1008)


class NotToleratedTests(LocalBobTestCase):
    """Row 12: what cannot be tolerated is refused with a log line that names the departure."""

    def flat(self, original: dict, **changes) -> dict:
        payload = {"user_id": BOB, **original["payload"], "sender": ALICE}
        payload.update(changes)
        return {k: v for k, v in payload.items() if v is not None}

    def warned(self) -> list[str]:
        return [line for line in self.lines(LogLevel.warn) if "Refused SERVER_DELIVER" in line]

    def test_server_deliver_without_sender(self) -> None:
        original = self.original_dm()
        deliver = self.frame(
            "SERVER_DELIVER", S1, self.flat(original, sender=None), to=HERE, ts=original["ts"]
        )
        self.receive(self.l1, deliver)
        self.assertEqual(self.bob_link.sent, [])
        [line] = self.warned()
        self.assertIn("SERVER_DELIVER without sender: its content_sig cannot be checked", line)
        [error] = [f for f in self.l1.frames() if f["type"] == "ERROR"]
        self.assertEqual(error["payload"]["code"], "INVALID_SIG")

    def test_server_deliver_with_a_restamped_ts(self) -> None:
        original = self.original_dm()
        deliver = self.frame("SERVER_DELIVER", S1, self.flat(original), to=HERE, ts=original["ts"] + 7)
        self.receive(self.l1, deliver)
        self.assertEqual(self.bob_link.sent, [])
        [line] = self.warned()
        self.assertIn("Refused SERVER_DELIVER (MSG_DIRECT) from server", line)
        self.assertIn("re-stamped its ts", line)


class RefusalBackoffTests(MeshTestCase):
    """Operators: a peer that redials at once after every refusal (7,361 refusals in 47 s) costs
    a signature only for the first few a minute, is slowed down, and is logged once a minute."""

    def refused_hello(self) -> FakeLink:
        link = FakeLink(f"in-{len(self.hub.links)}-{self.clock.seconds()}")
        link.peer = "127.0.0.1:40000"
        self.hub.link_opened(link)
        self.receive(link, self.frame("SERVER_HELLO_LINK", S1, self.address(S1), to=HERE, signer=S2))
        return link

    def refused_lines(self) -> list[str]:
        return [line for line in self.lines(LogLevel.warn) if "Refused server link" in line]

    def test_refusals_back_off_per_address(self) -> None:
        free = SIGNED_REFUSALS
        signatures = self.node.workers.calls
        links = [self.refused_hello() for _ in range(free + 20)]
        self.assertEqual(self.node.workers.calls - signatures, free)  # one signed ERROR each, no more
        for link in links[:free]:
            self.assertEqual(self.types(link), ["ERROR"])
            self.assertIsNotNone(link.closed)
        held = links[free:]
        self.assertTrue(all(link.sent == [] and link.closed is None for link in held))
        # More frames on a held link are dropped, unanswered.
        self.receive(held[0], self.frame("SERVER_HELLO_LINK", S1, self.address(S1), to=HERE, signer=S2))
        self.assertEqual(held[0].sent, [])
        self.clock.advance(REFUSAL_HOLD)
        self.assertTrue(all(link.closed is not None and link.closed[0] == 1008 for link in held))
        self.assertEqual(self.mesh.counters["refused.backed_off"], 20)
        self.assertEqual(len(self.refused_lines()), 1)  # one line for the minute
        self.clock.advance(60)
        self.refused_hello()
        [_, line] = self.refused_lines()
        self.assertIn(f"({free + 20} refused links from 127.0.0.1 in the last minute)", line)

    def test_a_valid_hello_from_the_same_address_is_accepted(self) -> None:
        for _ in range(SIGNED_REFUSALS + 2):
            self.refused_hello()
        link = FakeLink("in-good")
        link.peer = "127.0.0.1:40001"
        self.hub.link_opened(link)
        self.receive(link, self.frame("SERVER_HELLO_LINK", S1, self.address(S1), to=HERE))
        self.assertEqual(self.mesh.connected_servers(), [S1])


class PeerRefusesOurGossipTests(LocalBobTestCase):
    """Operators: a peer answering our adverts with ERROR INVALID_SIG is a warning, once a minute."""

    def test_refused_gossip_is_a_warning_once_a_minute(self) -> None:
        for n in range(3):
            payload = {"code": "INVALID_SIG", "detail": f"bad signature on USER_ADVERTISE ({n})"}
            self.receive(self.l1, self.frame("ERROR", S1, payload, to=HERE))
        warnings = [line for line in self.lines(LogLevel.warn) if "refuses our USER_ADVERTISE" in line]
        self.assertEqual(len(warnings), 1, self.lines())
        self.assertIn(f"Server {S1} refuses our USER_ADVERTISE: ERROR INVALID_SIG", warnings[0])
        self.assertEqual(self.router.counters["peer_refuses_gossip"], 3)


class WordingTests(JoinTestCase):
    """Operators: the log says what happened, not a guess."""

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def setUp(self) -> None:
        super().setUp()
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def test_a_refused_welcome_is_not_a_link_closed_before_it(self) -> None:
        node, link = self.start(pinned=True)
        payload = {"assigned_id": HERE, "server_pub": pub(S2)}
        sig = crypto.sign_payload(test_key(KEYS[S2]), payload)
        node.mesh.frame_received(link, wire.Envelope("SERVER_WELCOME", S1, HERE, node.now_ms(), payload, sig))
        node.mesh.link_closed(link, "closed")
        joins = [line for line in self.lines() if line.startswith("Join through")]
        self.assertEqual(len(joins), 1, joins)
        self.assertIn("its SERVER_WELCOME was refused", joins[0])
        self.assertNotIn("before SERVER_WELCOME", joins[0])

    def test_a_dialled_link_is_up_once_it_answers(self) -> None:
        node = Node(self, HERE, self.clock)
        dialer = FakeDialer("127.0.0.1", 9101, S1)
        link = FakeLink("out-s1")
        link.outgoing = True
        node.mesh.outgoing_opened(link, dialer)
        self.assertIn(f"Link to server {S1} opened, up once it answers (outgoing, 127.0.0.1:1)", self.lines())
        self.assertNotIn(f"Link to server {S1} up (outgoing, 127.0.0.1:1)", self.lines())
