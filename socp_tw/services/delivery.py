"""No silent loss between servers: every DM sent to another server ends confirmed or reported.

The origin server remembers each ``SERVER_DELIVER`` of a DM it sent (:meth:`DeliveryTracker.sent`)
until one of three things happens:

- the hosting server confirms it: ``ACK {msg_ref: "SERVER_DELIVER", delivered: [ref, ...]}``
  (our profile's ``deliver-ack`` extension, docs/PROTOCOL-EXTENSIONS.md; confirmations are
  batched, one signature per ``ack_window`` per origin);
- a server refuses it with ``ERROR`` (``USER_NOT_FOUND``, ``INVALID_SIG`` ...);
- ``timeout`` seconds pass.  A server that said it confirms deliveries and did not is reported
  as ``TIMEOUT`` to the sender, and the mesh is told (a peer silent since the DM left is hung).
  A server of another implementation never confirms: its DM counts as delivered if the peer was
  heard from since it was sent (checked again once more after another ``timeout``), else it is
  reported too.

Either way the sending user hears of a failure exactly once, through ``on_failure(pending,
code, detail)``, where the router holds the DM instead when it can (services/holding/);
``on_confirmed(pending)`` hears of each delivery.  A DM's
reference between servers is derived from its ``content_sig``, so the wire carries nothing new
on ``SERVER_DELIVER``.
"""

from __future__ import annotations

import base64
import hashlib
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from socp_tw import wire
from socp_tw.interfaces import IPeerLinks, IPresence, ISigner
from socp_tw.logs import get_logger

MAX_REFS_PER_ACK = 500
MAX_REF_CHARS = 64


def delivery_ref(content_sig: str) -> str:
    """The reference of a DM between servers: 16 bytes of sha256(content_sig), base64url."""
    digest = hashlib.sha256(content_sig.encode("utf-8", "replace")).digest()[:16]
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(slots=True)
class PendingDelivery:
    """A DM handed to another server, not yet confirmed."""

    ref: str
    sender: str
    recipient: str
    ts: int
    server_id: str
    sent_at: float
    deadline: float
    second_look: bool = False  # a non-confirming peer, checked once more
    fields: dict[str, Any] | None = None  # ciphertext and content_sig: to hold it if it fails
    sender_pub: str | None = None
    held: bool = False  # a held DM being handed over (services/holding/)


