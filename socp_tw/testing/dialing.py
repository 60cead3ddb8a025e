"""Fakes of the mesh/dialing seam: :class:`FakeDialer`, :class:`FakeOutgoingLinks` and
:class:`RecordingPeerLinkEvents` (the mesh as outgoing links see it)."""

from __future__ import annotations

from collections import Counter

from twisted.internet.defer import Deferred
from zope.interface import implementer

from socp_tw import wire
from socp_tw.interfaces import IDialer, ILink, IOutgoingLinks, IPeerLinkEvents

__all__ = ["FakeDialer", "FakeOutgoingLinks", "RecordingPeerLinkEvents"]


@implementer(IDialer)
class FakeDialer:
    """A dialer that never dials: records what the mesh asks of it."""

    def __init__(self, host: str, port: int, server_id: str | None = None, join: bool = False) -> None:
        self.host, self.port, self.server_id, self.join = host, port, server_id, join
        self.pem = False
        self.resumed: list[float] = []
        self.paused = 0
        self.healthy = 0
        self.retargeted: list[tuple[str, int]] = []
        self.wanted = False  # resumed and not paused since (a delayed resume counts at once: no clock)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def resume(self, delay: float = 0.0) -> None:
        self.resumed.append(delay)
        self.wanted = True

    def pause(self) -> None:
        self.paused += 1
        self.wanted = False

    def retarget(self, host: str, port: int) -> None:
        self.retargeted.append((host, port))
        self.host, self.port = host, port

    def mark_healthy(self) -> None:
        self.healthy += 1


@implementer(IOutgoingLinks)
class FakeOutgoingLinks:
    """Makes :class:`FakeDialer`s and records which were removed."""

    def __init__(self) -> None:
        self.dialers: list[FakeDialer] = []
        self.removed: list[FakeDialer] = []

    def dialer(self, host: str, port: int, server_id: str | None = None, join: bool = False) -> FakeDialer:
        dialer = FakeDialer(host, port, server_id, join)
        self.dialers.append(dialer)
        return dialer

    def remove(self, dialer: FakeDialer) -> Deferred:
        self.removed.append(dialer)
        return Deferred()

    def for_server(self, server_id: str) -> list[FakeDialer]:
        return [d for d in self.dialers if d.server_id == server_id]


@implementer(IPeerLinkEvents)
class RecordingPeerLinkEvents:
    """Stands in for the mesh behind outgoing links: records every event in order."""

    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.outgoing: IOutgoingLinks | None = None
        self.counters: Counter[str] = Counter()

    def set_outgoing(self, outgoing: IOutgoingLinks) -> None:
        self.outgoing = outgoing

    def outgoing_opened(self, link: ILink, dialer: IDialer) -> None:
        self.events.append(("opened", link, dialer))

    def frame_received(self, link: ILink, envelope: wire.Envelope) -> None:
        self.events.append(("frame", link, envelope))

    def frame_rejected(self, link: ILink, error: wire.FrameError) -> None:
        self.events.append(("rejected", link, error))
        self.counters["rejected." + error.code] += 1  # as the mesh counts them

    def link_closed(self, link: ILink, reason: str | None) -> None:
        self.events.append(("closed", link, reason))

    def goodbye(self, link: ILink) -> None:
        self.events.append(("goodbye", link))
