"""Pacing file frames: a token bucket per sender, and waiting while the next hop is full.

A user going faster than ``frame_rate`` is slowed down, not refused: its frame waits (and
the link's later frames behind it).  Before routing, a frame waits while the next hop (the
recipient's link, or the link to its server) has more than ``max_send_buffer`` bytes not yet
taken by the kernel, so a slow path slows the sender down instead of filling memory.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.internet.task import deferLater

from socp_tw import wire
from socp_tw.interfaces import ILink, IPeerLinks, IPresence
from socp_tw.limits import RateLimiter
from socp_tw.services.files.transfers import Transfer, Transfers
from socp_tw.transport.backlog import send_backlog

__all__ = ["MAX_SEND_BUFFER", "PRESSURE_POLL", "Pacer"]

MAX_SEND_BUFFER = 256 * 1024  # bytes queued on the next hop before file frames wait
PRESSURE_POLL = 0.02  # seconds between looks at a full next hop


class _Timeout(wire.FrameError):
    code = "TIMEOUT"


class Pacer:
    """Makes file frames wait for their sender's rate and for room on the next hop."""

    def __init__(
        self,
        presence: IPresence,
        peers: IPeerLinks | None,
        transfers: Transfers,
        counters: Counter[str],
        clock: Any,
        *,
        frame_rate: float,
        frame_burst: float,
        max_senders: int,
        max_send_buffer: int,
    ) -> None:
        self._presence = presence
        self._peers = peers
        self._transfers = transfers
        self._counters = counters
        self._clock = clock
        self.max_send_buffer = max_send_buffer
        self.rate = RateLimiter(frame_rate, frame_burst, clock, max_keys=max_senders)

    async def throttle(self, sender: str, transfer: Transfer | None = None) -> None:
        """Wait until ``sender``'s bucket holds a token (the per-user rate)."""
        while not self.rate.allow(sender):
            self._counters["throttled"] += 1
            await deferLater(self._clock, max(self.rate.retry_after(sender), 0.001), lambda: None)
            if transfer is not None:
                self._transfers.still_open(transfer)

    def _next_hop(self, recipient: str) -> ILink | None:
        entry = self._presence.lookup(recipient)
        if entry is None:
            return None
        if entry.local:
            return entry.link
        link_to = getattr(self._peers, "link_to", None)
        return link_to(entry.server_id) if link_to is not None else None

    async def room(
        self, recipient: str, transfer: Transfer | None = None, deadline: float | None = None
    ) -> None:
        """Wait while the next hop towards ``recipient`` has more than ``max_send_buffer`` bytes queued.

        A transfer's own idle timer ends the wait (the transfer is dropped); a FILE_START waits
        until ``deadline``.
        """
        while send_backlog(self._next_hop(recipient)) > self.max_send_buffer:
            self._counters["waited_for_room"] += 1
            if deadline is not None and self._clock.seconds() >= deadline:
                raise _Timeout(f"the path to {recipient} is not draining; try again later")
            await deferLater(self._clock, PRESSURE_POLL, lambda: None)
            if transfer is not None:
                self._transfers.still_open(transfer)
