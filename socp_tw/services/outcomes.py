"""How each DM ends, for the router: delivered, held, or its sender told which one failed.

A mixin of :class:`~socp_tw.services.router.Router` (it uses the router's presence, signer,
mesh, tracker and holding service).  The rules (docs/MESH.md, docs/SECURITY.md §2b):

- a DM that cannot reach its recipient now (offline, its server unreachable, unconfirmed by
  that server, or refused by it as ``USER_NOT_FOUND``) is held when the holding service can
  hold it (services/holding/), its sender told ``queued``; otherwise, and for other kinds of
  content, the sender gets ``ERROR {code, detail, msg_ref, user_id, ts}``, once;
- a held DM arriving from another server (``held: true``) is delivered once per reference
  (a persisted digest), however old its ``ts``, within the retention period.
"""

from __future__ import annotations

from typing import Any

from socp_tw import wire
from socp_tw.interfaces import ILink
from socp_tw.services.delivery import PendingDelivery, delivery_ref

#: Held DMs older than this are refused by a recipient's server that holds nothing itself;
#: one that does uses its own ``--hold-days`` and a day (``IHeldMessages.max_age_ms``, the same
#: 8 days by default).
MAX_HELD_AGE_MS = 8 * 86400 * 1000


def _discard(result: Any) -> None:
    return None


#: Frames of ours a peer may refuse wholesale (ERROR about them is a warning).
_OUR_GOSSIP = ("USER_ADVERTISE", "USER_REMOVE", "SERVER_ANNOUNCE")


