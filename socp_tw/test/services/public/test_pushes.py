"""What local users are told: membership updates at most once per interval, shared snapshots."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail

from socp_tw import wire
from socp_tw.test.services.public.sim import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    A,
    Node,
    PublicTestBase,
    resolved,
    user_pub,
)
from socp_tw.testing import FakeLink


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


class SubscribeTests(PublicTestBase):
    """A link in follow mode gets the channel only once it sends PUBLIC_CHANNEL_SUBSCRIBE."""

    def quiet_join(self, node: Node, user_id: str):
        link = FakeLink(f"user-{user_id[:4]}-{node.server_id[:2]}", role="user", identity=user_id)
        link.public_pushes = False  # as the user side sets it for USER_HELLO presence: "follow"
        node.links[user_id] = link
        node.presence.user_online_local(user_id, user_pub(user_id), {}, link)
        self.net.clock.advance(0)
        return link

    def channel_frames(self, node: Node, user_id: str) -> list[str]:
        kinds = ("PUBLIC_CHANNEL_UPDATED", "PUBLIC_CHANNEL_KEY_SHARE")
        return [f["type"] for f in node.frames(user_id, kinds)]

    def subscribe(self, node: Node, user_id: str) -> None:
        envelope = wire.Envelope("PUBLIC_CHANNEL_SUBSCRIBE", user_id, node.server_id, 1, {}, "")
        node.users.deliver(node.links[user_id], envelope)
        self.net.clock.advance(0)

    def test_nothing_until_subscribed_then_snapshot_share_and_updates(self) -> None:
        node = self.node(A, push_interval=0.5, rekey_interval=0)
        self.net.join_user(node, ALICE)
        self.quiet_join(node, BOB)
        self.net.clock.advance(11)  # the key for Alice and Bob is made; updates pushed
        self.assertIn("PUBLIC_CHANNEL_KEY_SHARE", self.channel_frames(node, ALICE))
        self.assertEqual(self.channel_frames(node, BOB), [])
        self.assertTrue(node.public.state.members().get(BOB))  # a member all the same
        self.subscribe(node, BOB)
        frames = node.frames(BOB, ("PUBLIC_CHANNEL_UPDATED", "PUBLIC_CHANNEL_KEY_SHARE"))
        self.assertEqual([f["type"] for f in frames], ["PUBLIC_CHANNEL_UPDATED", "PUBLIC_CHANNEL_KEY_SHARE"])
        snapshot = frames[0]["payload"]
        self.assertTrue(snapshot["reset"])
        self.assertEqual([m["user_id"] for m in snapshot["members"]], sorted([ALICE, BOB]))
        self.assertEqual(node.public.counters["subscribed"], 1)
        self.net.join_user(node, CAROL)
        self.net.clock.advance(1)
        self.assertIn("PUBLIC_CHANNEL_UPDATED", self.channel_frames(node, BOB))  # updates from now on

    def test_unsubscribed_links_share_no_update(self) -> None:
        node = self.node(A, push_interval=0.5)
        self.quiet_join(node, BOB)
        self.net.join_user(node, ALICE)
        self.net.join_user(node, CAROL)
        self.net.clock.advance(11)
        self.assertEqual(self.channel_frames(node, BOB), [])
