"""A raw WebSocket client for loopback tests: send anything, collect every frame received."""

from __future__ import annotations

import json

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, DeferredQueue

__all__ = ["CollectingClientFactory"]


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
