"""A link's send backlog: the bytes sent to it that the kernel has not yet taken.

File pacing waits while the next hop's backlog is past a bound
(:mod:`socp_tw.services.files.pacing`); the WebSocket protocols close a link whose
backlog says its peer does not read (``socp_tw.protocols.websocket.send_overflow``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["send_backlog"]


def send_backlog(link: Any) -> int:
    """Bytes sent to ``link`` that its transport has not yet handed to the kernel.

    Counts the ready frames its sender holds back (``queued_bytes``) and reads Twisted's
    ``FileDescriptor`` buffers (``dataBuffer``, ``_tempDataLen``), looking through a TLS
    wrapper; 0 when the link has no such transport (fakes, unknown transports).
    """
    total = int(getattr(link, "queued_bytes", 0) or 0)  # ready frames its sender holds back
    transport = getattr(link, "transport", None)
    for _ in range(4):  # link -> (TLS wrapper ->) TCP connection
        if transport is None:
            break
        buffered = getattr(transport, "dataBuffer", None)
        if isinstance(buffered, (bytes, bytearray, memoryview)):
            total += len(buffered) - int(getattr(transport, "offset", 0) or 0)
            total += int(getattr(transport, "_tempDataLen", 0) or 0)
        pending = getattr(transport, "_appSendBuffer", None)
        if isinstance(pending, list):
            total += sum(len(item) for item in pending if isinstance(item, bytes))
        transport = getattr(transport, "transport", None)
    return total
