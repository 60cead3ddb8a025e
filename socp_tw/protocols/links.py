"""What every SOCP WebSocket link does, whichever side dialled: ordered sending.

Server frames are signed on a thread pool, so a frame may still be signing when the
next one is ready.  ``send`` keeps them in call order: a frame waits for the ones
queued before it.
"""

from __future__ import annotations

from collections import deque

from autobahn.exception import Disconnected
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from socp_tw.logs import get_logger

_log = get_logger("socp_tw.links")

_PENDING = object()


class OrderedSender:
    """A FIFO of frames (bytes or Deferreds of bytes) written in order through ``write``."""

    def __init__(self, write, describe: str = "link") -> None:
        self._write = write
        self._describe = describe
        self._queue: deque[list] = deque()
        self.closed = False

    def __len__(self) -> int:
        return len(self._queue)

    def send(self, frame: bytes | Deferred[bytes]) -> None:
        """Queue ``frame``; write everything at the head of the queue that is ready."""
        if self.closed:
            if isinstance(frame, Deferred):
                frame.addErrback(lambda f: None)
            return
        if isinstance(frame, bytes):
            if not self._queue:
                self._write_safely(frame)
                return
            self._queue.append([frame])
            return
        slot: list = [_PENDING]
        self._queue.append(slot)
        frame.addCallbacks(self._ready, self._failed, callbackArgs=(slot,), errbackArgs=(slot,))

    def _ready(self, data: bytes, slot: list) -> None:
        slot[0] = data
        self._flush()

    def _failed(self, failure: Failure, slot: list) -> None:
        _log.failure("Could not prepare a frame for {link}; skipped", failure, link=self._describe)
        slot[0] = None
        self._flush()

    def _flush(self) -> None:
        while self._queue and self._queue[0][0] is not _PENDING:
            data = self._queue.popleft()[0]
            if data is not None and not self.closed:
                self._write_safely(data)

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
        self._queue.clear()
