"""How SOCP links write WebSocket frames: one final text frame per SOCP frame, sent at once.

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

    Writes SOCP frames with ``_write_frame``; parsing is Autobahn's own.
    """

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
