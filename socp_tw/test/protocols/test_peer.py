"""Outgoing links: backoff, the redialling dialer (MemoryReactorClock), and the client protocol."""

from __future__ import annotations

from twisted.application.internet import backoffPolicy
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import crypto, wire
from socp_tw.identity import ServerIdentity
from socp_tw.protocols.peer import PeerClientFactory
from socp_tw.protocols.websocket import SOCPServerFactory
from socp_tw.services.hub import Hub
from socp_tw.services.mesh import Mesh
from socp_tw.services.mesh.dialing import OutgoingLinks, backoff_policy
from socp_tw.services.presence import Presence
from socp_tw.signer import FrameSigner
from socp_tw.test.keys import test_key
from socp_tw.testing import FakeLink, RecordingPeerLinkEvents, SynchronousWorkers

A = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
B = "6fa459ea-ee8a-4ca4-894e-db77e160355e"


def outgoing_links(mesh, reactor, **kwargs) -> OutgoingLinks:
    """The dialers as ``socp_tw.tap`` builds them: with the real client protocol."""
    return OutgoingLinks(mesh, reactor, client_factory=PeerClientFactory, **kwargs)


class BackoffTests(SynchronousTestCase):
    def delays(self, failures: list[int], jitter: float = 0.5, rand: float = 0.0) -> list[float]:
        outgoing = outgoing_links(
            RecordingPeerLinkEvents(), MemoryReactorClock(), jitter=jitter, rand=lambda: rand
        )
        return [outgoing.delay_for(n) for n in failures]

    def test_grows_exponentially_and_is_capped(self) -> None:
        delays = self.delays(list(range(1, 12)))
        self.assertEqual(delays, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0, 30.0, 30.0])
        self.assertEqual(self.delays([10**6, 0, -3]), [30.0, 0.5, 0.5])

    def test_jitter_only_shortens_and_never_to_zero(self) -> None:
        for n in (1, 5, 50):
            [full] = self.delays([n])
            self.assertEqual(self.delays([n], rand=1.0), [full / 2])
            self.assertEqual(self.delays([n], rand=0.25), [full * 0.875])
            self.assertEqual(self.delays([n], jitter=1.0, rand=1.0), [full])  # degenerate: no zero delay
            self.assertEqual(self.delays([n], rand=7.0), [full / 2])  # a bad random is clamped

    def test_follows_the_configured_delays(self) -> None:
        """The mesh's tests shorten the schedule after construction; the policy reads it per dial."""
        outgoing = outgoing_links(RecordingPeerLinkEvents(), MemoryReactorClock(), rand=lambda: 0.0)
        outgoing.base_delay, outgoing.max_delay = 0.1, 0.3
        self.assertEqual([outgoing.delay_for(n) for n in (1, 2, 3, 4)], [0.1, 0.2, 0.3, 0.3])

    def test_is_twisteds_policy_shifted_by_one(self) -> None:
        twisted_policy = backoffPolicy(initialDelay=0.5, maxDelay=30.0, factor=2.0, jitter=lambda: 0.0)
        policy = backoff_policy(rand=lambda: 0.0)
        self.assertEqual([policy(n) for n in range(1, 20)], [twisted_policy(n - 1) for n in range(1, 20)])


class DialerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.mesh = RecordingPeerLinkEvents()
        self.outgoing = outgoing_links(self.mesh, self.reactor, rand=lambda: 0.0)
        self.outgoing.startService()
        self.dialer = self.outgoing.dialer("127.0.0.1", 9001, join=True)

    def attempts(self) -> int:
        return len(self.reactor.tcpClients)

    def fail_last(self) -> None:
        factory = self.reactor.tcpClients[-1][2]
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))

    def retry_delays(self) -> list[float]:
        return [round(c.getTime() - self.reactor.seconds(), 3) for c in self.reactor.getDelayedCalls()]

    def test_resume_dials_on_the_next_turn(self) -> None:
        self.dialer.resume()
        self.assertEqual(self.attempts(), 0)
        self.reactor.advance(0)
        self.assertEqual(self.attempts(), 1)
        host, port, _, timeout, _ = self.reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("127.0.0.1", 9001, 10))
        self.assertEqual(self.dialer.url, "ws://127.0.0.1:9001")

    def test_backoff_grows_and_is_bounded(self) -> None:
        self.dialer.resume()
        self.reactor.advance(0)
        seen = []
        for _ in range(9):
            self.fail_last()
            [delay] = self.retry_delays()
            seen.append(delay)
            self.reactor.advance(delay)
        self.assertEqual(seen, [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0])
        self.assertEqual(self.attempts(), 10)
        # A healthy link (the peer's first verified frame) starts the backoff over.
        self.dialer.mark_healthy()
        self.fail_last()
        self.assertEqual(self.retry_delays(), [0.5])

    def test_failed_upgrade_after_tcp_connect_still_backs_off(self) -> None:
        # The ClientService trap: a TCP connect resets ClientService's own count, so a peer that
        # accepts TCP and then drops the WebSocket would be redialled at a constant delay.
        self.dialer.resume()
        self.reactor.advance(0)
        seen = []
        for _ in range(4):
            factory = self.reactor.tcpClients[-1][2]
            protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9001))
            protocol.makeConnection(StringTransport())
            protocol.connectionLost(Failure(ConnectionDone()))
            [delay] = self.retry_delays()
            seen.append(delay)
            self.reactor.advance(delay)
        self.assertEqual(seen, [0.5, 1.0, 2.0, 4.0])
        self.assertEqual(self.mesh.events, [])  # never opened: the mesh heard nothing

    def test_pause_stops_dialling(self) -> None:
        self.dialer.resume()
        self.reactor.advance(0)
        self.fail_last()
        self.dialer.pause()
        self.reactor.advance(0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.reactor.advance(100)
        self.assertEqual(self.attempts(), 1)
        # Resuming after a pause dials at once; the failure count carries on.
        self.dialer.resume()
        self.reactor.advance(0)
        self.assertEqual(self.attempts(), 2)
        self.fail_last()
        self.assertEqual(self.retry_delays(), [1.0])

    def test_delayed_resume_and_pause_before_it(self) -> None:
        self.dialer.resume(2.0)
        self.reactor.advance(1.9)
        self.assertEqual(self.attempts(), 0)
        self.reactor.advance(0.1)
        self.reactor.advance(0)
        self.assertEqual(self.attempts(), 1)
        other = self.outgoing.dialer("127.0.0.1", 9002, "6fa459ea-ee8a-4ca4-894e-db77e160355e")
        other.resume(2.0)
        other.pause()
        self.reactor.advance(5)
        self.assertEqual(self.attempts(), 1)

    def test_retarget_dials_the_new_address(self) -> None:
        self.dialer.resume()
        self.reactor.advance(0)
        self.fail_last()
        self.dialer.retarget("127.0.0.1", 9999)
        self.reactor.advance(0)
        self.assertEqual(self.reactor.tcpClients[-1][:2], ("127.0.0.1", 9999))
        self.assertEqual(self.dialer.address, "127.0.0.1:9999")

    def test_not_running_means_not_dialling(self) -> None:
        outgoing = outgoing_links(RecordingPeerLinkEvents(), self.reactor)
        dialer = outgoing.dialer("127.0.0.1", 1)
        dialer.resume()
        self.reactor.advance(0)
        self.assertEqual(self.attempts(), 0)
        outgoing.startService()
        self.reactor.advance(0)
        self.assertEqual(self.attempts(), 1)
        outgoing.stopService()

    def test_link_events_reach_the_mesh_and_shutdown_says_goodbye(self) -> None:
        self.dialer.resume()
        self.reactor.advance(0)
        link = FakeLink("out-1")
        self.dialer.opened(link)
        self.assertEqual(self.mesh.events, [("opened", link, self.dialer)])
        stopped = self.outgoing.stopService()
        self.assertEqual(self.mesh.events[-1], ("goodbye", link))
        self.assertEqual(link.closed, (1001, "server shutting down"))
        self.assertNoResult(stopped)
        self.dialer.closed(link, True, 1001, None)
        self.assertEqual(self.mesh.events[-1], ("closed", link, "code 1001"))
        self.reactor.advance(0)
        self.successResultOf(stopped)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_remove_closes_without_goodbye(self) -> None:
        self.dialer.resume()
        self.reactor.advance(0)
        link = FakeLink("out-1")
        self.dialer.opened(link)
        self.outgoing.remove(self.dialer)
        self.assertEqual(link.closed, (1000, "replaced by another link"))
        self.assertNotIn(("goodbye", link), self.mesh.events)
        self.assertEqual(self.outgoing.dialers, [])

    def test_ipv6_endpoint(self) -> None:
        endpoint = self.outgoing.endpoint_for("::1", 9001)
        self.assertEqual(type(endpoint).__name__, "HostnameEndpoint")


class InMemoryJoinTests(SynchronousTestCase):
    """The real Autobahn client and server protocols over iosim: A joins B."""

    def node(self, server_id: str, key_index: int, clock: Clock):
        key = test_key(key_index)
        signer = FrameSigner(
            ServerIdentity(server_id, key, crypto.encode_public_key(key)),
            SynchronousWorkers(),
            lambda: 1_700_000_000_000,
        )
        hub = Hub(signer)
        presence = Presence(server_id)
        mesh = Mesh(
            signer,
            hub,
            presence,
            reactor=clock,
            advertise=("127.0.0.1", 9000 + key_index),
            now_ms=lambda: 1_700_000_000_000,
        )
        mesh.startService()
        return hub, mesh

    def test_join_over_real_protocols(self) -> None:
        clock = Clock()
        hub_b, mesh_b = self.node(B, 1, clock)
        _, mesh_a = self.node(A, 0, clock)
        outgoing = outgoing_links(mesh_a, MemoryReactorClock())
        dialer = outgoing.dialer("127.0.0.1", 9001, join=True)
        server_factory = SOCPServerFactory("ws://127.0.0.1:9001", hub_b)
        client_factory = PeerClientFactory(dialer, wire.MAX_FRAME_BYTES)
        client, server, pump = iosim.connectedServerAndClient(
            lambda: server_factory.buildProtocol(None), lambda: client_factory.buildProtocol(None)
        )
        pump.flush()
        self.assertEqual(mesh_a.connected_servers(), [B])
        self.assertEqual(mesh_b.connected_servers(), [A])
        self.assertTrue(client.outgoing)
        self.assertEqual((client.role, client.identity), ("server", B))
        self.assertEqual((server.role, server.identity), ("server", A))
        self.assertEqual(dialer.failures, 0)
        # A malformed frame from the introducer is dropped, never answered.
        server.sendMessage(b"not json")
        pump.flush()
        self.assertEqual(mesh_a.counters["rejected.BAD_JSON"], 1)
        # Closing: both sides see the link go.
        client.close(1000, "test over")
        pump.flush()
        self.assertEqual((mesh_a.connected_servers(), mesh_b.connected_servers()), ([], []))
