"""Group keys across servers: made by the leader, adopted by all, at most one per interval."""

from __future__ import annotations

from twisted.internet.defer import Deferred, maybeDeferred

from socp_tw import crypto, wire
from socp_tw.services.public import (
    GROUP,
)
from socp_tw.test.keys import test_key
from socp_tw.test.services.public.sim import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    A,
    B,
    C,
    Node,
    PublicTestBase,
    link_id,
    server_pub,
    user_key,
)
from socp_tw.testing import FakeLink


class _HeldWorkers:
    """Workers that run a job only when released (a key being made while users come)."""

    size = 1

    def __init__(self) -> None:
        self.waiting: list = []

    def run(self, f, *args, **kwargs):
        d = Deferred()
        self.waiting.append((d, f, args, kwargs))
        return d

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d, f, args, kwargs in waiting:
            maybeDeferred(f, *args, **kwargs).chainDeferred(d)


class KeyTests(PublicTestBase):
    def test_a_key_outdated_while_made_is_abandoned_and_made_again(self) -> None:
        """The membership moved on while its key was being made: the rest of it is not made
        (KeyNotWanted at the next part); the key for the new membership comes when due."""
        a = self.node(A, rekey_interval=5.0, shares_per_part=1)
        held = a.public.workers = _HeldWorkers()
        self.net.join_user(a, ALICE)
        self.assertEqual(len(held.waiting), 1)  # ALICE's key, being made
        self.net.join_user(a, BOB)  # version 2 before it is done
        held.release()
        self.assertEqual(a.public.counters["keys_abandoned"], 1)
        self.assertIsNone(a.public.key)
        self.net.clock.advance(5.0)
        held.release()
        self.assertEqual((a.public.key.version, a.public.key.member_ids()), (2, {ALICE, BOB}))
        self.assertEqual(a.public.counters["keys_made"], 1)

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
