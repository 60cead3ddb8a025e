"""Presence gossip (services/mesh/gossip.py): USER_ADVERTISE / USER_REMOVE in and out."""

from __future__ import annotations

import json

from socp_tw.test.services.mesh.support import (
    ALICE,
    HERE,
    S1,
    S2,
    USER,
    MeshTestCase,
    TwoLinksTestCase,
    user_pub,
)
from socp_tw.testing import FakeLink


class GossipTests(TwoLinksTestCase):
    def test_advertise_recorded_and_flooded_unchanged_never_echoed(self) -> None:
        data = self.advertise()
        self.receive(self.l1, data)
        entry = self.presence.lookup(USER)
        self.assertEqual((entry.server_id, entry.pubkey), (S1, user_pub()))
        self.assertEqual(self.l1.sent, [])
        [forwarded] = self.l2.frames()
        self.assertEqual(forwarded, json.loads(data))
        # The same frame again (a peer echoing gossip back) is absorbed.
        self.receive(self.l2, data)
        self.receive(self.l1, data)
        self.assertEqual(len(self.l2.sent), 1)
        self.assertEqual(self.l1.sent, [])
        self.assertEqual(self.mesh.counters["dropped.duplicate"], 2)

    def test_remove_is_conditional_and_flooded(self) -> None:
        self.receive(self.l1, self.advertise(S1))
        self.l2.sent.clear()
        remove = self.frame("USER_REMOVE", S2, {"user_id": USER, "server_id": S2})
        self.receive(self.l2, remove)
        self.assertIsNotNone(self.presence.lookup(USER))
        self.assertEqual(len(self.l1.sent), 1)
        self.receive(self.l1, self.frame("USER_REMOVE", S1, {"user_id": USER, "server_id": S1}))
        self.assertIsNone(self.presence.lookup(USER))
        self.assertEqual(len(self.l2.sent), 1)

    def test_bad_gossip_is_dropped(self) -> None:
        for payload in (
            {"user_id": "x", "server_id": S1, "pubkey": user_pub()},
            {"user_id": USER, "server_id": S1, "pubkey": "weak"},
            {"user_id": USER, "server_id": S1, "pubkey": user_pub(), "meta": "x"},
            {"user_id": USER, "server_id": HERE, "pubkey": user_pub()},  # places a user on us
        ):
            self.receive(self.l1, self.frame("USER_ADVERTISE", S1, payload))
        self.receive(self.l1, self.frame("USER_REMOVE", S1, {"user_id": USER}))
        self.assertIsNone(self.presence.lookup(USER))
        self.assertEqual(self.mesh.counters["dropped.bad_gossip"], 5)
        self.assertEqual(self.l2.sent, [])

    def test_big_meta_is_not_stored(self) -> None:
        payload = {"user_id": USER, "server_id": S1, "pubkey": user_pub(), "meta": {"junk": "x" * 5000}}
        self.receive(self.l1, self.frame("USER_ADVERTISE", S1, payload))
        self.assertEqual(self.presence.lookup(USER).meta, {"pubkey": user_pub()})
        self.assertEqual(json.loads(self.l2.sent[0])["payload"], payload)  # forwarded unchanged


# -- presence gossip of local users -------------------------------------------------------------------


class LocalPresenceTests(MeshTestCase):
    def test_local_users_are_advertised_and_removed_everywhere(self) -> None:
        l1, l2 = self.link_in(S1), self.link_in(S2)
        l1.sent.clear()
        l2.sent.clear()
        calls = self.node.workers.calls
        link = FakeLink("user")
        self.presence.user_online_local(USER, user_pub(), {"name": "x"}, link)
        self.assertEqual(self.node.workers.calls, calls + 1)  # one signature for all links
        [a1], [a2] = l1.frames(), l2.frames()
        self.assertEqual(a1, a2)
        self.assertEqual((a1["type"], a1["to"]), ("USER_ADVERTISE", "*"))
        self.assertEqual(
            a1["payload"],
            {
                "user_id": USER,
                "server_id": HERE,
                "pubkey": user_pub(),
                "meta": {"name": "x", "pubkey": user_pub()},
            },
        )
        self.presence.user_offline_local(USER, link)
        self.assertEqual(l1.frames()[-1]["type"], "USER_REMOVE")
        self.assertEqual(l1.frames()[-1]["payload"], {"user_id": USER, "server_id": HERE})
        # Remote users are not ours to advertise.
        l1.sent.clear()
        self.presence.user_online_remote(ALICE, S1, user_pub(), {})
        self.assertEqual(l1.sent, [])

    def test_no_links_no_gossip(self) -> None:
        self.presence.user_online_local(USER, user_pub(), {}, FakeLink("user"))
        self.assertEqual(self.mesh.counters["forwarded"], 0)
