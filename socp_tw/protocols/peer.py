"""Outgoing server links: the WebSocket client protocol and its factory.

The protocol is as thin as the listening one: it parses frames and hands them to the
mesh, which owns every decision.  One connection is built per dial attempt by the
dialer that owns it (an :class:`~socp_tw.interfaces.IOutgoingLinkOwner`, in
``socp_tw.services.mesh.dialing``, which redials with backoff); the link reports its
open and close to that dialer and its frames to the mesh
(:class:`~socp_tw.interfaces.IPeerLinkEvents`).
"""

from __future__ import annotations

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.types import ConnectionResponse
from zope.interface import implementer

from socp_tw import __version__
from socp_tw.interfaces import ILink, IOutgoingLinkOwner
from socp_tw.logs import get_logger
from socp_tw.protocols.frames import FastFrames
from socp_tw.protocols.websocket import (
    CLOSE_NORMAL,
    CLOSE_POLICY,
    cancel_close_timer,
    close_link,
    discard,
    parse_message,
    send_overflow,
    tune_factory,
)
from socp_tw.transport.sender import OrderedSender

__all__ = ["PeerClientFactory", "SOCPPeerClientProtocol"]


@implementer(ILink)
class SOCPPeerClientProtocol(FastFrames, WebSocketClientProtocol):
    """An outgoing link to another server: decode frames, delegate to the mesh."""

    _log = get_logger("socp_tw.protocols.peer")
    outgoing = True

    def onConnect(self, response: ConnectionResponse) -> None:
        dialer: IOutgoingLinkOwner = self.factory.dialer
        self.link_id = dialer.new_link_id()
        self.peer = dialer.address
        self.role = "pending"
        self.identity: str | None = None
        self._opened = False
        self._overflowed = False

    def onOpen(self) -> None:
        self._sender = OrderedSender(self._write_frame, self.link_id)
        self._opened = True
        try:
            self.factory.dialer.opened(self)
        except Exception:
            self._log.failure("Mesh failed on outgoing link {link} open", link=self.link_id)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        mesh = self.factory.dialer.mesh
        envelope = parse_message(self, payload, isBinary, self.factory.max_frame_bytes, mesh.frame_rejected)
        if envelope is None:
            return
        try:
            mesh.frame_received(self, envelope)
        except Exception:
            self._log.failure(
                "Mesh failed on {type} frame from {link}", type=envelope.type, link=self.link_id
            )

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        cancel_close_timer(self)
        self.cancel_frame_timer()
        opened = getattr(self, "_opened", False)
        if opened:
            self._sender.close()
        try:
            self.factory.dialer.closed(self, opened, code, reason)
        except Exception:
            self._log.failure("Mesh failed on outgoing link close")

    # ILink

    def send(self, frame) -> None:
        sender = getattr(self, "_sender", None)
        if sender is None or self._overflowed:
            discard(frame)
            return
        dialer = self.factory.dialer
        why = send_overflow(self, len(sender), dialer.max_send_queue, dialer.max_send_queue_bytes)
        if why is not None:
            discard(frame)
            self._overflowed = True
            dialer.mesh.counters["closed.send_overflow"] += 1
            self._log.warn(
                "Closing link {link} to {peer}: it does not read what we send ({why})",
                link=self.link_id,
                peer=self.peer,
                why=why,
            )
            self.close(CLOSE_POLICY, "too slow: not reading")
            return
        sender.send(frame)

    def close(self, code: int = CLOSE_NORMAL, reason: str | None = None) -> None:
        close_link(self, code, reason)


class PeerClientFactory(WebSocketClientFactory):
    """Builds :class:`SOCPPeerClientProtocol` for one dialer (an :class:`IOutgoingLinkOwner`).

    The dialers (``socp_tw.services.mesh.dialing``) are given this class as their
    ``client_factory`` by ``socp_tw.tap``: the mesh never imports a protocol.
    """

    protocol = SOCPPeerClientProtocol
    noisy = False  # no "Starting factory" / "Stopping factory" line on every redial

    def __init__(self, dialer: IOutgoingLinkOwner, max_frame_bytes: int) -> None:
        super().__init__(dialer.url, useragent=f"socp-tw/{__version__}")
        self.dialer = dialer
        self.max_frame_bytes = max_frame_bytes
        tune_factory(self, max_frame_bytes)
