"""The Mesh facade: the IPeerLinks contract (run against the fake too) and dispatch of frame types."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from socp_tw import wire
from socp_tw.interfaces import IPeerLinks
from socp_tw.test.services.mesh.support import (
    HERE,
    S1,
    S2,
    S3,
    MeshTestCase,
    TwoLinksTestCase,
    pub,
)
from socp_tw.testing import FakePeerLinks, verify_server_frame

# -- the IPeerLinks contract ----------------------------------------------------------------------


class PeerLinksContract:
    """What every IPeerLinks does; ``make()`` returns (peer_links, link_server(server_id))."""

    def make(self):
        raise NotImplementedError

    def test_interface_and_empty_mesh(self) -> None:
        peers, _ = self.make()
        self.assertTrue(verifyObject(IPeerLinks, peers))
        self.assertEqual(peers.connected_servers(), [])
        self.assertFalse(peers.send_to_server(S1, b"{}"))
        self.assertEqual(peers.broadcast(b"{}"), 0)
        self.assertIsNone(peers.server_key(S3))

    def test_linked_server(self) -> None:
        peers, link_server = self.make()
        changes = []
        peers.add_change_observer(lambda: changes.append(peers.connected_servers()))
        link_server(S1)
        self.assertEqual(peers.connected_servers(), [S1])
        self.assertEqual(changes, [[S1]])
        self.assertTrue(peers.send_to_server(S1, b'{"x":1}'))
        self.assertEqual(peers.broadcast(b'{"x":2}'), 1)

    def test_on_frame_registration(self) -> None:
        peers, _ = self.make()
        peers.on_frame("SERVER_DELIVER", lambda envelope, link: None)
        self.assertIsInstance(peers.counters, dict)


class MeshContractTests(PeerLinksContract, MeshTestCase):
    def make(self):
        return self.mesh, self.link_in


class FakePeerLinksContractTests(PeerLinksContract, SynchronousTestCase):
    def make(self):
        peers = FakePeerLinks()
        return peers, peers.link


# -- dispatch ------------------------------------------------------------------------------


class DispatchTests(TwoLinksTestCase):
    def test_unknown_types_answered_once_errors_and_acks_never(self) -> None:
        for _ in range(2):
            self.receive(self.l1, self.frame("SOMETHING_NEW", S1, {}, to=HERE))
        self.receive(self.l1, self.frame("ERROR", S1, {"code": "X", "detail": "y"}, to=HERE))
        self.receive(self.l1, self.frame("ACK", S1, {"msg_ref": "X"}, to=HERE))
        self.receive(self.l1, self.frame("HEARTBEAT", S1, {}, to=HERE))
        [answer] = self.l1.frames()
        self.assertEqual(answer["type"], "ERROR")
        self.assertEqual(
            (answer["payload"]["code"], answer["payload"]["msg_ref"]), ("UNKNOWN_TYPE", "SOMETHING_NEW")
        )
        self.assertEqual(answer["to"], S1)
        self.assertTrue(verify_server_frame(answer, pub(HERE)))
        # Another link gets its own single answer.
        self.receive(self.l2, self.frame("SOMETHING_NEW", S2, {}, to=HERE))
        self.assertEqual(len(self.l2.sent), 1)

    def test_malformed_frames_on_outgoing_links_are_only_logged(self) -> None:
        link, _ = self.link_out(S3)
        link.sent.clear()
        self.mesh.frame_rejected(link, wire.NotJSON("nope"))
        self.assertEqual(link.sent, [])
        self.assertEqual(self.mesh.counters["rejected.BAD_JSON"], 1)
