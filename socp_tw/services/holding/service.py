"""Store-and-forward (docs/MESH.md "Held messages"): a DM for a user who is offline, or whose
server cannot be reached, is held by the sender's server and handed over when the user comes
online, here or anywhere in the mesh, exactly once and in the order it was sent.

Held DMs are written to the database before their sender is told ``queued``.  They leave when
the recipient's hello reaches us (a local ``USER_DELIVER``), when its server advertises it or
its link comes back (a ``SERVER_DELIVER`` marked ``held``, confirmed by that server's ACK), or
when they expire (``hold_for``, default 7 days; the sender is told if online).  Bounded per
recipient, per sender and in total; over a bound the sender gets ``ERROR QUEUE_FULL`` at once.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from socp_tw import wire
from socp_tw.interfaces import IHeldMessages, IPeerLinks, IPresence, IPresenceObserver, ISigner, IUserKeys
from socp_tw.logs import get_logger
from socp_tw.services.delivery import delivery_ref
from socp_tw.services.holding.queue import HeldDM, MemoryHeldQueue
from socp_tw.timers import repeating, stop_repeating

DAY = 86400.0
BATCH = 200  # held DMs read and handed over per database round trip


class QueueFull(Exception):
    """A bound on held messages was reached; ``detail`` names it."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@implementer(IHeldMessages, IPresenceObserver)
