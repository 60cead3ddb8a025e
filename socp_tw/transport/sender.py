"""What every SOCP WebSocket link does, whichever side dialled: ordered sending.

Server frames are signed on a thread pool, so a frame may still be signing when the
next one is ready.  ``send`` keeps them in call order: a frame waits for the ones
queued before it.

The sender is also the transport's push producer (where the link registers it): while
the transport holds more than its buffer size of unsent bytes, ready frames wait here
instead.  Here a frame is one reference to a ``bytes`` object, shared by every link it
is fanned out to (:mod:`socp_tw.transport.fanout`); in the transport it would be part of
a per-link joined copy.  So a burst of presence or channel frames to thousands of users
costs memory once, not once per user.
"""

from __future__ import annotations

from collections import deque

from autobahn.exception import Disconnected
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from socp_tw.logs import get_logger

_log = get_logger("socp_tw.links")  # the namespace it always logged under

_PENDING = object()


@implementer(IPushProducer)
class OrderedSender:
    """A FIFO of frames (bytes or Deferreds of bytes) written in order through ``write``.

    ``pending`` counts frames still being prepared (signed); ``held_bytes`` the bytes of
    ready frames waiting here (behind a pending one, or while the transport is full).
    """

    __slots__ = ("_describe", "_queue", "_write", "closed", "held_bytes", "paused", "pending")

    def __init__(self, write, describe: str = "link") -> None:
        self._write = write
        self._describe = describe
        self._queue: deque[list] | None = None  # made on demand, dropped when empty (idle links)
        self.pending = 0
        self.held_bytes = 0
        self.paused = False
        self.closed = False

    def __len__(self) -> int:
        return len(self._queue) if self._queue is not None else 0

    def send(self, frame: bytes | Deferred[bytes]) -> None:
        """Queue ``frame``; write everything at the head of the queue that is ready."""
        if self.closed:
            if isinstance(frame, Deferred):
                frame.addErrback(lambda f: None)
            return
        if isinstance(frame, bytes):
            if self._queue is None and not self.paused:
                self._write_safely(frame)
                return
            self._hold([frame])
            self.held_bytes += len(frame)
            return
        slot: list = [_PENDING]
        self.pending += 1
        self._hold(slot)
        frame.addCallbacks(self._ready, self._failed, callbackArgs=(slot,), errbackArgs=(slot,))

    def _hold(self, item: list) -> None:
        if self._queue is None:
            self._queue = deque()
        self._queue.append(item)

    def _ready(self, data: bytes, slot: list) -> None:
        self.pending -= 1
        if self.closed:
            return
        slot[0] = data
        if data is not None:  # None: nothing to send after all (skipped)
            self.held_bytes += len(data)
        self._flush()

    def _failed(self, failure: Failure, slot: list) -> None:
        self.pending -= 1
        if self.closed:
            return
        _log.failure("Could not prepare a frame for {link}; skipped", failure, link=self._describe)
        slot[0] = None
        self._flush()

    def _flush(self) -> None:
        queue = self._queue
        while queue and not self.paused and queue[0][0] is not _PENDING:
            data = queue.popleft()[0]
            if data is not None:
                self.held_bytes -= len(data)
                self._write_safely(data)
        if self._queue is not None and not self._queue:
            self._queue = None  # an idle link keeps no deque (nor its free blocks)

    def _write_safely(self, data: bytes) -> None:
        """Write, or drop quietly if the connection closed under us (the close is reported elsewhere)."""
        try:
            self._write(data)
        except Disconnected:
            _log.debug("Dropped a frame for {link}: connection already closing", link=self._describe)
            self.close()

    def close(self) -> None:
        """Drop whatever is queued; later frames are discarded."""
        self.closed = True
        self._queue = None
        self.held_bytes = 0

    # IPushProducer: the transport's flow control

    def pauseProducing(self) -> None:
        """The transport's buffer is full: hold ready frames here."""
        self.paused = True

    def resumeProducing(self) -> None:
        """The transport has written everything: send what waited."""
        self.paused = False
        if not self.closed:
            self._flush()

    def stopProducing(self) -> None:
        """The connection is gone."""
        self.close()
