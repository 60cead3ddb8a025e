"""No silent loss between servers (services/delivery.py): every DM sent to another server is
confirmed, refused or reported to its sender as failed within a bounded time."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import wire
from socp_tw.interfaces import UserNotFound
from socp_tw.services.delivery import delivery_ref
from socp_tw.services.presence import Presence
from socp_tw.services.router import Router
from socp_tw.services.userkeys import UserKeys
from socp_tw.test.services.test_router import (
    ALICE,
    ALICE_PUB,
    BOB,
    BOB_PUB,
    CAROL,
    HERE,
    OTHER,
    THIRD,
    TS,
    dm_fields,
    make_signer,
)
from socp_tw.testing import FakeLink, FakePeerLinks


class OriginSideTests(SynchronousTestCase):
    """Alice (here) sends Carol (on OTHER) a DM."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.presence = Presence(HERE)
        self.peers = FakePeerLinks([OTHER, THIRD])
        self.router = Router(self.presence, make_signer(), self.peers, clock=self.clock)
        self.alice_link = FakeLink("alice", "user", ALICE)
        self.presence.user_online_local(ALICE, ALICE_PUB, {}, self.alice_link)
        self.presence.user_online_remote(CAROL, OTHER, BOB_PUB, {})
        self.fields = dm_fields(recipient=CAROL)
        self.ref = delivery_ref(self.fields["content_sig"])

    def send(self) -> None:
        self.router.route("MSG_DIRECT", CAROL, self.fields, TS, ALICE, ALICE_PUB)

    def ack(self, refs: list, origin: str = OTHER) -> None:
        payload = {"msg_ref": "SERVER_DELIVER", "delivered": refs}
        self.peers.deliver(wire.Envelope("ACK", origin, HERE, TS, payload, "s"))

    def errors(self) -> list[dict]:
        return [f["payload"] for f in self.alice_link.frames() if f["type"] == "ERROR"]

    def test_confirmed_dm_reports_nothing(self) -> None:
        self.peers.acking.add(OTHER)
        self.send()
        self.assertEqual(len(self.router.deliveries), 1)
        self.ack([self.ref])
        self.assertEqual(len(self.router.deliveries), 0)
        self.clock.advance(60)
        self.assertEqual(self.errors(), [])
        self.assertEqual(self.peers.unresponsive_calls, [])

    def test_unconfirmed_dm_is_reported_once_with_its_ts(self) -> None:
        self.peers.acking.add(OTHER)
        self.send()
        self.clock.advance(9.9)
        self.assertEqual(self.errors(), [])
        self.clock.advance(0.2)
        [error] = self.errors()
        self.assertEqual(error["code"], "TIMEOUT")
        self.assertEqual((error["msg_ref"], error["user_id"], error["ts"]), ("MSG_DIRECT", CAROL, TS))
        self.assertIn(OTHER, error["detail"])
        # The mesh is asked whether the peer is hung (silent since the DM left).
        self.assertEqual(self.peers.unresponsive_calls, [(OTHER, 0.0)])
        self.ack([self.ref])  # too late: nothing more is said
        self.clock.advance(60)
        self.assertEqual(len(self.errors()), 1)

    def test_only_the_target_or_the_recipients_host_may_confirm(self) -> None:
        self.peers.acking.add(OTHER)
        self.send()
        self.ack([self.ref], origin=THIRD)
        self.ack(["not-a-ref", 5, None])
        self.clock.advance(11)
        self.assertEqual([e["code"] for e in self.errors()], ["TIMEOUT"])
        self.assertEqual(self.router.deliveries.counters["ack_not_theirs"], 1)

    def test_a_server_that_never_confirms_but_is_alive_counts_as_delivered(self) -> None:
        self.send()
        self.peers.last_heard[OTHER] = 3.0
        self.clock.advance(11)
        self.assertEqual(self.errors(), [])
        self.assertEqual(self.router.deliveries.counters["assumed_delivered"], 1)

    def test_a_silent_server_that_never_confirms_is_reported_after_a_second_look(self) -> None:
        self.send()
        self.clock.advance(11)
        self.assertEqual(self.errors(), [])  # heartbeats come every 15 s: look again
        self.clock.advance(10)
        [error] = self.errors()
        self.assertEqual((error["code"], error["ts"]), ("TIMEOUT", TS))
        self.assertIn("unreachable", error["detail"])

    def test_no_route_at_all_fails_at_once(self) -> None:
        self.peers.unlink(OTHER)
        self.peers.unlink(THIRD)
        with self.assertRaises(UserNotFound):
            self.send()
        self.assertEqual(len(self.router.deliveries), 0)

    def test_pending_dms_are_bounded(self) -> None:
        self.router.deliveries.max_pending = 2
        for n in range(3):
            fields = dm_fields(recipient=CAROL, ts=TS + n)
            self.router.route("MSG_DIRECT", CAROL, fields, TS + n, ALICE, ALICE_PUB)
        self.assertEqual(len(self.router.deliveries), 2)
        [error] = self.errors()  # the oldest is reported rather than forgotten
        self.assertEqual(error["ts"], TS)

    def test_stopping_cancels_the_timers(self) -> None:
        self.peers.acking.add(OTHER)
        self.send()
        self.router.startService()
        self.router.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])


class HostingSideTests(SynchronousTestCase):
    """A DM from Alice (on OTHER) reaches Bob (here)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.presence = Presence(HERE)
        self.peers = FakePeerLinks([OTHER])
        self.keys = UserKeys()
        self.router = Router(self.presence, make_signer(), self.peers, clock=self.clock, user_keys=self.keys)
        self.bob_link = FakeLink("bob", "user", BOB)
        self.presence.user_online_local(BOB, BOB_PUB, {}, self.bob_link)

    def deliver(self, n: int = 0, sender_pub: str = ALICE_PUB) -> str:
        fields = dm_fields(ts=TS + n)
        payload = {"user_id": BOB, **fields, "sender": ALICE, "sender_pub": sender_pub}
        self.peers.deliver(wire.Envelope("SERVER_DELIVER", OTHER, HERE, TS + n, payload, "s"))
        return delivery_ref(fields["content_sig"])

    def test_deliveries_are_confirmed_in_one_batch(self) -> None:
        self.peers.acking.add(OTHER)
        refs = [self.deliver(n) for n in range(3)]
        self.assertEqual(len(self.bob_link.frames()), 3)
        self.assertEqual(self.peers.sent, [])
        self.clock.advance(0.1)
        [(server_id, ack)] = self.peers.sent_frames()
        self.assertEqual((server_id, ack["type"], ack["to"]), (OTHER, "ACK", OTHER))
        self.assertEqual(ack["payload"], {"msg_ref": "SERVER_DELIVER", "delivered": refs})

    def test_servers_that_did_not_ask_get_no_confirmation(self) -> None:
        self.deliver()
        self.clock.advance(1)
        self.assertEqual(self.peers.sent, [])  # strict in what we send

    def test_sender_pub_must_match_the_pinned_key(self) -> None:
        self.peers.acking.add(OTHER)
        self.keys.pin_advertised(ALICE, BOB_PUB, THIRD)  # Alice's id is pinned to another key
        ref = self.deliver()
        self.assertEqual(self.bob_link.frames(), [])
        self.clock.advance(1)
        [(_, error)] = self.peers.sent_frames()
        self.assertEqual((error["type"], error["payload"]["code"]), ("ERROR", "INVALID_SIG"))
        self.assertIn("pinned", error["payload"]["detail"])
        self.assertEqual(error["payload"]["ref"], ref)  # the origin can tell which DM failed
