"""Routing (services/mesh/relay.py), and three real meshes in memory: multi-hop and gossip loops."""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import crypto, wire
from socp_tw.services.router import Router
from socp_tw.test.keys import vector_key
from socp_tw.test.services.mesh.support import (
    ALICE,
    BOB,
    HERE,
    KEYS,
    S1,
    S2,
    S3,
    USER,
    DeliverFrames,
    FakeDialer,
    MeshTestCase,
    Node,
    user_pub,
)
from socp_tw.testing import FakeLink

# -- routing ----------------------------------------------------------------------------------------------


class RoutingTests(DeliverFrames, MeshTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.l1, self.l2 = self.link_in(S1), self.link_in(S2)
        self.l1.sent.clear()
        self.l2.sent.clear()
        self.handled: list[tuple[wire.Envelope, FakeLink]] = []
        self.mesh.on_frame("SERVER_DELIVER", lambda envelope, link: self.handled.append((envelope, link)))

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
