"""The listening side: one WebSocket port for users and servers (PROTOCOL.md §1).

The protocol is thin: it turns WebSocket messages into parsed envelopes (or a
precise ``FrameError``) and hands them to the hub; it owns no policy.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.util import encode_truncate
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.internet.error import AlreadyCalled, AlreadyCancelled
from zope.interface import implementer

from socp_tw import __version__, wire
from socp_tw.interfaces import IHub, ILink
from socp_tw.limits import DEFAULT_LIMITS, Limits
from socp_tw.logs import get_logger
from socp_tw.protocols.frames import FastFrames
from socp_tw.transport.backlog import send_backlog
from socp_tw.transport.sender import OrderedSender

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009

#: What Autobahn keeps of the opening handshake; dropped once the link is open (onOpen).
_HANDSHAKE_DATA = (
    "http_request_data",
    "http_status_line",
    "http_headers",
    "http_request_uri",
    "http_request_path",
    "http_request_params",
    "http_request_host",
    "http_response_data",
    "websocket_extensions",
    "_wskey",
)


class _SendQueue(list):
    """Autobahn's queue of frames to send later, as a list: our frames never use it (they are
    written directly, ``FastFrames._write_frame``), so it is empty for the life of a link, and
    an empty ``deque`` holds a 64-slot block (~760 bytes a connection) where a list holds none.
    Autobahn uses only ``len``, ``append`` and ``popleft``."""

    __slots__ = ()

    def popleft(self):
        return self.pop(0)


TRANSPORT_BUFFER = 64 * 1024  # Twisted's FileDescriptor.bufferSize: past it, producers are paused


class BinaryFrame(wire.FrameError):
    """SOCP frames are JSON text messages."""

    code = "BAD_FRAME"


def tune_factory(
    factory, max_frame_bytes: int, frame_timeout: float = DEFAULT_LIMITS.frame_timeout, clock=None
) -> None:
    """Apply socp-tw's WebSocket options to an Autobahn server or client factory.

    Message and frame size are bounded (Autobahn's default is unlimited); an
    oversize message closes cleanly with 1009 instead of a dropped TCP connection;
    compression stays off (ciphertext doesn't compress, and CRIME); UTF-8 is checked
    by us so bad text gets an ERROR instead of a closed link; SOCP's own heartbeats
    replace Autobahn's auto-ping.  A frame that has started must arrive in full within
    ``frame_timeout`` seconds on ``clock`` (the reactor by default; ``FastFrames``).
    """
    if clock is None:
        from twisted.internet import reactor as clock
    factory.frame_timeout = frame_timeout
    factory.frame_clock = clock
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


def send_overflow(protocol: WebSocketProtocol, queued: int, max_frames: int, max_bytes: int) -> str | None:
    """Why a link's outgoing backlog is past its bounds (a peer that does not read), or None.

    ``queued`` frames wait in its :class:`OrderedSender` for their signatures; the bytes are
    those not yet taken by the kernel: ready frames held in the sender while the transport
    is full, and the transport's buffer (see ``send_backlog``).
    """
    if queued >= max_frames:
        return f"{queued} frames waiting to be sent"
    buffered = send_backlog(protocol)
    if buffered > max_bytes:
        return f"{buffered} bytes waiting to be read"
    return None


def parse_message(
    link, payload: bytes, is_binary: bool, max_bytes: int, reject: Callable[[ILink, wire.FrameError], None]
) -> wire.Envelope | None:
    """Parse one WebSocket message into an envelope, or hand its :class:`wire.FrameError` to
    ``reject`` (the hub's or the mesh's ``frame_rejected``) and return None.  Whatever
    ``reject`` raises is logged, never passed to Autobahn (which would drop the connection)."""
    try:
        if is_binary:
            raise BinaryFrame("binary WebSocket messages are not SOCP frames; send JSON text")
        return wire.parse_envelope(payload, max_bytes=max_bytes)
    except wire.FrameError as error:
        try:
            reject(link, error)
        except Exception:
            link._log.failure("Failed rejecting a frame on {link}", link=link.link_id)
        return None


def discard(frame) -> None:
    """Drop a frame nobody will send (a failing Deferred must not be left unhandled)."""
    if isinstance(frame, Deferred):
        frame.addErrback(lambda _: None)


def cancel_close_timer(protocol: WebSocketProtocol) -> None:
    """Cancel Autobahn's close-handshake timer, which it leaves running when the TCP
    connection drops before the peer's close reply (a stray timer after the link is gone)."""
    timer = getattr(protocol, "closeHandshakeTimeoutCall", None)
    if timer is None:
        return
    protocol.closeHandshakeTimeoutCall = None
    try:
        # A txaio batched call (no ``active()``), or a plain IDelayedCall.
        timer.cancel()
    except (AttributeError, ValueError, AlreadyCalled, AlreadyCancelled):
        pass  # it already ran, or was cancelled


@implementer(ILink)
class SOCPServerProtocol(FastFrames, WebSocketServerProtocol):
    """An accepted connection (user or server): decode frames, delegate to the hub."""

    _log = get_logger("socp_tw.protocols.websocket")
    outgoing = False

    def onConnect(self, request: ConnectionRequest) -> None:
        self.link_id = f"in-{next(self.factory.link_ids)}"
        self.peer = request.peer.removeprefix("tcp:")
        self.role = "pending"
        self.identity: str | None = None
        self._sender = OrderedSender(self._write_frame, self.link_id)
        self._overflowed = False
        self._flow_controlled = False
        try:
            # Flow control: ready frames wait in the sender (shared, uncopied) while the
            # transport's buffer is full.
            self.transport.registerProducer(self._sender, True)
        except (AttributeError, RuntimeError):
            pass  # a transport without producers, or one already registered: write through
        else:
            self._flow_controlled = self.factory.flow_control_bounds_backlog
        return None

    def onOpen(self) -> None:
        # The handshake is over: Autobahn reads none of its HTTP request/response data again,
        # but would keep it (~1 KiB) for the life of the connection.
        for name in _HANDSHAKE_DATA:
            if hasattr(self, name):
                setattr(self, name, None)
        if not self.send_queue:
            self.send_queue = _SendQueue()
        try:
            self.factory.hub.link_opened(self)
        except Exception:
            self._log.failure("Hub failed on link {link} open", link=self.link_id)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        hub: IHub = self.factory.hub
        envelope = parse_message(self, payload, isBinary, self.factory.max_frame_bytes, hub.frame_rejected)
        if envelope is None:
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
        self.cancel_frame_timer()
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

    def frame_too_slow(self, timeout: float) -> None:
        self.factory.hub.counters["closed.frame_timeout"] += 1
        super().frame_too_slow(timeout)

    # ILink

    def send(self, frame) -> None:
        factory = self.factory
        sender = self._sender
        if self._flow_controlled and not sender.paused and sender.pending < factory.max_send_queue:
            # The transport is taking what we write (it has not paused us), so no more than its
            # buffer size and one frame wait unsent: below the byte bound, nothing to measure.
            sender.send(frame)
            return
        why = None
        if not self._overflowed:
            why = send_overflow(
                self, self._sender.pending, factory.max_send_queue, factory.max_send_queue_bytes
            )
        if self._overflowed or why is not None:
            discard(frame)
            if not self._overflowed:
                self._overflowed = True
                factory.hub.counters["closed.send_overflow"] += 1
                self._log.warn(
                    "Closing link {link} ({who}): it does not read what we send ({why})",
                    link=self.link_id,
                    who=self.identity or self.peer,
                    why=why,
                )
                self.close(CLOSE_POLICY, "too slow: not reading")
            return
        self._sender.send(frame)

    def close(self, code: int = CLOSE_NORMAL, reason: str | None = None) -> None:
        close_link(self, code, reason)

    @property
    def queued_bytes(self) -> int:
        """Bytes of ready frames waiting in this link's sender (read by ``send_backlog``)."""
        sender = getattr(self, "_sender", None)
        return sender.held_bytes if sender is not None else 0


def _as_class_attribute(value):
    """A function stored on a class would become a method: keep an option that is one
    (``perMessageCompressionAccept``) a plain function, as it is on the factory."""
    return staticmethod(value) if callable(value) else value


class SOCPServerFactory(WebSocketServerFactory):
    """Builds :class:`SOCPServerProtocol` for the listening port."""

    protocol = SOCPServerProtocol

    def __init__(
        self,
        url: str | None,
        hub: IHub,
        max_frame_bytes: int = wire.MAX_FRAME_BYTES,
        limits: Limits = DEFAULT_LIMITS,
        clock=None,
    ) -> None:
        super().__init__(url, server=f"socp-tw/{__version__}")
        self.hub = IHub(hub)
        self.max_frame_bytes = max_frame_bytes
        self.max_send_queue = limits.max_send_queue
        self.max_send_queue_bytes = limits.max_send_queue_bytes
        #: While a transport has not paused its producer it holds at most its buffer size
        #: (64 KiB) plus one frame; with a byte bound above that, sends skip measuring.
        self.flow_control_bounds_backlog = limits.max_send_queue_bytes > TRANSPORT_BUFFER + max_frame_bytes
        self.link_ids = itertools.count(1)
        tune_factory(self, max_frame_bytes, limits.frame_timeout, clock)

    def setProtocolOptions(self, **options) -> None:
        super().setProtocolOptions(**options)
        self._share_options()

    def _share_options(self) -> None:
        """Give the connections a protocol class that carries this factory's options.

        Autobahn copies its ~30 options (sizes, timeouts, masking...) from the factory into
        every connection's instance dict, unless the protocol class already has them: then
        the connection reads the class's.  A subclass per factory holding the same values
        keeps them once instead of once per connection (~1.5 KiB per connected user).
        """
        base = self.__dict__.get("_protocol_base") or self.protocol
        self._protocol_base = base
        options = {name: _as_class_attribute(getattr(self, name)) for name in base.CONFIG_ATTRS}
        self.protocol = type(base.__name__, (base,), {"__module__": base.__module__, **options})
