"""Liveness (services/mesh/liveness.py): heartbeats, dead links, CTRL_CLOSE, withdrawn users."""

from __future__ import annotations

from twisted.logger import LogLevel

from socp_tw.test.services.mesh.support import (
    HERE,
    S1,
    S2,
    USER,
    MeshTestCase,
    user_pub,
)

# -- liveness ------------------------------------------------------------------------------------------


class LivenessTests(MeshTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.l1 = self.link_in(S1)
        self.receive(
            self.l1,
            self.frame("USER_ADVERTISE", S1, {"user_id": USER, "server_id": S1, "pubkey": user_pub()}),
        )
        self.l1.sent.clear()

    def test_heartbeat_every_interval(self) -> None:
        for _ in range(3):
            self.clock.advance(self.mesh.heartbeat_interval)
            self.receive(self.l1, self.frame("HEARTBEAT", S1, {}, to=HERE))
        self.assertEqual(self.types(self.l1), ["HEARTBEAT"] * 3)
        self.assertEqual(self.l1.frames()[0]["to"], S1)

    def test_silent_link_is_dead_after_45_s_and_its_users_withdrawn(self) -> None:
        self.assertEqual((self.mesh.dead_after, self.mesh.heartbeat_interval), (45.0, 15.0))
        self.clock.advance(30)
        self.receive(self.l1, self.frame("HEARTBEAT", S1, {}, to=HERE))  # any frame counts as life
        self.clock.advance(44)
        self.assertIsNone(self.l1.closed)
        self.clock.advance(1)
        self.assertEqual(self.l1.closed, (1001, "no heartbeat"))
        self.assertEqual(self.mesh.connected_servers(), [])
        self.assertEqual(self.node.outgoing.for_server(S1)[0].resumed, [0.0])  # redialled
        self.assertIsNotNone(self.presence.lookup(USER))  # grace for a quick relink
        self.clock.advance(self.mesh.withdraw_after)
        self.assertIsNone(self.presence.lookup(USER))
        self.assertTrue(any(f"Withdrew 1 users of server {S1}" in x for x in self.lines()))
        self.assertTrue(any("declared dead" in x for x in self.lines(LogLevel.warn)))
        self.assertEqual(self.mesh.counters["links_dead"], 1)

    def test_relink_within_the_grace_keeps_users(self) -> None:
        self.mesh.link_closed(self.l1, "connection lost")
        self.assertIn(f"Link to server {S1} down (connection lost)", self.lines())
        self.clock.advance(self.mesh.withdraw_after / 2)
        self.link_in(S1, "in-again")
        self.clock.advance(self.mesh.withdraw_after)
        self.assertIsNotNone(self.presence.lookup(USER))

    def test_signed_ctrl_close_withdraws_at_once(self) -> None:
        self.receive(self.l1, self.frame("CTRL_CLOSE", S1, {}, to=HERE))
        self.assertIsNone(self.presence.lookup(USER))
        self.assertEqual(self.mesh.connected_servers(), [])
        self.assertIsNone(self.l1.closed)  # the leaving peer closes; we only wait
        self.clock.advance(self.mesh.close_grace)
        self.assertEqual(self.l1.closed[0], 1000)

    def test_unsigned_ctrl_close_only_closes(self) -> None:
        self.receive(self.l1, b'{"type":"CTRL_CLOSE"}')
        self.assertEqual(self.mesh.connected_servers(), [])
        self.assertIsNotNone(self.presence.lookup(USER))
        self.mesh.link_closed(self.l1, "closed")
        self.clock.advance(self.mesh.withdraw_after)
        self.assertIsNone(self.presence.lookup(USER))

    def test_users_of_unlinked_servers_are_withdrawn(self) -> None:
        # Gossip about S2's user arrives through S1 while we have no link to S2.
        self.link_in(S2).sent.clear()
        self.mesh.link_closed(self.mesh.link_to(S2), "gone")
        other = "2c1a4f6e-0c1f-4c39-9d0a-6f0f1e9b8a77"
        self.receive(
            self.l1,
            self.frame("USER_ADVERTISE", S2, {"user_id": other, "server_id": S2, "pubkey": user_pub()}),
        )
        self.assertIsNotNone(self.presence.lookup(other))
        self.clock.advance(self.mesh.withdraw_after)
        self.assertIsNone(self.presence.lookup(other))
        self.assertIsNotNone(self.presence.lookup(USER))
