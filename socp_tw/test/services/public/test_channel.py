"""One simulated server: interfaces, joins and leaves, persistence, restarts, stopping."""

from __future__ import annotations

import json

from zope.interface.verify import verifyObject

from socp_tw import crypto
from socp_tw.interfaces import IPeerLinks
from socp_tw.services.public import (
    GROUP,
)
from socp_tw.test.keys import test_key
from socp_tw.test.services.public.sim import (
    ALICE,
    BOB,
    CAROL,
    A,
    B,
    GatedStore,
    Node,
    PublicTestBase,
    public_message,
    resolved,
    server_pub,
    user_key,
    user_pub,
)
from socp_tw.testing import FakeLink, MemoryStore

# ---------------------------------------------------------------- one server


class SingleServerTests(PublicTestBase):
    def test_interfaces_and_registration(self) -> None:
        node = self.node(A)
        self.assertTrue(verifyObject(IPeerLinks, node.peers))
        self.assertIn("MSG_PUBLIC_CHANNEL", node.users.handlers)
        self.assertEqual(
            set(node.peers.handlers) & {"PUBLIC_CHANNEL_ADD", "PUBLIC_CHANNEL_UPDATED"},
            {
                "PUBLIC_CHANNEL_ADD",
                "PUBLIC_CHANNEL_UPDATED",
            },
        )
        self.assertTrue(node.public.ready)
        self.assertEqual(node.state.version, 0)

    def test_join_snapshot_and_key(self) -> None:
        node = self.node(A)
        link = FakeLink("alice", role="user", identity=ALICE)
        node.links[ALICE] = link
        node.presence.user_online_local(ALICE, user_pub(ALICE), {}, link)
        # Nothing before the hello's ACK (sent by the user side once observers return).
        self.assertEqual(link.sent, [])
        self.net.clock.advance(0)
        snapshot, share = node.frames(ALICE)
        self.assertEqual(snapshot["type"], "PUBLIC_CHANNEL_UPDATED")
        self.assertEqual(snapshot["to"], "*")  # shared by the users arriving before the next update
        self.assertEqual(
            snapshot["payload"],
            {
                "version": 1,
                "wraps": [],
                "members": [{"user_id": ALICE, "pubkey": user_pub(ALICE)}],
                "removed": [],
                "reset": True,
            },
        )
        self.assertEqual(share["type"], "PUBLIC_CHANNEL_KEY_SHARE")
        payload = share["payload"]
        self.assertEqual(
            (payload["version"], payload["creator"], payload["part"], payload["parts"]), (1, A, 0, 1)
        )
        self.assertEqual(payload["creator_pub"], server_pub(A))
        preimage = crypto.keyshare_preimage(payload["shares"], payload["creator_pub"])
        self.assertTrue(crypto.verify_content_sig(test_key(0), preimage, payload["content_sig"]))
        [mine] = payload["shares"]
        group_key = crypto.oaep_decrypt(user_key(ALICE), mine["wrapped_public_channel_key"])
        self.assertEqual(len(group_key), 32)
        # Persisted: the version, the member, and only the wrapped key.
        group = node.store.groups[GROUP]
        self.assertEqual(group["origins"], {A: 1})
        self.assertEqual(group["members"], {ALICE: mine["wrapped_public_channel_key"]})
        self.assertEqual(group["meta"], {"key_version": 1, "key_creator": A})
        self.assertNotIn(group_key.hex(), json.dumps(group))
        self.assertEqual(node.public.counters["keys_made"], 1)

    def test_join_and_leave_bump_and_tell_the_others(self) -> None:
        node = self.node(A)
        self.net.join_user(node, ALICE)
        self.net.join_user(node, BOB)
        self.assertEqual(node.state.version, 2)
        # Alice's key was made at once; Bob's join comes within rekey_interval: its key waits.
        self.net.clock.advance(node.public.rekey_interval - 0.01)
        frames = node.frames(ALICE)
        [delta] = [f for f in frames if f["type"] == "PUBLIC_CHANNEL_UPDATED" and not f["payload"]["reset"]]
        self.assertEqual(delta["payload"]["members"], [{"user_id": BOB, "pubkey": user_pub(BOB)}])
        self.assertEqual((delta["payload"]["version"], delta["payload"]["removed"]), (2, []))
        shares = [f for f in frames if f["type"] == "PUBLIC_CHANNEL_KEY_SHARE"]
        self.assertEqual([s["payload"]["version"] for s in shares], [1])
        self.net.clock.advance(0.01)
        shares = node.frames(ALICE)
        self.assertEqual([s["payload"]["version"] for s in shares], [2])
        self.assertEqual([len(s["payload"]["shares"]) for s in shares], [2])
        self.net.clock.advance(node.public.rekey_interval)  # quiet: the next change is keyed at once
        self.net.drop_user(node, BOB)
        self.assertEqual(node.state.version, 3)
        self.assertEqual(node.state.members(), {ALICE: user_pub(ALICE)})
        updated, share = node.frames(ALICE)
        self.assertEqual(updated["payload"]["removed"], [BOB])
        self.assertEqual((updated["payload"]["version"], updated["payload"]["members"]), (3, []))
        self.assertEqual(share["payload"]["version"], 3)
        self.assertEqual(node.store.groups[GROUP]["members"].keys(), {ALICE})
        self.assertEqual(node.store.groups[GROUP]["states"][BOB]["present"], False)
        self.assertEqual(node.public.counters["events_made"], 3)

    def test_restart_never_resets_the_version(self) -> None:
        store = MemoryStore()
        first = Node(self.net, A, store=store).start()
        self.net.join_user(first, ALICE)
        self.net.join_user(first, BOB)
        self.net.drop_user(first, BOB)
        self.assertEqual(first.state.version, 3)
        # A crash: Alice's link is gone without a leave being recorded.
        first.public.ready = False
        first.public.running = False
        again = Node(self.net, A, store=store).start()
        # Alice was hosted here and is not connected: she left (one more event).
        self.assertEqual(again.state.version, 4)
        self.assertEqual(again.state.members(), {})
        self.assertEqual(again.public.counters["swept_own"], 1)
        self.net.join_user(again, CAROL)
        self.assertEqual(again.state.version, 5)
        self.assertEqual(store.groups[GROUP]["origins"], {A: 5})

    def test_events_are_saved_before_they_are_sent(self) -> None:
        store = GatedStore()
        node = Node(self.net, A, store=store).start()
        self.net.link(A, B)  # a server to tell (B's node need not run)
        self.net.join_user(node, ALICE)
        self.assertEqual(node.state.version, 1)
        self.assertEqual(self.sent_adds(), [])
        store.release()
        [add] = self.sent_adds()
        self.assertEqual((add["add"], add["remove"], add["if_version"], add["version"]), ([ALICE], [], 0, 1))
        self.assertEqual(add["counters"], {A: 1})
        self.assertEqual(add["events"], [node.state.states[ALICE].to_wire()])

    def test_alone_nothing_is_signed_for_the_mesh(self) -> None:
        """With no server linked, our events are not signed for gossip; the first server that
        links gets them in our whole state."""
        node = Node(self.net, A).start()
        self.net.join_user(node, ALICE)
        self.net.join_user(node, BOB)
        self.assertEqual(self.sent_adds(), [])
        self.net.link(A, B)
        sync = [json.loads(resolved(f)) for _, to, f in self.net.queue if to == B]
        adds = [f["payload"] for f in sync if f["type"] == "PUBLIC_CHANNEL_ADD"]
        self.assertEqual([a["sync"] for a in adds], [True])
        self.assertEqual(sorted(adds[0]["add"]), sorted([ALICE, BOB]))

    def test_a_burst_of_local_changes_is_one_emit(self) -> None:
        """Joins and leaves in one reactor turn (a storm, a mass disconnect) are made into events
        together: one store write, one ADD (per chunk), one log line; a join and a leave of the
        same user in that turn make no event."""
        store = GatedStore()
        node = Node(self.net, A, store=store).start()
        self.net.link(A, B)
        users = [f"{i:08x}-0000-4000-8000-000000000000" for i in range(50)]
        links = []
        for user_id in users:
            link = FakeLink(f"user-{user_id[:8]}", role="user", identity=user_id)
            node.presence.user_online_local(user_id, user_pub(ALICE), {}, link)
            links.append(link)
        node.presence.user_offline_local(users[-1])  # came and went in the same turn
        self.assertEqual(node.state.version, 0)  # nothing yet: the turn is not over
        self.net.clock.advance(0)
        self.assertEqual(node.state.version, 49)
        self.assertEqual(len(store.waiting), 1)  # one write for all of them
        store.release()
        [add] = self.sent_adds()
        self.assertEqual(sorted(add["add"]), sorted(users[:-1]))
        for user_id in users[:-1]:
            node.presence.user_offline_local(user_id)
        self.net.clock.advance(0)
        self.assertEqual((node.state.version, node.state.members()), (98, {}))
        self.assertEqual(len(store.waiting), 1)

    def test_unsaved_events_are_not_sent(self) -> None:
        store = GatedStore()
        node = Node(self.net, A, store=store).start()
        self.net.link(A, B)
        self.net.join_user(node, ALICE)
        store.release(fail_with=RuntimeError("disk full"))
        self.assertEqual(self.sent_adds(), [])
        self.assertEqual(node.public.counters["persist_failed"], 1)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_work_before_the_state_is_loaded_waits(self) -> None:
        store = GatedStore(gate_loads=True)
        node = Node(self.net, A, store=store).start()
        self.assertFalse(node.public.ready)
        link = self.net.join_user(node, ALICE)
        handler = node.users.handlers["MSG_PUBLIC_CHANNEL"]
        pending = handler(link, ALICE, public_message(ALICE, ALICE))
        self.assertNoResult(pending)
        self.assertEqual(node.state.version, 0)
        store.release()
        self.assertTrue(node.public.ready)
        self.assertEqual(node.state.version, 1)
        self.successResultOf(pending)
        self.assertEqual(
            [f["type"] for f in node.frames(ALICE, ("PUBLIC_CHANNEL_UPDATED", "MSG_PUBLIC_CHANNEL"))],
            ["PUBLIC_CHANNEL_UPDATED", "MSG_PUBLIC_CHANNEL"],
        )

    def test_stopping_says_our_users_left(self) -> None:
        a, b = self.mesh(A, B)
        self.net.join_user(a, ALICE)
        self.net.pump()
        self.assertEqual(b.state.members(), {ALICE: user_pub(ALICE)})
        a.public.stopService()
        self.net.pump()
        self.assertEqual((b.state.members(), b.state.version), ({}, 2))
        self.assertEqual(a.store.groups[GROUP]["members"], {})
        # After the stop, presence changes are not ours to handle any more.
        self.net.drop_user(a, ALICE)
        self.assertEqual(a.state.version, 2)

    def test_no_group_in_store_disables(self) -> None:
        store = MemoryStore()
        del store.groups[GROUP]
        node = Node(self.net, A, store=store).start()
        self.assertFalse(node.public.ready)
        self.net.join_user(node, ALICE)
        self.assertEqual(node.state.version, 0)
