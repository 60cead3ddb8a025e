"""Start real socp servers on 127.0.0.1 port 0 for end-to-end tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from socp_tw import wire
from socp_tw.identity import IDENTITY_FILE, KEY_FILE
from socp_tw.protocols.websocket import SOCPServerFactory
from socp_tw.tap import Options, makeService
from socp_tw.test.keys import test_key
from socp_tw.testing import CollectingClientFactory

#: A client's opening handshake (RFC 6455 §1.3's example key) for protocols over StringTransport.
HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1:9\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def open_server_link(case: TestCase, hub, protocol_class: type | None = None, **factory_options):
    """A listening-side SOCP protocol over a ``StringTransport``, its WebSocket handshake done.

    ``factory_options`` go to :class:`SOCPServerFactory` (``limits``, ``max_frame_bytes``).
    At cleanup the connection is lost and the handshake timers Autobahn left on the global
    reactor are cancelled.  Returns ``(protocol, transport)``; the transport holds only what
    was written after the handshake.
    """
    timers = set(reactor.getDelayedCalls())

    def cancel_new_timers() -> None:
        for call in reactor.getDelayedCalls():
            if call not in timers and call.active():
                call.cancel()

    case.addCleanup(cancel_new_timers)
    factory = SOCPServerFactory("ws://127.0.0.1:9", hub, **factory_options)
    if protocol_class is not None:
        factory.protocol = protocol_class
    protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5555))
    transport = StringTransport()
    protocol.makeConnection(transport)
    case.addCleanup(protocol.connectionLost, Failure(ConnectionError("test over")))
    protocol.dataReceived(HANDSHAKE)
    case.assertIn(b"101 Switching Protocols", transport.value())
    transport.clear()
    return protocol, transport


def prepare_data_dir(case: TestCase, key_index: int, server_id: str | None = None) -> str:
    """A data dir holding a pre-made identity, so tests skip the 0.5 s key generation."""
    path = Path(case.mktemp())
    path.mkdir(parents=True, mode=0o700)
    key = test_key(key_index)
    (path / KEY_FILE).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(path / KEY_FILE, 0o600)
    (path / IDENTITY_FILE).write_text(json.dumps({"server_id": server_id or wire.new_uuid4()}))
    return str(path)


class RunningServer:
    """A started server service and what tests need to reach it."""

    def __init__(
        self,
        case: TestCase,
        key_index: int = 0,
        extra_args: list[str] | None = None,
        data_dir: str | None = None,
    ) -> None:
        self.data_dir = data_dir or prepare_data_dir(case, key_index)
        config = Options()
        config.parseOptions(["--bind", "ws://127.0.0.1:0", "--data-dir", self.data_dir, *(extra_args or [])])
        self.service = makeService(config)
        self.service.startService()
        listener = self.service.getServiceNamed("listener")
        self.url: str = listener.url
        self.port: int = listener.port.getHost().port
        self.server_id: str = self.service.identity.server_id
        self.public_key_text: str = self.service.identity.public_key_text
        self.hub = self.service.getServiceNamed("hub")
        self._stopped = False

    def stop(self) -> Deferred:
        if self._stopped:
            return Deferred.fromCoroutine(_none())
        self._stopped = True
        return self.service.stopService()


async def _none() -> None:
    return None


@inlineCallbacks
def connect_raw(case: TestCase, url: str):
    """Open a raw WebSocket to ``url``; closed (and waited for) at test cleanup."""
    from autobahn.twisted.websocket import connectWS

    factory = CollectingClientFactory(url)
    connector = connectWS(factory)
    protocol = yield factory.opened

    @inlineCallbacks
    def cleanup():
        if not factory.closed.called:
            protocol.sendClose(1000)
            yield factory.closed
        connector.disconnect()

    case.addCleanup(cleanup)
    return factory


class MeshServer(RunningServer):
    """A :class:`RunningServer` whose mesh uses short test intervals, with its mesh services at hand.

    ``bind`` lets a restart reuse a port; ``tune`` may adjust the service graph before it starts.
    """

    def __init__(
        self,
        case: TestCase,
        key_index: int = 0,
        extra_args: list[str] | None = None,
        data_dir: str | None = None,
        *,
        bind: str = "ws://127.0.0.1:0",
        heartbeat_interval: float = 0.5,
        dead_after: float = 20.0,
        withdraw_after: float = 0.3,
        base_delay: float = 0.05,
        max_delay: float = 0.5,
        tune=None,
    ) -> None:
        self.data_dir = data_dir or prepare_data_dir(case, key_index)
        config = Options()
        config.parseOptions(["--bind", bind, "--data-dir", self.data_dir, *(extra_args or [])])
        self.service = makeService(config)
        self.mesh = self.service.getServiceNamed("mesh")
        self.presence = self.service.getServiceNamed("presence")
        self.outgoing = self.service.getServiceNamed("outgoing")
        self.mesh.heartbeat_interval = heartbeat_interval
        self.mesh.dead_after = dead_after
        self.mesh.withdraw_after = withdraw_after
        self.outgoing.base_delay = base_delay
        self.outgoing.max_delay = max_delay
        if tune is not None:
            tune(self)
        self.service.startService()
        listener = self.service.getServiceNamed("listener")
        self.url = listener.url
        self.port = listener.port.getHost().port
        self.server_id = self.service.identity.server_id
        self.public_key_text = self.service.identity.public_key_text
        self.hub = self.service.getServiceNamed("hub")
        self._stopped = False
        case.addCleanup(self.stop)

    def crash(self) -> Deferred:
        """Die like a killed process: abort every connection (no close handshake, no
        CTRL_CLOSE), then stop the services so the test leaves a clean reactor."""
        links = list(self.hub.links.values()) + [s.link for s in self.mesh._links.values()]
        for link in links:
            transport = getattr(link, "transport", None)
            if transport is not None:
                # No close frame can leave an aborted connection: don't leave Autobahn waiting
                # for the reply with a timer (trial would find it in the reactor).
                link.closeHandshakeTimeout = 0
                transport.abortConnection()
        return self.stop()


def full_mesh(servers) -> bool:
    """True when every server has exactly one live link to each of the others."""
    ids = {s.server_id for s in servers}
    return all(set(s.mesh.connected_servers()) == ids - {s.server_id} for s in servers)


def settled(servers) -> bool:
    """A full mesh with no spare link left (duplicates closed, no join in progress)."""
    return full_mesh(servers) and all(s.mesh.open_links() == len(servers) - 1 for s in servers)


__all__ = [
    "MeshServer",
    "RunningServer",
    "connect_raw",
    "full_mesh",
    "prepare_data_dir",
    "reactor",
    "settled",
]