class DeliveryOutcomes:
    """The router's failure, confirmation and holding paths."""

    # -- holding ------------------------------------------------------------------------------------

    def _can_hold(self, kind: str, recipient: str) -> bool:
        return kind == "MSG_DIRECT" and self._holding is not None and self._holding.can_hold(recipient)

    def _hold(self, sender: str, recipient: str, ts: int, fields: dict, sender_pub: str, reason: str) -> None:
        """Hold a DM; a bound reached (or a failed write) is reported to its sender at once."""
        d = self._holding.hold(sender, recipient, ts, fields, sender_pub, reason)
        d.addErrback(self._not_held, sender, recipient, ts)
        self._count("held")

    def _not_held(self, failure: Any, sender: str, recipient: str, ts: int) -> None:
        detail = getattr(failure.value, "detail", None)
        code = "QUEUE_FULL" if detail is not None else "INTERNAL"
        self._tell_sender(sender, recipient, ts, code, detail or "the DM could not be held", "MSG_DIRECT")

    # -- the tracker's outcomes (services/delivery.py) ------------------------------------------------

    def _dm_failed(self, pending: PendingDelivery, code: str, detail: str) -> None:
        if pending.held:
            self._holding.not_handed_over(pending.ref)  # still held: tried again later
            return
        if pending.fields is not None and self._can_hold("MSG_DIRECT", pending.recipient):
            self._hold(
                pending.sender,
                pending.recipient,
                pending.ts,
                pending.fields,
                pending.sender_pub,
                "unreachable",
            )
            return
        self._log.info(
            "DM from {sender} to {recipient} failed: {code} {detail}",
            sender=pending.sender,
            recipient=pending.recipient,
            code=code,
            detail=detail,
        )
        self._tell_sender(pending.sender, pending.recipient, pending.ts, code, detail, "MSG_DIRECT")

    def _dm_confirmed(self, pending: PendingDelivery) -> None:
        if pending.held:
            self._holding.handed_over(pending.ref)

    def _track_held(self, dm: Any, server_id: str) -> None:
        """A held DM went to ``server_id``: wait for its confirmation (holding service hook)."""
        self.deliveries.sent(dm.ref, dm.sender, dm.recipient, dm.ts, server_id, held=True)

    # -- between servers ------------------------------------------------------------------------------

    def _error_to_server(self, server_id: str, code: str, detail: str, payload: dict[str, Any]) -> None:
        """Tell the origin server a delivery failed, naming recipient and sender for its user."""
        error = wire.error_payload(code, detail)
        error["msg_ref"] = "SERVER_DELIVER"
        for name in ("user_id", "sender"):
            if isinstance(payload.get(name), str):
                error[name] = payload[name]
        if isinstance(payload.get("type"), str):
            error["kind"] = payload["type"]
        elif isinstance(payload.get("content_sig"), str):
            error["ref"] = delivery_ref(payload["content_sig"])
        frame = self._signer.frame("ERROR", server_id, error)
        if not self._peers.send_to_server(server_id, frame):
            frame.addErrback(_discard)

    def error_from_server(self, envelope: wire.Envelope, origin_link: ILink) -> None:
        """A peer reports a failed delivery: hold the DM, or tell our sending user.  Never answered."""
        self._count("errors_from_servers")
        payload = envelope.payload
        sender = payload.get("sender")
        if payload.get("msg_ref") != "SERVER_DELIVER" or not isinstance(sender, str):
            if self._refuses_our_gossip(envelope):
                return
            self._log.info(
                "ERROR from server {server}: {code} {detail}",
                server=envelope.from_,
                code=payload.get("code"),
                detail=payload.get("detail"),
            )
            return
        code = payload.get("code") if isinstance(payload.get("code"), str) else "DELIVERY_FAILED"
        detail = payload.get("detail") if isinstance(payload.get("detail"), str) else ""
        recipient = payload.get("user_id")
        kind = payload.get("kind", "MSG_DIRECT")
        ts = None
        if kind == "MSG_DIRECT":
            # A DM is reported once: only while it is still pending (not confirmed, not timed out).
            pending = self.deliveries.refused(envelope.from_, sender, recipient, payload.get("ref"))
            if pending is None:
                self._count("late_errors")
                return
            if pending.held and code == "USER_NOT_FOUND":
                self._holding.not_handed_over(pending.ref)  # gone again: still held
                return
            if pending.held:
                self._holding.refused(pending.ref)  # refused for good: its sender is told below
            elif (
                code == "USER_NOT_FOUND"
                and pending.fields is not None
                and self._can_hold(kind, pending.recipient)
            ):
                self._hold(
                    sender, pending.recipient, pending.ts, pending.fields, pending.sender_pub, "offline"
                )
                return
            ts = pending.ts
        self._tell_sender(sender, recipient, ts, code, f"delivery to {recipient} failed: {detail}", kind)

    def _refuses_our_gossip(self, envelope: wire.Envelope) -> bool:
        """``ERROR INVALID_SIG``/``BAD_KEY`` about our presence or announce frames: that peer cannot
        verify what we send (often a key encoding it cannot read, docs/INTEROP.md): a warning,
        once a minute per peer and frame type, with the count."""
        payload = envelope.payload
        code, ref, detail = payload.get("code"), payload.get("msg_ref"), str(payload.get("detail"))[:200]
        if code not in ("INVALID_SIG", "BAD_KEY"):
            return False
        about = next((t for t in _OUR_GOSSIP if ref == t or t in detail), None)
        if about is None:
            return False
        self._count("peer_refuses_gossip")
        count = self._refused_gossip.hit((envelope.from_, about))
        if count is not None:
            self._log.warn(
                "Server {server} refuses our {about}: ERROR {code} {detail} ({count} in the last minute);"
                " it cannot verify what we send, so presence does not reach it",
                server=envelope.from_,
                about=about,
                code=code,
                detail=detail,
                count=count,
            )
        return True

    def ack_from_server(self, envelope: wire.Envelope, origin_link: ILink) -> None:
        """``ACK`` from a peer: a confirmation of delivered DMs (others are ignored).  Never answered."""
        self.deliveries.ack_received(envelope)

    # -- to our users ---------------------------------------------------------------------------------

    def _tell_sender(
        self, sender: str, recipient: Any, ts: int | None, code: str, detail: str, kind: Any
    ) -> None:
        """``ERROR {code, detail, msg_ref: <kind>, user_id: <recipient>, ts: <original ts>}`` to a
        local sender, so its client can say which message failed."""
        link = self._presence.local_link(sender)
        if link is None:
            self._count("failure_unreported")  # the sender left meanwhile
            return
        notice = wire.error_payload(code, detail)
        notice["msg_ref"] = kind if isinstance(kind, str) else "MSG_DIRECT"
        if isinstance(recipient, str):
            notice["user_id"] = recipient
        if ts is not None:
            notice["ts"] = ts
        self._count("failure_reported")
        link.send(self._signer.frame("ERROR", sender, notice))

    # -- held DMs from other servers --------------------------------------------------------------------

    def _held_delivery(self, envelope: wire.Envelope, delivery: tuple, link: ILink) -> None:
        """A held DM for a local user: delivered once per reference, confirmed either way."""
        kind, recipient, sender, sender_pub, fields = delivery
        origin = envelope.from_
        ref = delivery_ref(fields["content_sig"])
        problem = self._content_problem(kind, fields, sender, recipient, envelope.ts, sender_pub)
        if problem is not None:
            self._count("invalid_sig")
            self._error_to_server(origin, "INVALID_SIG", problem, envelope.payload)
            return
        if self._holding is None:
            self._deliver_local(link, kind, recipient, fields, envelope.ts, sender, sender_pub, None)
            self.deliveries.delivered_here(origin, ref)
            return

        def claimed(first: bool) -> None:
            if first:
                payload = {**fields, "sender": sender, "sender_pub": sender_pub, "held": True}
                link.send(self._signer.frame("USER_DELIVER", recipient, payload, ts=envelope.ts))
                self._count("held_delivered")
            else:
                self._count("held_duplicate")  # a replay, or a copy handed over twice: shown once
            self.deliveries.delivered_here(origin, ref)

        self._holding.claim_delivered(ref).addCallback(claimed).addErrback(
            lambda f: self._log.failure("Delivering a held DM to {user} failed", f, user=recipient)
        )


__all__ = ["MAX_HELD_AGE_MS", "DeliveryOutcomes"]
