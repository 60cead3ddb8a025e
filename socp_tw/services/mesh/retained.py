"""Flooded frames a server did not pass on to some neighbours, kept a while in case it must.

The relay rule (docs/MESH.md "Relaying floods") skips a neighbour P for a frame of origin O
when both say they are linked.  If that link turns out to have been down, P missed the frame:
each skipped frame is kept here, with the set of servers it skipped, for ``max_age`` seconds,
and handed to P when O or P withdraws the link.  Bounded in entries and bytes; a frame that
does not fit is not skipped at all (the caller floods it as before).
"""

from __future__ import annotations

from collections import deque

from twisted.internet.interfaces import IReactorTime

__all__ = ["Retained"]


class Retained:
    """A bounded, time-ordered store of ``(origin, raw frame, servers skipped)``."""

    def __init__(self, clock: IReactorTime, max_entries: int = 20_000, max_bytes: int = 16 * 2**20) -> None:
        self._clock = clock
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: deque[tuple[float, str, bytes, set[str]]] = deque()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, origin: str, raw: bytes, skipped: set[str], max_age: float) -> bool:
        """Keep ``raw`` (a frame of ``origin``) for the servers in ``skipped``; False if full."""
        self.expire(max_age)
        if len(self._entries) >= self.max_entries or self.bytes + len(raw) > self.max_bytes:
            return False
        self._entries.append((self._clock.seconds(), origin, raw, skipped))
        self.bytes += len(raw)
        return True

    def take(self, origin: str, server_id: str, max_age: float) -> list[bytes]:
        """The kept frames of ``origin`` that skipped ``server_id``, oldest first; each once."""
        self.expire(max_age)
        found = []
        for _, frame_origin, raw, skipped in self._entries:
            if frame_origin == origin and server_id in skipped:
                skipped.discard(server_id)
                found.append(raw)
        return found

    def expire(self, max_age: float) -> None:
        """Drop what is older than ``max_age`` seconds."""
        entries = self._entries
        horizon = self._clock.seconds() - max_age
        while entries and entries[0][0] < horizon:
            self.bytes -= len(entries.popleft()[2])
