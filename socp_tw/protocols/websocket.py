"""The listening side: one WebSocket port for users and servers (PROTOCOL.md §1).

The protocol is thin: it turns WebSocket messages into parsed envelopes (or a
precise ``FrameError``) and hands them to the hub; it owns no policy.
"""

from __future__ import annotations

import itertools

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionRequest
from zope.interface import implementer

from socp_tw import __version__, wire
from socp_tw.interfaces import IHub, ILink
from socp_tw.logs import get_logger
from socp_tw.protocols.links import OrderedSender

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009


class BinaryFrame(wire.FrameError):
    """SOCP frames are JSON text messages."""

    code = "BAD_FRAME"


def tune_factory(factory, max_frame_bytes: int) -> None:
    """Apply socp-tw's WebSocket options to an Autobahn server or client factory.

    Message and frame size are bounded (Autobahn's default is unlimited); an
    oversize message closes cleanly with 1009 instead of a dropped TCP connection;
    compression stays off (ciphertext doesn't compress, and CRIME); UTF-8 is checked
    by us so bad text gets an ERROR instead of a closed link; SOCP's own heartbeats
    replace Autobahn's auto-ping.
    """
    options = dict(
        maxMessagePayloadSize=max_frame_bytes,
        maxFramePayloadSize=max_frame_bytes,
        failByDrop=False,
        utf8validateIncoming=False,
        openHandshakeTimeout=15,
        closeHandshakeTimeout=5,
        autoPingInterval=0,
        tcpNoDelay=True,
    )
    if isinstance(factory, WebSocketServerFactory):
        options["perMessageCompressionAccept"] = lambda offers: None
    factory.setProtocolOptions(**options)


def close_link(protocol: WebSocketProtocol, code: int, reason: str | None) -> None:
    """Start a clean close with any RFC 6455 code (Autobahn's ``sendClose`` allows only 1000/3000+)."""
    if protocol.state != WebSocketProtocol.STATE_OPEN:
        if protocol.state == WebSocketProtocol.STATE_CONNECTING:
            protocol.dropConnection(abort=True)
        return
    protocol.sendCloseFrame(code=code, reasonUtf8=encode_truncate(reason or "", 123), isReply=False)


def cancel_close_timer(protocol: WebSocketProtocol) -> None:
    """Cancel Autobahn's close-handshake timer, which it leaves running when the TCP
    connection drops before the peer's close reply (a stray timer after the link is gone)."""
    timer = getattr(protocol, "closeHandshakeTimeoutCall", None)
    if timer is not None:
        if timer.active():
            timer.cancel()
        protocol.closeHandshakeTimeoutCall = None


@implementer(ILink)
class SOCPServerProtocol(WebSocketServerProtocol):
    """An accepted connection (user or server): decode frames, delegate to the hub."""

    _log = get_logger("socp_tw.protocols.websocket")
    outgoing = False

    def onConnect(self, request: ConnectionRequest) -> None:
        self.link_id = f"in-{next(self.factory.link_ids)}"
        self.peer = request.peer.removeprefix("tcp:")
        self.role = "pending"
        self.identity: str | None = None
        self._sender = OrderedSender(self._write_frame, self.link_id)
        return None

    def onOpen(self) -> None:
        try:
            self.factory.hub.link_opened(self)
        except Exception:
            self._log.failure("Hub failed on link {link} open", link=self.link_id)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        hub: IHub = self.factory.hub
        try:
            if isBinary:
                raise BinaryFrame("binary WebSocket messages are not SOCP frames; send JSON text")
            envelope = wire.parse_envelope(payload, max_bytes=self.factory.max_frame_bytes)
        except wire.FrameError as error:
            try:
                hub.frame_rejected(self, error)
            except Exception:
                self._log.failure("Hub failed rejecting a frame on {link}", link=self.link_id)
            return
        try:
            hub.frame_received(self, envelope)
        except Exception:
            self._log.failure(
                "Handler failed on {type} frame from {link}", type=envelope.type, link=self.link_id
            )
            try:
                hub.send_error(self, "INTERNAL", f"the server failed handling {envelope.type}")
            except Exception:
                self._log.failure("Could not report a failure to {link}", link=self.link_id)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        cancel_close_timer(self)
        sender = getattr(self, "_sender", None)
        if sender is None:  # the handshake never completed
            return
        sender.close()
        if code == CLOSE_TOO_BIG or self.localCloseCode == CLOSE_TOO_BIG:
            self.factory.hub.counters["closed.too_big"] += 1
        try:
            self.factory.hub.link_closed(self, reason or (f"code {code}" if code else "connection lost"))
        except Exception:
            self._log.failure("Hub failed on link {link} close", link=self.link_id)

    # ILink

    def send(self, frame) -> None:
        self._sender.send(frame)

    def close(self, code: int = CLOSE_NORMAL, reason: str | None = None) -> None:
        close_link(self, code, reason)

    def _write_frame(self, data: bytes) -> None:
        self.sendMessage(data, isBinary=False)


class SOCPServerFactory(WebSocketServerFactory):
    """Builds :class:`SOCPServerProtocol` for the listening port."""

    protocol = SOCPServerProtocol

    def __init__(self, url: str | None, hub: IHub, max_frame_bytes: int = wire.MAX_FRAME_BYTES) -> None:
        super().__init__(url, server=f"socp-tw/{__version__}")
        self.hub = IHub(hub)
        self.max_frame_bytes = max_frame_bytes
        self.link_ids = itertools.count(1)
        tune_factory(self, max_frame_bytes)
