"""The DMs a session sent lately, to name the one a server's delivery failure is about."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from socp_tw.client.text import one_line

MAX_SENT_DMS = 1000  # DMs remembered to name the one a delivery failure is about
SENT_DM_TTL = 600.0  # ... for at most this many seconds
PREVIEW_CHARS = 30  # of a failed DM's text shown in its [FAILED] line


@dataclass(eq=False)
class SentDM:
    """One ``/tell`` (all its parts): what a ``[FAILED]`` line says of it."""

    recipient: str
    preview: str  # the start of the text, escaped for one line
    sent_at: float  # clock seconds
    parts: list[int] = field(default_factory=list)  # the ts of each MSG_DIRECT
    reported: bool = False  # its [FAILED] line was shown (once per message, not per part)
    queued: bool = False  # its "queued" line was shown
    handed_over: bool = False  # its [DELIVERED] line was shown


class SentDMs:
    """The DMs sent lately, found by (recipient, ts) of any of their parts: the server names
    those two in ``ERROR {msg_ref: MSG_DIRECT, user_id, ts}`` when it cannot deliver one.
    Bounded: the last :data:`MAX_SENT_DMS` messages, none older than :data:`SENT_DM_TTL` s."""

    def __init__(self, clock: Any, limit: int = MAX_SENT_DMS, ttl: float = SENT_DM_TTL) -> None:
        self._clock = clock
        self._limit = limit
        self._ttl = ttl
        self._messages: deque[SentDM] = deque()
        self._by_part: dict[tuple[str, int], SentDM] = {}

    def __len__(self) -> int:
        return len(self._messages)

    def add(self, recipient: str, text: str) -> SentDM:
        """Remember a DM about to be sent; then :meth:`add_part` for each of its frames."""
        self._expire()
        message = SentDM(recipient, one_line(text, PREVIEW_CHARS + 1), self._clock.seconds())
        self._messages.append(message)
        while len(self._messages) > self._limit:
            self._forget(self._messages.popleft())
        return message

    def add_part(self, message: SentDM, ts: int) -> None:
        message.parts.append(ts)
        self._by_part[(message.recipient, ts)] = message

    def find(self, recipient: str, ts: object) -> SentDM | None:
        """The DM one of whose parts went to ``recipient`` with ``ts``, if still remembered."""
        self._expire()
        if type(ts) is not int:
            return None
        return self._by_part.get((recipient, ts))

    def _forget(self, message: SentDM) -> None:
        for ts in message.parts:
            if self._by_part.get((message.recipient, ts)) is message:
                del self._by_part[(message.recipient, ts)]

    def _expire(self) -> None:
        cutoff = self._clock.seconds() - self._ttl
        while self._messages and self._messages[0].sent_at < cutoff:
            self._forget(self._messages.popleft())
