"""How SOCP links write WebSocket frames: one final text frame per SOCP frame, sent at once.

A frame that has started must complete within the factory's ``frame_timeout`` (default
30 s, ``Limits.frame_timeout``), and a fragmented message likewise: otherwise the link is
closed (1008) and logged.  Without it a peer sending a frame one byte a second would hold
its connection, and a slot, forever (the identify and auth timeouts end once logged in).
The bound is measured per frame (per message while fragments arrive), from the read that
left it incomplete, so a busy link streaming large frames back to back is never cut.

Outgoing frames are written as a header and the payload object (listening side), or
header, mask and masked copy (dialling side: a client must mask, RFC 6455 §5.3).  On a
plain TCP connection with nothing queued in Twisted, :func:`send_now` hands those pieces
to the kernel at once with one ``sendmsg`` (no copy of the payload), instead of leaving
them in Twisted's buffer until the next reactor turn; whatever the kernel does not take,
and every frame written while bytes are still queued, goes through the transport's
buffer and flow control as before, so frames always leave in order.

Inbound frames are parsed by Autobahn.  An inbound fast path of our own (a few lines
instead of Autobahn's per-frame machinery) was measured alone and removed: it saved
8 us per frame, 0.4 % of the servers' CPU per DM (docs/BENCHMARKS.md, "Fifth round").
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from typing import Any

from autobahn.exception import Disconnected
from autobahn.websocket import USES_NVX
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.xormasker import create_xor_masker
from twisted.internet.tcp import Connection

_OPEN = WebSocketProtocol.STATE_OPEN
_MASK_BIT = 0x80
_RTT_PAYLOAD = b"socp-rtt"
_CLOSE_POLICY = 1008  # RFC 6455: policy violation (a frame too slow to arrive)
_HAS_SENDMSG = hasattr(socket.socket, "sendmsg")  # not on Windows: always the buffered path


def mask_payload(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the 4-byte ``mask`` repeated (RFC 6455 §5.3); its own inverse."""
    if not payload:
        return b""
    if USES_NVX:  # Autobahn's native masker: ~2x the big-integer XOR below
        return create_xor_masker(mask, len(payload)).process(payload)
    return mask_with_integers(payload, mask)


def mask_with_integers(payload: bytes, mask: bytes) -> bytes:
    """:func:`mask_payload` in pure Python: one big-integer XOR, not a loop over bytes."""
    length = len(payload)
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(length, "little")


def frame_header(length: int, opcode: int = 0x1, mask: bytes | None = None) -> bytes:
    """The header of a final frame of ``length`` payload bytes, with ``mask`` if given."""
    first = 0x80 | opcode
    mask_bit = _MASK_BIT if mask is not None else 0
    if length < 126:
        head = bytes((first, mask_bit | length))
    elif length < 65536:
        head = bytes((first, mask_bit | 126)) + length.to_bytes(2, "big")
    else:
        head = bytes((first, mask_bit | 127)) + length.to_bytes(8, "big")
    return head + mask if mask is not None else head


def masked_text_frame(payload: bytes) -> tuple[bytes, bytes]:
    """A client's text frame: (header with a fresh random mask, masked copy of ``payload``)."""
    mask = os.urandom(4)
    return frame_header(len(payload), 0x1, mask), mask_payload(payload, mask)


def send_now(transport: Any, pieces: Sequence[bytes]) -> None:
    """Write ``pieces`` (one frame: header, payload) to ``transport``, sending at once if possible.

    Why: Twisted's ``write`` only queues; the bytes leave on the next reactor turn, after
    one ``epoll_ctl`` to watch for writability and before another to stop watching.  When
    ``transport`` is a connected plain TCP connection (not TLS, not closing) holding no
    unsent bytes, one ``sendmsg`` gathers the pieces straight from their objects: the frame
    leaves in the call that wrote it, with no reactor turn and no ``epoll_ctl`` per frame.

    What the kernel does not take goes, exactly, to the transport's ``write``/``writeSequence``,
    which buffers it, watches for writability and pauses the transport's producer when full,
    as for any write.  Any transport already holding bytes, or of another kind (TLS wrapper,
    test fake), gets the whole frame that way, so frames never overtake queued bytes.  A
    send error leaves everything to the transport too: its own next send meets the error and
    reports the lost connection the usual way (nothing is raised here).

    Relies on Twisted's ``FileDescriptor`` internals (checked against Twisted 26.10):
    ``dataBuffer``, ``offset``, ``_tempDataBuffer``, ``_tempDataLen``, ``producerPaused``,
    ``disconnecting``, ``_writeDisconnecting``, ``_aborting``, ``TLS`` and ``socket``.
    """
    if (
        _HAS_SENDMSG
        and isinstance(transport, Connection)
        and transport.connected
        and not transport.disconnecting
        and not transport.TLS
        and not transport._tempDataBuffer
        and not transport._tempDataLen
        and transport.offset == len(transport.dataBuffer)
        and not transport.producerPaused
        and not transport._writeDisconnecting
        and not transport._aborting
    ):
        try:
            sent = transport.socket.sendmsg(pieces)
        except OSError:
            # EAGAIN, EINTR: nothing went; EPIPE, ECONNRESET...: the transport's own send
            # will meet the error and report the connection lost.
            sent = 0
        if sent:
            if sent == sum(map(len, pieces)):
                return
            pieces = _unsent(pieces, sent)
    transport.writeSequence(pieces)


