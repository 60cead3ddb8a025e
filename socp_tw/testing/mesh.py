"""An in-memory mesh: :class:`FakePeerLinks`, an :class:`IPeerLinks` linking servers by name."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from socp_tw import wire
from socp_tw.interfaces import ILink, IPeerLinks
from socp_tw.testing.links import FakeLink

__all__ = ["FakePeerLinks"]


@implementer(IPeerLinks)
class FakePeerLinks:
    """An in-memory mesh: servers are "linked" by naming them; sent frames are recorded."""

    def __init__(self, linked: list[str] | None = None) -> None:
        self.linked: set[str] = set(linked or [])
        self.keys: dict[str, Any] = {}
        self.sent: list[tuple[str, bytes]] = []
        self.broadcasts: list[tuple[bytes, str | None]] = []
        self.handlers: dict[str, Callable[..., None]] = {}
        self.preparers: dict[str, Callable[..., Any]] = {}
        self.counters: Counter[str] = Counter()
        self.observers: list[Callable[[], None]] = []
        #: Servers that confirm deliveries (``acks_deliveries``); time each was last heard from.
        self.acking: set[str] = set()
        self.last_heard: dict[str, float] = {}
        self.unresponsive_calls: list[tuple[str, float]] = []

    def connected_servers(self) -> list[str]:
        return sorted(self.linked)

    def acks_deliveries(self, server_id: str) -> bool:
        return server_id in self.acking

    def heard_since(self, server_id: str, when: float) -> bool:
        return server_id in self.linked and self.last_heard.get(server_id, float("-inf")) >= when

    def unresponsive(self, server_id: str, since: float) -> None:
        self.unresponsive_calls.append((server_id, since))

    def add_change_observer(self, callback: Callable[[], None]) -> None:
        self.observers.append(callback)

    def link(self, server_id: str) -> None:
        """Simulate a link to ``server_id`` coming up (observers are told, like the real mesh)."""
        if server_id not in self.linked:
            self.linked.add(server_id)
            for callback in list(self.observers):
                callback()

    def unlink(self, server_id: str) -> None:
        """Simulate the link to ``server_id`` going down."""
        if server_id in self.linked:
            self.linked.discard(server_id)
            for callback in list(self.observers):
                callback()

    def deliver(self, envelope: wire.Envelope, link: ILink | None = None) -> None:
        """Hand a verified server frame to the handler registered for its type (like the mesh)."""
        if link is None:
            link = FakeLink("fake-server", role="server", identity=envelope.from_)
        self.handlers[envelope.type](envelope, link)

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

    def relay(self, envelope: wire.Envelope, link: ILink) -> int:
        """Recorded like a broadcast of the frame as it came, excluding its arrival link."""
        raw = wire.encode_frame(
            envelope.type, envelope.from_, envelope.to, envelope.ts, envelope.payload, envelope.sig
        )
        return self.broadcast(raw, exclude=getattr(link, "link_id", None))

    def on_frame(
        self, type: str, handler: Callable[..., None], prepare: Callable[..., Any] | None = None
    ) -> None:
        self.handlers[type] = handler
        if prepare is not None:
            self.preparers[type] = prepare

    def sent_frames(self) -> list[tuple[str, dict]]:
        """(server_id, decoded frame) of everything sent to a server."""
        return [(server_id, json.loads(data)) for server_id, data in self.sent]