class HeldMessages(Service):
    """The held DMs of the users of this server, their bounds, hand-over and expiry."""

    name = "holding"
    _log = get_logger("socp_tw.holding")

    def __init__(
        self,
        presence: IPresence,
        peers: IPeerLinks,
        signer: ISigner,
        user_keys: IUserKeys,
        clock: Any,
        queue: Any = None,
        *,
        summary: Iterable[tuple[str, str, int]] = (),
        hold_for: float = 7 * DAY,
        max_per_recipient: int = 1000,
        max_bytes_per_recipient: int = 16 * 1024 * 1024,
        max_per_sender: int = 1000,
        max_total: int = 100_000,
        max_total_bytes: int = 256 * 1024 * 1024,
        sweep_interval: float = 60.0,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self._presence = IPresence(presence)
        self._peers = IPeerLinks(peers)
        self._signer = ISigner(signer)
        self._user_keys = IUserKeys(user_keys)
        self._clock = clock
        self._queue = queue if queue is not None else MemoryHeldQueue()
        self.hold_for = hold_for
        self.max_per_recipient = max_per_recipient
        self.max_bytes_per_recipient = max_bytes_per_recipient
        self.max_per_sender = max_per_sender
        self.max_total = max_total
        self.max_total_bytes = max_total_bytes
        self.sweep_interval = sweep_interval
        self._now_ms = now_ms or (lambda: int(clock.seconds() * 1000))
        self.counters: Counter[str] = Counter()
        self._recipients: dict[str, list[int]] = {}  # recipient (lower) -> [count, bytes]
        self._senders: Counter[str] = Counter()
        self.total = self.total_bytes = 0
        for recipient, sender, size in summary:
            self._count_in(recipient, sender, size)
        self._releasing: set[str] = set()  # recipients being handed their DMs now
        self._in_flight: dict[str, HeldDM] = {}  # ref -> DM sent to a server, not yet confirmed
        self._sweeper: LoopingCall | None = None
        #: ``track(dm, server_id)``: the router's confirmation tracking of a remote hand-over.
        self.track: Callable[[HeldDM, str], None] | None = None
        self._presence.add_observer(self)
        self._peers.add_change_observer(self._mesh_changed)

    # -- service ------------------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._sweeper = repeating(self._clock, self.sweep_interval, self.sweep)
        if self.total:
            self._log.info(
                "Holding {count} DMs for {users} users", count=self.total, users=len(self._recipients)
            )

    def stopService(self) -> None:
        stop_repeating(self._sweeper)
        self._sweeper = None
        return super().stopService()

    # -- bookkeeping --------------------------------------------------------------------------------

    def _count_in(self, recipient: str, sender: str, size: int) -> None:
        entry = self._recipients.setdefault(recipient.lower(), [0, 0])
        entry[0] += 1
        entry[1] += size
        self._senders[sender.lower()] += 1
        self.total += 1
        self.total_bytes += size

    def _count_out(self, dm: HeldDM) -> None:
        entry = self._recipients.get(dm.recipient.lower())
        if entry is not None:
            entry[0] -= 1
            entry[1] -= dm.size
            if entry[0] <= 0:
                del self._recipients[dm.recipient.lower()]
        self._senders[dm.sender.lower()] -= 1
        if self._senders[dm.sender.lower()] <= 0:
            del self._senders[dm.sender.lower()]
        self.total -= 1
        self.total_bytes -= dm.size

    def held_for(self, recipient: str) -> int:
        """How many DMs are held for ``recipient``."""
        entry = self._recipients.get(recipient.lower())
        return entry[0] if entry is not None else 0

    def can_hold(self, recipient: str) -> bool:
        """A DM to ``recipient`` may be held: some server has seen the id (its key is pinned)."""
        return self._user_keys.lookup(recipient) is not None

    def _bound(self, recipient: str, sender: str, size: int) -> str | None:
        count, used = self._recipients.get(recipient.lower(), [0, 0])
        if count >= self.max_per_recipient:
            return f"{recipient} already has {count} DMs waiting (the limit)"
        if used + size > self.max_bytes_per_recipient:
            return (
                f"{recipient} already has {used} bytes of DMs waiting (limit {self.max_bytes_per_recipient})"
            )
        if self._senders[sender.lower()] >= self.max_per_sender:
            return f"you already have {self.max_per_sender} DMs waiting for their recipients (the limit)"
        if self.total >= self.max_total or self.total_bytes + size > self.max_total_bytes:
            return "this server holds as many DMs as it can"
        return None

    # -- holding ------------------------------------------------------------------------------------

    def hold(
        self, sender: str, recipient: str, ts: int, fields: dict[str, Any], sender_pub: str, reason: str
    ) -> Deferred:
        """Hold a DM (``reason``: "offline" or "unreachable"); fire with the :class:`HeldDM` once
        it is written and its sender told ``queued``, or fail with :class:`QueueFull`."""
        ciphertext, content_sig = fields["ciphertext"], fields["content_sig"]
        size = len(ciphertext) + len(content_sig) + len(sender_pub)
        problem = self._bound(recipient, sender, size)
        if problem is not None:
            self.counters["refused.full"] += 1
            return fail(QueueFull(problem))
        ref = delivery_ref(content_sig)
        dm = HeldDM(0, recipient, sender, ts, ref, ciphertext, content_sig, sender_pub, size, self._now_ms())
        self._count_in(recipient, sender, size)
        d = self._queue.add(dm)
        d.addCallbacks(self._held, self._not_held, callbackArgs=(dm, reason), errbackArgs=(dm,))
        return d

    def _held(self, seq: int | None, dm: HeldDM, reason: str) -> HeldDM:
        if seq is None:  # already held (the same DM again): counted once
            self._count_out(dm)
        self.counters["held." + reason] += 1
        self._tell(
            dm.sender,
            {
                "msg_ref": "MSG_DIRECT",
                "user_id": dm.recipient,
                "ts": dm.ts,
                "status": "queued",
                "reason": reason,
            },
        )
        entry = self._presence.lookup(dm.recipient)
        if entry is not None and (entry.local or entry.server_id in self._peers.connected_servers()):
            self._release(dm.recipient)  # it came back while the DM was being written
        return dm

    def _not_held(self, failure: Any, dm: HeldDM) -> Any:
        self._count_out(dm)
        self._log.failure("Could not hold a DM for {user}", failure, user=dm.recipient)
        return failure

    def _tell(self, sender: str, payload: dict[str, Any], kind: str = "ACK") -> None:
        link = self._presence.local_link(sender)
        if link is not None:
            link.send(self._signer.frame(kind, sender, payload))

    # -- handing over -------------------------------------------------------------------------------

    def user_online(self, entry: Any) -> None:
        """IPresenceObserver: the recipient of held DMs came online, here or elsewhere."""
        if self.held_for(entry.user_id):
            self._release(entry.user_id)

    def user_offline(self, entry: Any) -> None:
        pass

    def _mesh_changed(self) -> None:
        """A link came up: hand over what waits for users located on that server."""
        linked = set(self._peers.connected_servers())
        for recipient in list(self._recipients):
            entry = self._presence.lookup(recipient)
            if entry is not None and not entry.local and entry.server_id in linked:
                self._release(entry.user_id)

    def _release(self, recipient: str) -> None:
        key = recipient.lower()
        if key in self._releasing:
            return
        self._releasing.add(key)
        d = self._queue.for_recipient(recipient, BATCH)
        d.addCallback(self._hand_over, recipient)
        d.addErrback(lambda f: self._log.failure("Handing over held DMs to {user} failed", f, user=recipient))
        d.addBoth(lambda _: self._releasing.discard(key))

    def _hand_over(self, batch: list[HeldDM], recipient: str) -> Deferred | None:
        entry = self._presence.lookup(recipient)
        batch = [dm for dm in batch if dm.ref not in self._in_flight]
        if entry is None or not batch:
            return None
        if not entry.local:
            for dm in batch:
                self._send_to_server(dm, entry.server_id)
            return None
        for dm in batch:
            payload = {**dm.fields, "sender": dm.sender, "sender_pub": dm.sender_pub, "held": True}
            entry.link.send(self._signer.frame("USER_DELIVER", dm.recipient, payload, ts=dm.ts))
        d = self._queue.remove([dm.ref for dm in batch])
        d.addCallback(lambda _: [self._delivered(dm) for dm in batch])
        if len(batch) == BATCH:
            d.addCallback(lambda _: self._queue.for_recipient(recipient, BATCH))
            d.addCallback(self._hand_over, recipient)
        return d

    def _send_to_server(self, dm: HeldDM, server_id: str) -> None:
        payload = {
            "user_id": dm.recipient,
            **dm.fields,
            "sender": dm.sender,
            "sender_pub": dm.sender_pub,
            "held": True,
        }
        frame = self._signer.frame("SERVER_DELIVER", server_id, payload, ts=dm.ts)
        if not self._peers.send_to_server(server_id, frame):
            frame.addErrback(lambda _: None)
            return
        self._in_flight[dm.ref] = dm
        self.counters["sent_to_server"] += 1
        if self.track is not None:
            self.track(dm, server_id)

    def handed_over(self, ref: str) -> None:
        """The server a held DM went to confirmed it (or, of another implementation, stayed
        alive): it is delivered; forget it."""
        dm = self._in_flight.pop(ref, None)
        if dm is not None:
            self._queue.remove([ref]).addCallback(lambda _: self._confirmed(dm))

    def _confirmed(self, dm: HeldDM) -> None:
        self._delivered(dm)
        # A batch confirmed in full: hand over the next one now rather than at the next sweep.
        recipient = dm.recipient.lower()
        if self.held_for(recipient) and not any(
            d.recipient.lower() == recipient for d in self._in_flight.values()
        ):
            self._release(dm.recipient)

    def not_handed_over(self, ref: str) -> None:
        """A held DM sent to a server was not confirmed: it stays held, tried again later."""
        if self._in_flight.pop(ref, None) is not None:
            self.counters["retry_later"] += 1

    def refused(self, ref: str) -> bool:
        """The server a held DM was handed to refused it for good (its signature, its age): it can
        never be delivered, so it is forgotten (the router tells its sender).  True if it was ours."""
        dm = self._in_flight.pop(ref, None)
        if dm is None:
            return False
        self.counters["refused_by_server"] += 1
        self._queue.remove([ref]).addCallback(lambda _: self._count_out(dm))
        return True

    def _delivered(self, dm: HeldDM) -> None:
        self._count_out(dm)
        self.counters["delivered"] += 1
        self._tell(
            dm.sender, {"msg_ref": "MSG_DIRECT", "user_id": dm.recipient, "ts": dm.ts, "status": "delivered"}
        )

    # -- the hosting side ---------------------------------------------------------------------------

    @property
    def max_age_ms(self) -> int:
        """The oldest held DM (by its ``ts``) this server delivers to its users, and how long it
        remembers the ones it delivered: the holding period and a day for clocks and hand-over."""
        return int((self.hold_for + DAY) * 1000)

    def claim_delivered(self, ref: str) -> Deferred:
        """A held DM arrived from another server for a user of ours: fire True the first time
        (it is delivered), False for a copy already delivered (a replay, or a second hand-over)."""
        return self._queue.claim_delivered(ref, self._now_ms())

    # -- expiry -------------------------------------------------------------------------------------

    def sweep(self) -> Deferred:
        """Expire DMs held longer than ``hold_for`` (each sender told, if online), and retry
        hand-overs a missed event left waiting."""
        now = self._now_ms()
        horizon = now - int(self.hold_for * 1000)
        d = self._queue.expire(horizon, now - self.max_age_ms)
        d.addCallback(self._expired)
        d.addErrback(lambda f: self._log.failure("Expiring held DMs failed", f))
        self._mesh_changed()
        return d

    def _expired(self, gone: list[HeldDM]) -> None:
        for dm in gone:
            self._count_out(dm)
            self.counters["expired"] += 1
            detail = f"not delivered: {dm.recipient} did not come online within {self.hold_for / DAY:g} days"
            notice = wire.error_payload("TIMEOUT", detail)
            notice.update(msg_ref="MSG_DIRECT", user_id=dm.recipient, ts=dm.ts)
            self._tell(dm.sender, notice, kind="ERROR")
        if gone:
            self._log.info("Expired {count} held DMs", count=len(gone))


__all__ = ["HeldMessages", "QueueFull"]
