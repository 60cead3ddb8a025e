"""Fake links: :class:`FakeLink` records what is sent on it; :class:`RecordingHandler` what it receives."""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from zope.interface import implementer

from socp_tw import wire
from socp_tw.interfaces import ILink, ILinkHandler
from socp_tw.transport.sender import OrderedSender

__all__ = ["FakeLink", "RecordingHandler"]


@implementer(ILink)
class FakeLink:
    """A link that records what is sent on it, in call order like a real link.

    Sending goes through the real :class:`OrderedSender`: a frame still being signed
    holds back the ones sent after it, and a frame whose signing failed is skipped.
    """

    def __init__(self, link_id: str = "fake-1", role: str = "pending", identity: str | None = None) -> None:
        self.link_id = link_id
        self.peer = "127.0.0.1:1"
        self.role = role
        self.identity = identity
        self.outgoing = False
        self.sent: list[bytes] = []
        self.closed: tuple[int, str | None] | None = None
        self.sender = OrderedSender(self.sent.append, describe=link_id)

    def send(self, frame: bytes | Deferred) -> None:
        self.sender.send(frame)

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
