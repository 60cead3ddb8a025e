"""The state a :class:`FileTransfers` shares between sending and receiving."""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from socp_tw.client.files.receive import Incoming
    from socp_tw.client.files.send import Outgoing

STALL_TIMEOUT = 60.0  # seconds without progress before a transfer (either way) is given up
MAX_RECENT = 32  # finished transfers remembered (late errors, late chunks)


class TransfersBase:
    """The file side of one :class:`ClientSession`: its state and helpers."""

    def __init__(
        self,
        session: Any,
        download_dir: str = ".",
        *,
        stall_timeout: float = STALL_TIMEOUT,
        window: int | None = None,
    ) -> None:
        self._session = session
        self.download_dir = download_dir
        self.stall_timeout = stall_timeout
        self.window = window or max(2, 2 * int(getattr(session._workers, "size", 1) or 1))
        self._outgoing: dict[str, Outgoing] = {}
        self._recent_sent: OrderedDict[str, Outgoing] = OrderedDict()
        self._incoming: dict[tuple[str, str], Incoming] = {}
        self._finished_incoming: deque[tuple[str, str]] = deque(maxlen=MAX_RECENT)
        self._decrypts = 0
        self._reading_paused = False
        self.counters: dict[str, int] = {}

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _show(self, text: str) -> None:
        self._session.show(text)

    @property
    def _clock(self) -> Any:
        return self._session._clock

    @property
    def _workers(self) -> Any:
        return self._session._workers

    def connection_lost(self, reason: str) -> None:
        """The WebSocket closed: outgoing transfers stop, incoming ones cannot complete."""
        for out in list(self._outgoing.values()):
            out.fail(f"the connection to the server was lost ({reason})")
        for incoming in list(self._incoming.values()):
            self._fail(incoming, "the connection to the server was lost")
        self._reading_paused = False

    def shutdown(self) -> None:
        """Stop everything (the client exits): timers cancelled, partial files deleted."""
        for out in list(self._outgoing.values()):
            out.fail("the client is shutting down")
        for incoming in list(self._incoming.values()):
            self._fail(incoming, "the client is shutting down")
