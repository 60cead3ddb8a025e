"""The link registry (services/mesh/links.py): one link per pair of servers."""

from __future__ import annotations

from socp_tw.test.services.mesh.support import (
    HERE,
    LOW,
    S1,
    MeshTestCase,
)

# -- one link per pair ----------------------------------------------------------------------------------


class DuplicateLinkTests(MeshTestCase):
    def test_we_are_lower_our_dialled_link_wins(self) -> None:
        out, dialer = self.link_out(S1)
        incoming = self.link_in(S1)
        self.assertIs(self.mesh.link_to(S1), out)
        self.assertIsNone(incoming.closed)  # the dialler (S1) closes it...
        self.clock.advance(self.mesh.close_grace)
        self.assertEqual(incoming.closed[0], 1000)  # ...or we do, if it does not
        self.assertEqual(self.node.changes, 1)
        self.assertEqual(dialer.paused, 0)

    def test_incoming_first_then_ours_still_ours_wins(self) -> None:
        incoming = self.link_in(S1)
        dialer = self.node.outgoing.for_server(S1)[0]
        out, _ = self.link_out(S1)
        self.assertIs(self.mesh.link_to(S1), out)
        self.assertEqual(self.mesh.connected_servers(), [S1])
        self.clock.advance(self.mesh.close_grace)
        self.assertIsNotNone(incoming.closed)
        self.assertEqual(dialer.paused, 1)  # the registered dialer of S1 is paused while linked
        self.assertEqual([x for x in self.lines() if x.startswith(f"Link to server {S1} up")].__len__(), 1)

    def test_peer_is_lower_its_dialled_link_wins(self) -> None:
        incoming = self.link_in(LOW)
        out, dialer = self.link_out(LOW)
        self.assertIs(self.mesh.link_to(LOW), incoming)
        self.assertIsNone(out.closed)  # we dialled it: we close it, once its pending frames left
        self.clock.advance(0.25)
        self.assertEqual(out.closed, (1000, "duplicate link"))
        self.assertEqual(dialer.paused, 1)
        self.mesh.link_closed(out, "closed")
        self.assertEqual(self.mesh.connected_servers(), [LOW])

    def test_same_side_twice_a_live_link_is_kept(self) -> None:
        # A second HELLO_LINK while the first link is alive (a replayed HELLO, say: its signature
        # covers only the payload) does not displace it.
        old = self.link_in(S1, "in-old")
        self.clock.advance(self.mesh.heartbeat_interval / 2)
        self.receive(old, self.frame("HEARTBEAT", S1, {}, to=HERE))
        new = self.link_in(S1, "in-new")
        self.assertIs(self.mesh.link_to(S1), old)
        self.clock.advance(self.mesh.close_grace)
        self.assertEqual(new.closed[0], 1000)

    def test_same_side_twice_a_quiet_link_is_replaced(self) -> None:
        # The peer restarted: its old link is half-open here, quiet since it died.
        old = self.link_in(S1, "in-old")
        self.clock.advance(self.mesh.heartbeat_interval)
        new = self.link_in(S1, "in-new")
        self.assertIs(self.mesh.link_to(S1), new)
        self.mesh.link_closed(old, "closed")
        self.assertEqual(self.mesh.connected_servers(), [S1])
        self.assertEqual(self.mesh.counters["links_down"], 0)