class DeliveryTracker:
    """The pending DMs of the origin side, and the batched confirmations of the hosting side."""

    _log = get_logger("socp_tw.delivery")

    def __init__(
        self,
        peers: IPeerLinks,
        signer: ISigner,
        presence: IPresence,
        clock: IReactorTime,
        on_failure: Callable[[PendingDelivery, str, str], None],
        *,
        on_confirmed: Callable[[PendingDelivery], None] | None = None,
        timeout: float = 10.0,
        max_pending: int = 100_000,
        ack_window: float = 0.1,
    ) -> None:
        self._peers = peers
        self._signer = signer
        self._presence = presence
        self._clock = clock
        self._on_failure = on_failure
        self._on_confirmed = on_confirmed
        self.timeout = timeout
        self.max_pending = max_pending
        self.ack_window = ack_window
        self.counters: Counter[str] = Counter()
        self._pending: OrderedDict[str, PendingDelivery] = OrderedDict()  # by deadline order
        self._timer: IDelayedCall | None = None
        self._acks: dict[str, list[str]] = {}
        self._ack_timer: IDelayedCall | None = None
        self._stopped = False

    def __len__(self) -> int:
        return len(self._pending)

    def stop(self) -> None:
        """The server stops: send the confirmations collected so far, stop the timers (DMs still
        pending are not reported: their senders' links are closing)."""
        self.flush_acks()
        self._stopped = True
        for timer in (self._timer, self._ack_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._ack_timer = None

    # -- the origin side --------------------------------------------------------------------------

    def sent(
        self,
        ref: str,
        sender: str,
        recipient: str,
        ts: int,
        server_id: str,
        *,
        fields: dict[str, Any] | None = None,
        sender_pub: str | None = None,
        held: bool = False,
    ) -> None:
        """A DM left for ``server_id``: wait for its confirmation."""
        if len(self._pending) >= self.max_pending:
            oldest = next(iter(self._pending.values()))
            self._fail(oldest, "TIMEOUT", "too many DMs awaiting confirmation on this server")
        now = self._clock.seconds()
        self._pending.pop(ref, None)
        self._pending[ref] = PendingDelivery(
            ref, sender, recipient, ts, server_id, now, now + self.timeout, False, fields, sender_pub, held
        )
        self.counters["sent"] += 1
        self._arm()

    def ack_received(self, envelope: wire.Envelope) -> None:
        """``ACK {msg_ref: "SERVER_DELIVER", delivered: [...]}`` from a server: those DMs arrived.
        Only the server a DM went to, or the one now hosting its recipient, may confirm it."""
        refs = envelope.payload.get("delivered")
        if envelope.payload.get("msg_ref") != "SERVER_DELIVER" or not isinstance(refs, list):
            self.counters["ack_ignored"] += 1
            return
        for ref in refs[:MAX_REFS_PER_ACK]:
            pending = self._pending.get(ref) if isinstance(ref, str) else None
            if pending is None:
                self.counters["ack_unknown"] += 1
                continue
            if envelope.from_ != pending.server_id and not self._hosts(envelope.from_, pending.recipient):
                self.counters["ack_not_theirs"] += 1
                continue
            del self._pending[ref]
            self.counters["confirmed"] += 1
            self._confirmed(pending)

    def refused(self, origin: str, sender: str, recipient: str, ref: Any) -> PendingDelivery | None:
        """A server reported a DM failed: forget it and return it, or None if it was not pending
        (already confirmed, reported or never ours: its sender must not hear of it twice).
        Servers of other implementations name no ``ref``: their oldest DM from ``sender`` to
        ``recipient`` is taken."""
        pending = self._pending.get(ref) if isinstance(ref, str) else None
        if pending is None and ref is None:
            pending = next(
                (p for p in self._pending.values() if p.sender == sender and p.recipient == recipient), None
            )
        if pending is None or (pending.sender, pending.recipient) != (sender, recipient):
            return None
        del self._pending[pending.ref]
        self.counters["refused"] += 1
        return pending

    def _hosts(self, server_id: str, user_id: str) -> bool:
        entry = self._presence.lookup(user_id)
        return entry is not None and entry.server_id == server_id

    def _arm(self) -> None:
        if self._stopped or (self._timer is not None and self._timer.active()) or not self._pending:
            return
        first = next(iter(self._pending.values()))
        delay = max(first.deadline - self._clock.seconds(), 0.0)
        self._timer = self._clock.callLater(delay, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = self._clock.seconds()
        again: list[PendingDelivery] = []
        while self._pending:
            pending = next(iter(self._pending.values()))
            if pending.deadline > now:
                break
            del self._pending[pending.ref]
            self._expired(pending, again)
        for pending in again:
            self._pending[pending.ref] = pending
        self._arm()

    def _expired(self, pending: PendingDelivery, again: list[PendingDelivery]) -> None:
        server_id = pending.server_id
        if self._peers.acks_deliveries(server_id):
            self._peers.unresponsive(server_id, pending.sent_at)
            self._fail(
                pending,
                "TIMEOUT",
                f"server {server_id} did not confirm delivery within {self.timeout:g} s",
            )
        elif self._peers.heard_since(server_id, pending.sent_at):
            self.counters["assumed_delivered"] += 1  # alive, of an implementation that never confirms
            self._confirmed(pending)
        elif not pending.second_look:
            pending.second_look = True
            pending.deadline += self.timeout
            again.append(pending)
        else:
            self._fail(
                pending,
                "TIMEOUT",
                f"server {server_id} sent nothing for {2 * self.timeout:g} s after the DM: it is unreachable",
            )

    def _fail(self, pending: PendingDelivery, code: str, detail: str) -> None:
        self._pending.pop(pending.ref, None)
        self.counters["failed." + code] += 1
        try:
            self._on_failure(pending, code, detail)
        except Exception:
            self._log.failure("Reporting a failed DM to {user} failed", user=pending.sender)

    def _confirmed(self, pending: PendingDelivery) -> None:
        if self._on_confirmed is None:
            return
        try:
            self._on_confirmed(pending)
        except Exception:
            self._log.failure("Recording a delivered DM to {user} failed", user=pending.recipient)

    # -- the hosting side -------------------------------------------------------------------------

    def delivered_here(self, origin: str, ref: str) -> None:
        """A DM from ``origin`` reached its local recipient: confirm it (batched), if ``origin``
        asked for confirmations."""
        if self._stopped or not self._peers.acks_deliveries(origin):
            return
        self._acks.setdefault(origin, []).append(ref)
        if self._ack_timer is None or not self._ack_timer.active():
            self._ack_timer = self._clock.callLater(self.ack_window, self.flush_acks)

    def flush_acks(self) -> None:
        """Send the confirmations collected so far, one signed ACK per origin (per 500 refs)."""
        if self._ack_timer is not None and self._ack_timer.active():
            self._ack_timer.cancel()  # called early (stop)
        self._ack_timer = None
        acks, self._acks = self._acks, {}
        for origin, refs in acks.items():
            for start in range(0, len(refs), MAX_REFS_PER_ACK):
                payload = {"msg_ref": "SERVER_DELIVER", "delivered": refs[start : start + MAX_REFS_PER_ACK]}
                frame = self._signer.frame("ACK", origin, payload)
                if not self._peers.send_to_server(origin, frame):
                    frame.addErrback(lambda _: None)
                self.counters["acks_sent"] += 1


__all__ = ["DeliveryTracker", "PendingDelivery", "delivery_ref"]
