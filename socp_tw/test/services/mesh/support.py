"""Shared fixtures of the mesh tests: server ids and keys, fake dialers, a Node, MeshTestCase.

Peers are simulated by signing frames with their own test keys and handing them to
the mesh the way the hub (incoming links) or the peer protocol (outgoing links) do.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import crypto, wire
from socp_tw.identity import ServerIdentity
from socp_tw.services.hub import Hub
from socp_tw.services.mesh import Mesh
from socp_tw.services.presence import Presence
from socp_tw.services.userkeys import UserKeys
from socp_tw.signer import FrameSigner
from socp_tw.test.keys import test_key, vector_id
from socp_tw.testing import FakeDialer, FakeLink, FakeOutgoingLinks, SynchronousWorkers

BASE_MS = 1_700_000_000_000
# Ordered ids: LOW < HERE < S1 < S2 < S3 (the dial-race rule compares them).
LOW = "16fd2706-8baf-433b-82eb-8c7fada847da"
HERE = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
S1 = "6fa459ea-ee8a-4ca4-894e-db77e160355e"
S2 = "8c3e5a1b-2d4f-4e6a-9b7c-1d2e3f4a5b6c"
S3 = "9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
KEYS = {HERE: 0, S1: 1, S2: 2, S3: 3, LOW: 4}
ALICE = vector_id("alice")
BOB = vector_id("bob")
USER = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def pub(server_id: str) -> str:
    return crypto.encode_public_key(test_key(KEYS[server_id]))


def user_pub(index: int = 6) -> str:
    return crypto.encode_public_key(test_key(index))


FakeOutgoing = FakeOutgoingLinks  # the name these tests use


class Node:
    """One server under test: signer, hub, presence and mesh on a shared Clock."""

    def __init__(
        self, case: SynchronousTestCase, server_id: str, clock: Clock, port: int = 9000, **kwargs
    ) -> None:
        self.server_id = server_id
        self.clock = clock
        self.now_ms = lambda: BASE_MS + int(clock.seconds() * 1000)
        key = test_key(KEYS[server_id])
        identity = ServerIdentity(server_id, key, crypto.encode_public_key(key))
        self.workers = SynchronousWorkers()  # counts the signatures made
        self.signer = FrameSigner(identity, self.workers, now_ms=self.now_ms)
        self.hub = Hub(self.signer)
        self.presence = Presence(server_id)
        kwargs.setdefault("advertise", ("127.0.0.1", port))
        kwargs.setdefault("user_keys", UserKeys())
        self.mesh = Mesh(self.signer, self.hub, self.presence, reactor=clock, now_ms=self.now_ms, **kwargs)
        self.outgoing = FakeOutgoing()
        self.mesh.set_outgoing(self.outgoing)
        self.mesh.startService()
        self.changes = 0
        self.mesh.add_change_observer(self.count_change)
        case.addCleanup(self.stop)

    def count_change(self) -> None:
        self.changes += 1

    def stop(self) -> None:
        if self.mesh.running:
            self.mesh.stopService()
        self.clock.advance(self.mesh.stop_timeout + 1)


class MeshTestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.node = Node(self, HERE, self.clock)
        self.mesh = self.node.mesh
        self.hub = self.node.hub
        self.presence = self.node.presence

    def lines(self, level: LogLevel | None = None) -> list[str]:
        return [formatEvent(e) for e in self.events if level is None or e.get("log_level") == level]

    def now(self) -> int:
        return self.node.now_ms()

    def frame(
        self,
        type: str,
        from_: str,
        payload: dict,
        *,
        to: str = "*",
        ts: int | None = None,
        signer: str | None = None,
        sig: str | None = None,
    ) -> bytes:
        """A frame as server ``from_`` sends it, signed with ``signer``'s key (default: from_'s)."""
        if sig is None:
            sig = crypto.sign_payload(test_key(KEYS[signer or from_]), payload)
        return wire.encode_frame(type, from_, to, self.now() if ts is None else ts, payload, sig)

    def receive(self, link: FakeLink, data: bytes) -> None:
        """Deliver a frame the way the hub (incoming) or the peer protocol (outgoing) does."""
        envelope = wire.parse_envelope(data)
        if link.outgoing:
            self.mesh.frame_received(link, envelope)
        else:
            self.hub.frame_received(link, envelope)

    def address(self, server_id: str, port: int = 9100) -> dict:
        return {"host": "127.0.0.1", "port": port + KEYS[server_id], "pubkey": pub(server_id)}

    def link_in(self, server_id: str, link_id: str | None = None) -> FakeLink:
        """An incoming link identified by SERVER_HELLO_LINK from ``server_id``."""
        link = FakeLink(link_id or f"in-{server_id[:4]}-{len(self.hub.links)}")
        self.hub.link_opened(link)
        self.receive(link, self.frame("SERVER_HELLO_LINK", server_id, self.address(server_id), to=HERE))
        return link

    def link_out(self, server_id: str, link_id: str | None = None) -> tuple[FakeLink, FakeDialer]:
        """An outgoing link we dialled to a server we know (SERVER_HELLO_LINK sent on open)."""
        dialer = FakeDialer("127.0.0.1", 9100 + KEYS[server_id], server_id)
        link = FakeLink(link_id or f"out-{server_id[:4]}")
        link.outgoing = True
        self.mesh.outgoing_opened(link, dialer)
        return link, dialer

    def types(self, link: FakeLink) -> list[str]:
        return [f["type"] for f in link.frames()]


class TwoLinksTestCase(MeshTestCase):
    """Two identified incoming links, from S1 and S2, their greetings cleared."""

    def setUp(self) -> None:
        super().setUp()
        self.l1 = self.link_in(S1)
        self.l2 = self.link_in(S2)
        self.l1.sent.clear()
        self.l2.sent.clear()

    def advertise(self, origin: str = S1, user: str = USER, server: str | None = None, **kwargs) -> bytes:
        payload = {
            "user_id": user,
            "server_id": server or origin,
            "pubkey": user_pub(),
            "meta": {"pubkey": user_pub()},
        }
        return self.frame("USER_ADVERTISE", origin, payload, **kwargs)


class DeliverFrames:
    """A SERVER_DELIVER for USER from ``origin`` (mixed into a MeshTestCase)."""

    def deliver(self, origin: str, to: str, **kwargs) -> bytes:
        return self.frame(
            "SERVER_DELIVER", origin, {"user_id": USER, "ciphertext": "c", "sender": ALICE}, to=to, **kwargs
        )
