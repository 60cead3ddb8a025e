"""Store-and-forward (services/holding/, docs/MESH.md "Held messages"), unit level with task.Clock:
holding and its bounds, hand-over here and to another server (confirmed, once, in order),
expiry, and a replayed held delivery refused at the recipient's server."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import wire
from socp_tw.services.delivery import delivery_ref
from socp_tw.services.holding import HeldMessages, MemoryHeldQueue
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
    TS,
    dm_fields,
    make_signer,
)
from socp_tw.testing import FakeLink, FakePeerLinks

DAY = 86400


class HoldingTests(SynchronousTestCase):
    """Alice is here; Bob (known, pinned) is offline; Carol is on OTHER."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(TS / 1000)
        self.presence = Presence(HERE)
        self.peers = FakePeerLinks([OTHER])
        self.peers.acking.add(OTHER)
        self.keys = UserKeys()
        self.keys.pin_local(BOB, BOB_PUB, registered=True)
        self.keys.pin_advertised(CAROL, BOB_PUB, OTHER)
        self.queue = MemoryHeldQueue()
        signer = make_signer()
        self.holding = HeldMessages(self.presence, self.peers, signer, self.keys, self.clock, self.queue)
        self.router = Router(
            self.presence, signer, self.peers, clock=self.clock, user_keys=self.keys, holding=self.holding
        )
        self.alice = FakeLink("alice", "user", ALICE)
        self.presence.user_online_local(ALICE, ALICE_PUB, {}, self.alice)

    def send(self, recipient: str = BOB, n: int = 0) -> dict:
        fields = dm_fields(recipient=recipient, ts=TS + n)
        self.assertEqual(self.router.route("MSG_DIRECT", recipient, fields, TS + n, ALICE, ALICE_PUB), "held")
        return fields

    def to_alice(self, kind: str) -> list[dict]:
        return [f["payload"] for f in self.alice.frames() if f["type"] == kind]

    def test_held_then_delivered_at_login_once_in_order(self) -> None:
        sent = [self.send(n=n) for n in range(3)]
        self.assertEqual([p["status"] for p in self.to_alice("ACK")], ["queued"] * 3)
        self.assertEqual(
            self.to_alice("ACK")[0],
            {"msg_ref": "MSG_DIRECT", "user_id": BOB, "ts": TS, "status": "queued", "reason": "offline"},
        )
        self.assertEqual(self.holding.held_for(BOB), 3)
        bob = FakeLink("bob", "user", BOB)
        self.presence.user_online_local(BOB, BOB_PUB, {}, bob)
        delivered = bob.frames()
        self.assertEqual([f["type"] for f in delivered], ["USER_DELIVER"] * 3)
        self.assertEqual([f["ts"] for f in delivered], [TS, TS + 1, TS + 2])  # the sender's ts
        self.assertEqual([f["payload"]["content_sig"] for f in delivered], [s["content_sig"] for s in sent])
        self.assertTrue(
            all(f["payload"]["held"] is True and f["payload"]["sender"] == ALICE for f in delivered)
        )
        self.assertEqual([p["status"] for p in self.to_alice("ACK")], ["queued"] * 3 + ["delivered"] * 3)
        self.assertEqual((self.holding.held_for(BOB), self.holding.total, self.queue.rows), (0, 0, []))
        self.presence.user_offline_local(BOB)
        self.presence.user_online_local(BOB, BOB_PUB, {}, FakeLink("bob2", "user", BOB))
        self.assertEqual(self.holding.counters["delivered"], 3)  # exactly once

    def test_a_user_nobody_has_seen_is_not_found(self) -> None:
        from socp_tw.interfaces import UserNotFound

        with self.assertRaises(UserNotFound):
            stranger = wire.new_uuid4()
            self.router.route("MSG_DIRECT", stranger, dm_fields(recipient=stranger), TS, ALICE, ALICE_PUB)
        self.assertEqual(self.queue.rows, [])

    def test_bounds_answer_queue_full_at_once(self) -> None:
        self.holding.max_per_recipient = 2
        for n in range(3):
            self.send(n=n)
        [error] = self.to_alice("ERROR")
        self.assertEqual(
            (error["code"], error["msg_ref"], error["user_id"], error["ts"]),
            ("QUEUE_FULL", "MSG_DIRECT", BOB, TS + 2),
        )
        self.assertIn("2 DMs waiting", error["detail"])
        self.holding.max_per_recipient = 1000
        self.holding.max_total = 2
        self.send(n=9)
        self.assertEqual(self.to_alice("ERROR")[-1]["code"], "QUEUE_FULL")
        self.assertEqual(self.holding.total, 2)

    def test_expired_unsent_is_reported_and_counted(self) -> None:
        self.send()
        self.clock.advance(7 * DAY - 10)
        self.holding.sweep()
        self.assertEqual(self.holding.held_for(BOB), 1)
        self.clock.advance(20)
        self.holding.sweep()
        [error] = self.to_alice("ERROR")
        self.assertEqual((error["code"], error["user_id"], error["ts"]), ("TIMEOUT", BOB, TS))
        self.assertIn("7 days", error["detail"])
        self.assertEqual((self.holding.counters["expired"], self.holding.total), (1, 0))

    def test_handed_to_the_recipients_server_when_it_appears_there(self) -> None:
        self.send()
        self.presence.user_online_remote(BOB, OTHER, BOB_PUB, {})
        [(server_id, frame)] = self.peers.sent_frames()
        self.assertEqual((server_id, frame["type"], frame["ts"]), (OTHER, "SERVER_DELIVER", TS))
        self.assertIs(frame["payload"]["held"], True)
        self.assertEqual(self.holding.held_for(BOB), 1)  # until OTHER confirms it
        ack = {"msg_ref": "SERVER_DELIVER", "delivered": [delivery_ref(frame["payload"]["content_sig"])]}
        self.peers.deliver(wire.Envelope("ACK", OTHER, HERE, TS, ack, "s"))
        self.assertEqual((self.holding.held_for(BOB), self.queue.rows), (0, []))
        self.assertEqual(self.to_alice("ACK")[-1]["status"], "delivered")

    def handed_over_then(self, code: str) -> dict:
        self.send()
        self.presence.user_online_remote(BOB, OTHER, BOB_PUB, {})
        [(_, frame)] = self.peers.sent_frames()
        error = {
            "code": code,
            "detail": "no",
            "msg_ref": "SERVER_DELIVER",
            "user_id": BOB,
            "sender": ALICE,
            "ref": delivery_ref(frame["payload"]["content_sig"]),
        }
        self.peers.deliver(wire.Envelope("ERROR", OTHER, HERE, TS, error, "s"))
        return error

    def test_a_hand_over_refused_for_good_is_dropped_and_its_sender_told(self) -> None:
        self.handed_over_then("BAD_TS")
        self.assertEqual((self.holding.held_for(BOB), self.queue.rows), (0, []))
        [error] = self.to_alice("ERROR")
        self.assertEqual((error["code"], error["user_id"], error["msg_ref"]), ("BAD_TS", BOB, "MSG_DIRECT"))
        self.assertEqual(self.holding.counters["refused_by_server"], 1)
        self.holding.sweep()  # nothing left to retry, nothing reported again
        self.assertEqual(len(self.to_alice("ERROR")), 1)

    def test_a_hand_over_to_a_user_who_left_again_stays_held(self) -> None:
        self.handed_over_then("USER_NOT_FOUND")
        self.assertEqual(self.holding.held_for(BOB), 1)
        self.assertEqual(self.to_alice("ERROR"), [])

    def test_batches_to_a_server_follow_each_other_as_they_are_confirmed(self) -> None:
        from socp_tw.services.holding import service as holding_module

        self.patch(holding_module, "BATCH", 2)
        for n in range(5):
            self.send(n=n)
        self.presence.user_online_remote(BOB, OTHER, BOB_PUB, {})
        sizes = []
        while self.peers.sent:
            batch = [f for _, f in self.peers.sent_frames()]
            sizes.append(len(batch))
            self.peers.sent.clear()
            refs = [delivery_ref(f["payload"]["content_sig"]) for f in batch]
            ack = {"msg_ref": "SERVER_DELIVER", "delivered": refs}
            self.peers.deliver(wire.Envelope("ACK", OTHER, HERE, TS, ack, "s"))
        self.assertEqual(sizes, [2, 2, 1])  # no wait for the sweep between batches
        self.assertEqual(self.holding.held_for(BOB), 0)

    def test_an_unconfirmed_hand_over_stays_held_and_is_retried(self) -> None:
        self.send()
        self.presence.user_online_remote(BOB, OTHER, BOB_PUB, {})
        self.clock.advance(11)  # OTHER confirms nothing
        self.assertEqual(self.holding.held_for(BOB), 1)
        self.assertEqual(self.to_alice("ERROR"), [])
        self.peers.sent.clear()
        self.holding.sweep()  # the next sweep (or link-up) tries again
        self.assertEqual(len(self.peers.sent_frames()), 1)

    def test_unreachable_server_then_link_up(self) -> None:
        self.presence.user_online_remote(CAROL, OTHER, BOB_PUB, {})
        self.peers.unlink(OTHER)
        self.send(recipient=CAROL)
        self.assertEqual(self.to_alice("ACK")[0]["reason"], "unreachable")
        self.peers.link(OTHER)  # the link heals: handed over at once
        self.assertEqual([f["type"] for _, f in self.peers.sent_frames()], ["SERVER_DELIVER"])

    def test_an_unconfirmed_dm_is_held_instead_of_failing(self) -> None:
        self.presence.user_online_remote(CAROL, OTHER, BOB_PUB, {})
        fields = dm_fields(recipient=CAROL)
        self.assertEqual(self.router.route("MSG_DIRECT", CAROL, fields, TS, ALICE, ALICE_PUB), OTHER)
        self.clock.advance(11)
        self.assertEqual(self.to_alice("ERROR"), [])
        self.assertEqual(self.to_alice("ACK")[0]["reason"], "unreachable")
        self.assertEqual(self.holding.held_for(CAROL), 1)