def _unsent(pieces: Sequence[bytes], sent: int) -> list[bytes]:
    """What is left of ``pieces`` once their first ``sent`` bytes went (as bytes: Twisted
    accepts nothing else)."""
    rest = []
    for piece in pieces:
        if sent >= len(piece):
            sent -= len(piece)
        else:
            rest.append(piece[sent:] if sent else piece)
            sent = 0
    return rest


class FastFrames:
    """Mixed into an Autobahn ``WebSocketProtocol`` subclass (before it in the bases).

    Writes SOCP frames with ``_write_frame``; parsing is Autobahn's own.  Bounds the time a
    started frame may take to arrive (the factory's ``frame_timeout`` seconds on its
    ``frame_clock``; no bound without them).
    """

    current_frame: Any = None  # Autobahn's, set once the handshake is done
    inside_message = False
    _received = 0  # messages and control frames (outside a message) received in full
    _partial_since: float | None = None  # when the frame (message) now arriving started
    _partial_mark = -1  # _received at that time: a change means a new frame has started
    _frame_timer: Any = None

    # -- the partial-frame bound

    def _dataReceived(self, data: bytes) -> None:
        super()._dataReceived(data)
        if self._frame_timer is None and not (
            self.data or self.current_frame is not None or self.inside_message
        ):
            return  # the usual case: whole frames only, nothing pending, no timer to look after
        self._watch_partial()

    def _watch_partial(self) -> None:
        """After a read: note when the frame left incomplete started, and keep one timer for it."""
        if self.state != _OPEN or not (self.data or self.current_frame is not None or self.inside_message):
            self._partial_since = None
            return
        factory = self.factory
        timeout = getattr(factory, "frame_timeout", None)
        clock = getattr(factory, "frame_clock", None)
        if not timeout or clock is None:
            return
        if self._partial_since is None or self._partial_mark != self._received:
            self._partial_since = clock.seconds()
            self._partial_mark = self._received
        if self._frame_timer is None:
            self._frame_timer = clock.callLater(timeout, self._frame_deadline)

    def _frame_deadline(self) -> None:
        self._frame_timer = None
        since = self._partial_since
        if since is None or self.state != _OPEN:
            return
        factory = self.factory
        elapsed = factory.frame_clock.seconds() - since
        if elapsed < factory.frame_timeout:
            self._frame_timer = factory.frame_clock.callLater(
                factory.frame_timeout - elapsed, self._frame_deadline
            )
            return
        self._partial_since = None
        self.frame_too_slow(factory.frame_timeout)

    def frame_too_slow(self, timeout: float) -> None:
        """A frame took longer than ``timeout`` to arrive: log it and close the link (1008)."""
        self._log.warn(
            "Closing link {link} ({who}): a frame took over {timeout:g} s to arrive",
            link=getattr(self, "link_id", "?"),
            who=getattr(self, "identity", None) or getattr(self, "peer", "?"),
            timeout=timeout,
        )
        self.close(_CLOSE_POLICY, f"frame not completed within {timeout:g} s")

    def cancel_frame_timer(self) -> None:
        """Stop watching (the link closed)."""
        timer, self._frame_timer = self._frame_timer, None
        self._partial_since = None
        if timer is not None and timer.active():
            timer.cancel()

    def _onMessageEnd(self):
        self._received += 1
        return super()._onMessageEnd()

    def processControlFrame(self):
        if not self.inside_message:  # a ping inside a fragmented message does not finish it
            self._received += 1
        return super().processControlFrame()

    # -- round trip (server links: the mesh pings once per heartbeat)

    rtt: float | None = None  # seconds, of the last answered ping
    _ping_sent: float | None = None

    def ping(self, now: float) -> None:
        """Send a WebSocket ping (RFC 6455 §5.5.2: every peer answers it with a pong) to time
        the round trip; ``now`` is the caller's clock.  A ping still unanswered is not repeated."""
        if self.state != _OPEN or self._ping_sent is not None:
            return
        self._ping_sent = now
        self.sendPing(_RTT_PAYLOAD)

    def onPong(self, payload: bytes) -> None:
        sent, self._ping_sent = self._ping_sent, None
        if sent is not None and payload == _RTT_PAYLOAD:
            self.rtt = max(self._pong_now() - sent, 0.0)

    def _pong_now(self) -> float:
        clock = getattr(self.factory, "frame_clock", None)
        if clock is None:
            from twisted.internet import reactor as clock
        return clock.seconds()

    # -- framing

    def _write_frame(self, data: bytes) -> None:
        """One final text frame.  The listening side writes its header and then the payload
        object as is: nothing is copied, so a frame fanned out to many links is held once
        (Autobahn's ``sendMessage`` joins a copy per link).  The dialling side must mask
        (RFC 6455 §5.3): header, fresh mask, masked copy.  Sent at once when the
        transport is idle (:func:`send_now`)."""
        if self.state != _OPEN:
            raise Disconnected("the link is not open")
        if self.factory.isServer:
            send_now(self.transport, (frame_header(len(data)), data))
        else:
            send_now(self.transport, masked_text_frame(data))
