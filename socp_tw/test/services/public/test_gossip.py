"""Gossip between simulated servers: convergence under reordering and partitions, hostile input."""

from __future__ import annotations

import random

from socp_tw import crypto, wire
from socp_tw.services.public import (
    GROUP,
)
from socp_tw.services.userkeys import UserKeys
from socp_tw.test.services.public.sim import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    A,
    B,
    C,
    Net,
    PublicTestBase,
    X,
    event,
    link_id,
    user_key,
    user_pub,
)
from socp_tw.testing import FakeLink

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
        self.net.clock.advance(0)  # the end of the turn: b makes its join event
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

    def test_an_event_with_another_key_than_the_pinned_one_is_dropped(self) -> None:
        # A lying server cannot put its own key behind a known user's id in the channel
        # (every /all would then be encrypted to it).
        keys = UserKeys()
        keys.pin_advertised(ALICE, user_pub(ALICE), A)
        self.b.public.user_keys = keys
        forged = event(ALICE, origin=A, pubkey=user_pub(BOB)).to_wire()
        fine = event(BOB, origin=A, seq=2, pubkey=user_pub(BOB)).to_wire()
        self.receive({"events": [forged, fine], "counters": {A: 2}})
        self.assertEqual(set(self.b.state.members()), {BOB})
        self.assertEqual(self.b.public.counters["dropped.PUBLIC_CHANNEL_ADD"], 1)
        self.receive({"events": [event(ALICE, origin=A, seq=3, pubkey=user_pub(ALICE)).to_wire()]})
        self.assertEqual(self.b.state.members()[ALICE], user_pub(ALICE))

    def test_keys_are_stored_normalised(self) -> None:
        pem = crypto.encode_public_key(user_key(ALICE), pem=True)
        self.receive({"events": [event(ALICE, origin=A, pubkey=pem).to_wire()]})
        self.assertEqual(self.b.state.members(), {ALICE: user_pub(ALICE)})

    def test_foreign_add_without_events_ignored(self) -> None:
        self.receive({"add": [ALICE], "if_version": 0})
        self.assertEqual((self.b.state.version, self.b.public.counters["foreign_add"]), (0, 1))
