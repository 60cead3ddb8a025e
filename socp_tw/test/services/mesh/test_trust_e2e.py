"""Federation trust on a running mesh (docs/SECURITY.md §"Who may say what"): a peer that joined
honestly cannot take over, remove or invent another server's users, a registered id cannot be
claimed through another server, and no DM to an unreachable server vanishes without an error.

Real servers A and B on 127.0.0.1; the hostile peer S is a raw WebSocket speaking server frames
signed with its own valid key; users are raw connections speaking frames by hand.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from socp_tw import crypto, wire
from socp_tw.test.keys import test_key
from socp_tw.test.servers import MeshServer, connect_raw, reactor, settled
from socp_tw.test.services.mesh.test_e2e import FAKE_ID, FakeServer
from socp_tw.test.services.users.test_users_e2e import RawUser
from socp_tw.test.waiting import poll_until, wait_until

VICTIM_KEY, ATTACKER_KEY, OTHER_KEY = 5, 4, 6
S_MADE_KEY = 2  # a key the hostile server made for its takeover


class TrustE2ETests(TestCase):
    timeout = 60

    @inlineCallbacks
    def setUp(self):
        self.a = MeshServer(self, 0)
        self.b = MeshServer(self, 1, ["--peer", self.a.url])
        yield wait_until(lambda: settled([self.a, self.b]), [self.a, self.b], what="A and B linked")

    @inlineCallbacks
    def user(self, server: MeshServer, key_index: int, user_id: str | None = None, proven: bool = False):
        factory = yield connect_raw(self, server.url)
        user = RawUser(self, server, factory, user_id or wire.new_uuid4(), test_key(key_index))
        if proven:
            answer, _ = yield user.hello()
        else:
            user.send("USER_HELLO", user.hello_payload(None))
            answer = yield user.receive()
        return user, answer

    @inlineCallbacks
    def next_of(self, user: RawUser, frame_type: str):
        while True:
            frame = yield user.factory.messages.get().addTimeout(15, reactor)
            if frame["type"] == frame_type:
                return frame

    def located(self, server: MeshServer, user_id: str, where: str | None) -> bool:
        entry = server.presence.lookup(user_id)
        return entry is None if where is None else entry is not None and entry.server_id == where

    @inlineCallbacks
    def hostile_peer(self) -> FakeServer:
        """S: joined A honestly with its own key (not one that says it confirms deliveries)."""
        client = yield connect_raw(self, self.a.url)
        hostile = FakeServer(client)
        hostile.hello()
        yield wait_until(lambda: FAKE_ID in self.a.mesh.connected_servers(), [self.a], what="S linked")
        return hostile

    @inlineCallbacks
    def victim_on_b(self) -> RawUser:
        victim, answer = yield self.user(self.b, VICTIM_KEY)
        self.assertEqual(answer["type"], "ACK")
        yield wait_until(
            lambda: self.located(self.a, victim.user_id, self.b.server_id),
            [self.a],
            what="A learns the victim",
        )
        return victim

    @inlineCallbacks
    def test_takeover_by_a_lying_peer_is_refused(self):
        victim = yield self.victim_on_b()
        hostile = yield self.hostile_peer()
        own_key = crypto.encode_public_key(test_key(S_MADE_KEY))
        payload = {"user_id": victim.user_id, "server_id": FAKE_ID, "pubkey": own_key, "meta": {}}
        hostile.send("USER_ADVERTISE", payload)
        yield wait_until(
            lambda: self.a.mesh.counters["user_key_refused"] == 1, [self.a], what="the takeover refused"
        )
        entry = self.a.presence.lookup(victim.user_id)
        self.assertEqual(
            (entry.server_id, entry.pubkey), (self.b.server_id, crypto.encode_public_key(victim.key))
        )
        # A user on A asking for the victim's key still gets the real one, at the real server.
        asker, _ = yield self.user(self.a, OTHER_KEY)
        asker.send("PUBKEY_REQUEST", {"user_id": victim.user_id})
        answer = yield self.next_of(asker, "PUBKEY_RESPONSE")
        self.assertEqual(answer["payload"]["server_id"], self.b.server_id)
        self.assertEqual(answer["payload"]["pubkey"], crypto.encode_public_key(victim.key))
        self.assertEqual(self.b.presence.lookup(victim.user_id).server_id, self.b.server_id)

    @inlineCallbacks
    def test_removal_and_invention_by_a_lying_peer_are_refused(self):
        victim = yield self.victim_on_b()
        hostile = yield self.hostile_peer()
        hostile.send("USER_REMOVE", {"user_id": victim.user_id, "server_id": self.b.server_id})
        invented = wire.new_uuid4()
        key = crypto.encode_public_key(test_key(S_MADE_KEY))
        hostile.send("USER_ADVERTISE", {"user_id": invented, "server_id": self.b.server_id, "pubkey": key})
        yield poll_until(lambda: self.a.mesh.counters["dropped.not_hosting_server"] == 2, "both dropped")
        self.assertTrue(self.located(self.a, victim.user_id, self.b.server_id))
        self.assertIsNone(self.a.presence.lookup(invented))
        self.assertIsNone(self.b.presence.lookup(invented))

    @inlineCallbacks
    def test_a_registered_id_cannot_be_claimed_through_another_server(self):
        victim = RawUser(
            self, self.a, (yield connect_raw(self, self.a.url)), wire.new_uuid4(), test_key(VICTIM_KEY)
        )
        victim.register()
        self.assertEqual((yield victim.receive("ACK"))["payload"]["msg_ref"], "USER_REGISTER")
        answer, _ = yield victim.hello()
        self.assertEqual(answer["type"], "ACK")
        yield wait_until(
            lambda: self.located(self.b, victim.user_id, self.a.server_id), [self.b], what="B learns"
        )
        victim.factory.proto.sendClose(1000)
        yield wait_until(lambda: self.located(self.b, victim.user_id, None), [self.b], what="victim gone")
        # First-use hello on B with the victim's id and the attacker's key: refused.
        attacker, answer = yield self.user(self.b, ATTACKER_KEY, user_id=victim.user_id)
        self.assertEqual((answer["type"], answer["payload"]["code"]), ("ERROR", "BAD_KEY"))
        # Registering the victim's id on B: refused too.
        attacker.register()
        error = yield attacker.error("NAME_IN_USE")
        self.assertIn(self.a.server_id, error["detail"])
        self.assertIsNone(self.a.presence.lookup(victim.user_id))
        # The victim itself, with its own key and a proof, may still move to B.
        _, answer = yield self.user(self.b, VICTIM_KEY, user_id=victim.user_id, proven=True)
        self.assertEqual(answer["type"], "ACK")
        yield wait_until(
            lambda: self.located(self.a, victim.user_id, self.b.server_id), [self.a], what="moved"
        )

    # -- no silent loss --------------------------------------------------------------------------

    @inlineCallbacks
    def linked_pair(self):
        alice, _ = yield self.user(self.a, OTHER_KEY)
        bob = yield self.victim_on_b()
        return alice, bob

    @inlineCallbacks
    def outcome_of(self, user: RawUser, ts: int):
        """The server's word on the DM sent with ``ts``: an ERROR naming it, or an ACK saying it is
        held (``queued``: store-and-forward, docs/MESH.md)."""
        while True:
            frame = yield user.factory.messages.get().addTimeout(15, reactor)
            payload = frame["payload"]
            if (
                frame["type"] in ("ERROR", "ACK")
                and payload.get("msg_ref") == "MSG_DIRECT"
                and payload.get("ts") == ts
            ):
                return frame

    @inlineCallbacks
    def test_dm_to_a_killed_server_is_held(self):
        alice, bob = yield self.linked_pair()
        self.a.service.getServiceNamed("router").deliveries.timeout = 1.0
        alice.dm(bob.user_id, b"just before", bob.key)  # delivered before the crash, or held
        yield self.b.crash()
        _, ts_after = alice.dm(bob.user_id, b"just after", bob.key)
        outcome = yield self.outcome_of(alice, ts_after)
        self.assertEqual((outcome["type"], outcome["payload"]["status"]), ("ACK", "queued"))
        self.assertEqual(outcome["payload"]["user_id"], bob.user_id)

    @inlineCallbacks
    def test_dm_to_a_hung_server_is_held_and_the_link_dropped(self):
        alice, bob = yield self.linked_pair()
        self.a.service.getServiceNamed("router").deliveries.timeout = 1.0
        self.a.mesh.heartbeat_interval = 60  # A's own heartbeats would not wake a hung peer anyway
        # B hangs: its process stops, TCP stays open (it reads nothing and sends nothing).
        a_link = self.a.mesh.link_to(self.b.server_id)
        b_link = self.b.mesh.link_to(self.a.server_id)
        b_link.transport.pauseProducing()
        b_link.send = lambda frame: None
        self.b.mesh._by_server[self.a.server_id].heartbeat.stop()
        yield poll_until(
            lambda: not self.a.mesh.heard_since(self.b.server_id, reactor.seconds() - 0.6),
            "B silent",
            timeout=5,
        )
        _, ts = alice.dm(bob.user_id, b"are you there?", bob.key)
        # Not confirmed in time: held for Bob (its server cannot be reached), and Alice told so.
        outcome = yield self.outcome_of(alice, ts)
        self.assertEqual(
            (outcome["type"], outcome["payload"]["status"], outcome["payload"]["reason"]),
            ("ACK", "queued", "unreachable"),
        )
        self.assertEqual(self.a.mesh.counters["links_unresponsive"], 1)
        # That link was given up (only this one connection of B hangs here, so A may relink).
        self.assertIsNot(self.a.mesh.link_to(self.b.server_id), a_link)

    @inlineCallbacks
    def test_confirmed_dm_reports_nothing(self):
        alice, bob = yield self.linked_pair()
        router = self.a.service.getServiceNamed("router")
        _, ts = alice.dm(bob.user_id, b"hello", bob.key)
        deliver = yield self.next_of(bob, "USER_DELIVER")
        self.assertEqual(deliver["ts"], ts)
        yield poll_until(lambda: router.deliveries.counters["confirmed"] == 1, "confirmed")
        self.assertEqual(len(router.deliveries), 0)
