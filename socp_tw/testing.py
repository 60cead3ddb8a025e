"""In-memory fakes of socp-tw's interfaces, and helpers for loopback tests.

Shipped with the package (not under ``test/``) so other projects can test against
our contracts.  Every fake here is checked by the same contract tests as the real
implementation.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, DeferredQueue, fail, succeed
from zope.interface import implementer

from socp_tw import crypto, wire
from socp_tw.interfaces import ILink, ILinkHandler, IPeerLinks, ISigner, IWorkers


@implementer(IWorkers)
class SynchronousWorkers:
    """Run work at once on the calling thread: deterministic tests, no threads."""

    size = 1

    def __init__(self) -> None:
        self.calls = 0

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        self.calls += 1
        try:
            return succeed(f(*args, **kwargs))
        except Exception:
            return fail()


@implementer(ILink)
class FakeLink:
    """A link that records what is sent on it, decoded."""

    def __init__(self, link_id: str = "fake-1", role: str = "pending", identity: str | None = None) -> None:
        self.link_id = link_id
        self.peer = "127.0.0.1:1"
        self.role = role
        self.identity = identity
        self.outgoing = False
        self.sent: list[bytes] = []
        self.closed: tuple[int, str | None] | None = None

    def send(self, frame: bytes | Deferred) -> None:
        if isinstance(frame, Deferred):
            frame.addCallback(self.sent.append)
        else:
            self.sent.append(frame)

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason)

    def frames(self) -> list[dict]:
        """Everything sent so far, parsed as JSON."""
        return [json.loads(f) for f in self.sent]


@implementer(ILinkHandler)
class RecordingHandler:
    """A link handler that records what it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[ILink, wire.Envelope]] = []
        self.closed: list[ILink] = []

    def frame_received(self, link: ILink, envelope: wire.Envelope) -> None:
        self.received.append((link, envelope))

    def link_closed(self, link: ILink, reason: str | None) -> None:
        self.closed.append(link)


@implementer(IPeerLinks)
class FakePeerLinks:
    """An in-memory mesh: servers are "linked" by naming them; sent frames are recorded."""

    def __init__(self, linked: list[str] | None = None) -> None:
        self.linked: set[str] = set(linked or [])
        self.keys: dict[str, Any] = {}
        self.sent: list[tuple[str, bytes]] = []
        self.broadcasts: list[tuple[bytes, str | None]] = []
        self.handlers: dict[str, Callable[..., None]] = {}

    def connected_servers(self) -> list[str]:
        return sorted(self.linked)

    def server_key(self, server_id: str) -> Any:
        return self.keys.get(server_id)

    def send_to_server(self, server_id: str, frame: bytes | Deferred) -> bool:
        if server_id not in self.linked:
            return False
        if isinstance(frame, Deferred):
            frame.addCallback(lambda data: self.sent.append((server_id, data)))
        else:
            self.sent.append((server_id, frame))
        return True

    def broadcast(self, frame: bytes | Deferred, exclude: str | None = None) -> int:
        if isinstance(frame, Deferred):
            frame.addCallback(lambda data: self.broadcasts.append((data, exclude)))
        else:
            self.broadcasts.append((frame, exclude))
        return len(self.linked)

    def on_frame(self, type: str, handler: Callable[..., None]) -> None:
        self.handlers[type] = handler

    def sent_frames(self) -> list[tuple[str, dict]]:
        """(server_id, decoded frame) of everything sent to a server."""
        return [(server_id, json.loads(data)) for server_id, data in self.sent]


def verify_server_frame(frame: dict, public_key_text: str) -> bool:
    """True if ``frame``'s transport signature verifies with ``public_key_text``."""
    return crypto.verify_payload(crypto.load_public_key(public_key_text), frame["payload"], frame["sig"])


class _CollectingProtocol(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.proto = self
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.messages.put(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.close_info = (wasClean, code, reason)
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"closed before open: {code} {reason}"))
        self.factory.closed.callback((code, reason))


class CollectingClientFactory(WebSocketClientFactory):
    """A raw WebSocket client for tests: send anything, collect every frame received."""

    protocol = _CollectingProtocol

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.opened: Deferred = Deferred()
        self.closed: Deferred = Deferred()
        self.messages: DeferredQueue = DeferredQueue()
        self.close_info: tuple | None = None
        self.proto: WebSocketClientProtocol | None = None

    def send(self, data: bytes | str | dict, binary: bool = False) -> None:
        """Send raw bytes, text, or a dict as JSON."""
        if isinstance(data, dict):
            data = json.dumps(data)
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.proto.sendMessage(data, isBinary=binary)


__all__ = [
    "CollectingClientFactory",
    "FakeLink",
    "FakePeerLinks",
    "ISigner",
    "RecordingHandler",
    "SynchronousWorkers",
    "verify_server_frame",
]
