"""The seam between the mesh and its dialers: IOutgoingLinks / IDialer and IPeerLinkEvents.

Each contract runs against the real implementation (``socp_tw.services.mesh.dialing``,
``socp_tw.services.mesh.Mesh``) and the fake in ``socp_tw.testing``.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from socp_tw import wire
from socp_tw.interfaces import IDialer, IOutgoingLinkOwner, IOutgoingLinks, IPeerLinkEvents
from socp_tw.protocols.peer import PeerClientFactory
from socp_tw.services.mesh import OutgoingLinks
from socp_tw.test.services.mesh.support import S1, MeshTestCase
from socp_tw.testing import FakeDialer, FakeLink, FakeOutgoingLinks, RecordingPeerLinkEvents

# -- IOutgoingLinks and IDialer --------------------------------------------------------------------


class OutgoingLinksContract:
    """What every IOutgoingLinks and its dialers do; ``make()`` returns (outgoing, settle),
    ``settle()`` letting pending reactor turns run."""

    def make(self):
        raise NotImplementedError

    def test_interfaces(self) -> None:
        outgoing, _ = self.make()
        self.assertTrue(verifyObject(IOutgoingLinks, outgoing))
        self.assertTrue(verifyObject(IDialer, outgoing.dialer("127.0.0.1", 9001, join=True)))

    def test_an_introducer_and_a_named_server(self) -> None:
        outgoing, _ = self.make()
        introducer = outgoing.dialer("127.0.0.1", 9001, join=True)
        self.assertEqual((introducer.host, introducer.port), ("127.0.0.1", 9001))
        self.assertEqual((introducer.server_id, introducer.join, introducer.pem), (None, True, False))
        self.assertEqual(introducer.url, "ws://127.0.0.1:9001")
        named = outgoing.dialer("127.0.0.1", 9002, S1)
        self.assertEqual((named.server_id, named.join), (S1, False))

    def test_new_dialers_are_paused_until_resumed(self) -> None:
        outgoing, settle = self.make()
        dialer = outgoing.dialer("127.0.0.1", 9001, S1)
        settle()
        self.assertFalse(dialer.wanted)
        dialer.resume()
        settle()
        self.assertTrue(dialer.wanted)
        dialer.pause()
        settle()
        self.assertFalse(dialer.wanted)
        dialer.mark_healthy()  # with no link yet: nothing to reset, nothing breaks

    def test_retarget_moves_the_address(self) -> None:
        outgoing, settle = self.make()
        dialer = outgoing.dialer("127.0.0.1", 9001, S1)
        dialer.retarget("localhost", 9009)
        settle()
        self.assertEqual((dialer.host, dialer.port, dialer.url), ("localhost", 9009, "ws://localhost:9009"))

    def test_remove_returns_a_deferred(self) -> None:
        outgoing, _ = self.make()
        self.assertIsInstance(outgoing.remove(outgoing.dialer("127.0.0.1", 9001, S1)), Deferred)


class RealOutgoingLinksTests(OutgoingLinksContract, SynchronousTestCase):
    def make(self):
        reactor = MemoryReactorClock()
        outgoing = OutgoingLinks(RecordingPeerLinkEvents(), reactor, client_factory=PeerClientFactory)
        outgoing.startService()
        self.addCleanup(outgoing.stopService)
        return outgoing, lambda: reactor.advance(0)

    def test_dialers_own_their_links(self) -> None:
        """What the client protocol sees of a dialer (IOutgoingLinkOwner)."""
        outgoing, _ = self.make()
        dialer = outgoing.dialer("::1", 9001, S1)
        self.assertTrue(verifyObject(IOutgoingLinkOwner, dialer))
        self.assertEqual((dialer.address, dialer.url), ("[::1]:9001", "ws://[::1]:9001"))
        self.assertIs(dialer.mesh, outgoing.mesh)
        self.assertEqual(
            [dialer.new_link_id(), outgoing.dialer("127.0.0.1", 1).new_link_id()], ["out-1", "out-2"]
        )
        self.assertEqual(
            (dialer.max_send_queue, dialer.max_send_queue_bytes),
            (outgoing.max_send_queue, outgoing.max_send_queue_bytes),
        )

    def test_the_client_factory_builds_each_attempt(self) -> None:
        reactor = MemoryReactorClock()
        built = []

        def client_factory(owner, max_frame_bytes):
            built.append((owner, max_frame_bytes))
            return PeerClientFactory(owner, max_frame_bytes)

        outgoing = OutgoingLinks(RecordingPeerLinkEvents(), reactor, client_factory=client_factory)
        outgoing.startService()
        self.addCleanup(outgoing.stopService)
        dialer = outgoing.dialer("127.0.0.1", 9001, S1)
        dialer.resume()
        reactor.advance(0)
        self.assertEqual(built, [(dialer, wire.MAX_FRAME_BYTES)])
        self.assertEqual(len(reactor.tcpClients), 1)

    def test_the_mesh_is_held_as_its_interface(self) -> None:
        self.assertRaises(TypeError, OutgoingLinks, object(), Clock(), client_factory=PeerClientFactory)


class FakeOutgoingLinksTests(OutgoingLinksContract, SynchronousTestCase):
    def make(self):
        return FakeOutgoingLinks(), lambda: None


# -- IPeerLinkEvents -------------------------------------------------------------------------------


class PeerLinkEventsContract:
    """What every IPeerLinkEvents takes; ``make()`` returns it."""

    def make(self):
        raise NotImplementedError

    def test_interface(self) -> None:
        events = self.make()
        self.assertTrue(verifyObject(IPeerLinkEvents, events))
        events.set_outgoing(FakeOutgoingLinks())

    def test_an_outgoing_link_from_open_to_close(self) -> None:
        events = self.make()
        link = FakeLink("out-7")
        link.outgoing = True
        events.outgoing_opened(link, FakeDialer("127.0.0.1", 9001, join=True))
        events.frame_rejected(link, wire.FrameError("not json"))
        self.assertEqual(events.counters["rejected.BAD_FRAME"], 1)
        events.goodbye(link)
        events.link_closed(link, "connection lost")
        events.link_closed(link, "connection lost")  # a second report of the same close is harmless


class MeshPeerLinkEventsTests(PeerLinkEventsContract, MeshTestCase):
    def make(self):
        return self.mesh

    def test_the_outgoing_side_is_held_as_its_interface(self) -> None:
        self.assertRaises(TypeError, self.mesh.set_outgoing, object())


class RecordingPeerLinkEventsTests(PeerLinkEventsContract, SynchronousTestCase):
    def make(self):
        return RecordingPeerLinkEvents()