class HostingSideTests(SynchronousTestCase):
    """A held DM from OTHER for Bob, who is here."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(TS / 1000 + 3 * DAY)  # three days after it was sent: outside the ts window
        self.presence = Presence(HERE)
        self.peers = FakePeerLinks([OTHER])
        self.peers.acking.add(OTHER)
        keys = UserKeys()
        signer = make_signer()
        self.holding = HeldMessages(self.presence, self.peers, signer, keys, self.clock, MemoryHeldQueue())
        now = lambda: int(self.clock.seconds() * 1000)  # noqa: E731
        self.router = Router(
            self.presence,
            signer,
            self.peers,
            clock=self.clock,
            user_keys=keys,
            holding=self.holding,
            ts_window=300.0,
            now_ms=now,
        )
        self.bob = FakeLink("bob", "user", BOB)
        self.presence.user_online_local(BOB, BOB_PUB, {}, self.bob)
        fields = dm_fields()
        self.payload = {"user_id": BOB, **fields, "sender": ALICE, "sender_pub": ALICE_PUB, "held": True}

    def deliver(self, payload: dict, ts: int = TS) -> None:
        self.peers.deliver(wire.Envelope("SERVER_DELIVER", OTHER, HERE, ts, payload, "s"))

    def test_old_held_dm_delivered_once_and_a_replay_refused(self) -> None:
        self.deliver(self.payload)
        [frame] = self.bob.frames()
        self.assertEqual((frame["type"], frame["ts"], frame["payload"]["held"]), ("USER_DELIVER", TS, True))
        self.deliver(dict(self.payload))  # replayed (or handed over twice): not shown again
        self.assertEqual(len(self.bob.frames()), 1)
        self.assertEqual(self.router.counters["held_duplicate"], 1)
        self.clock.advance(0.2)  # both confirmed, so the holder forgets it either way
        [(_, ack)] = self.peers.sent_frames()
        self.assertEqual(len(ack["payload"]["delivered"]), 2)

    def test_the_same_dm_not_marked_held_is_refused_as_stale(self) -> None:
        payload = dict(self.payload)
        del payload["held"]
        self.deliver(payload)
        self.assertEqual(self.bob.frames(), [])
        [(_, error)] = self.peers.sent_frames()
        self.assertEqual(error["payload"]["code"], "BAD_TS")

    def test_the_retention_follows_this_servers_hold_days(self) -> None:
        self.holding.hold_for = 1.9 * DAY  # --hold-days 1.9: accepted up to 2.9 days, as refs are kept
        self.deliver(self.payload)  # sent 3 days ago: just past it
        self.assertEqual(self.bob.frames(), [])
        self.assertEqual(self.peers.sent_frames()[0][1]["payload"]["code"], "BAD_TS")

    def test_older_than_the_retention_is_refused(self) -> None:
        self.clock.advance(6 * DAY)
        self.deliver(self.payload)
        self.assertEqual(self.bob.frames(), [])
        self.assertEqual(self.peers.sent_frames()[0][1]["payload"]["code"], "BAD_TS")
