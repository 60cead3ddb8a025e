"""Delivery of user frames to wherever the recipient is (PROTOCOL.md §4-6).

Local recipient: a server-signed ``USER_DELIVER`` (DMs) or the original frame type
(public channel, files), always with the sender and the original ``ts``.  Remote
recipient: ``SERVER_DELIVER`` to its hosting server.  Nobody: ``USER_NOT_FOUND``.
Frames arriving from the mesh are checked end to end (content_sig, and the
sender's key against the one gossip taught us) before a local user sees them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from socp_tw import crypto, wire
from socp_tw.content import ContentError, extract_fields, verify_user_content
from socp_tw.interfaces import (
    IHeldMessages,
    ILink,
    IPeerLinks,
    IPresence,
    IRouter,
    ISigner,
    IUserKeys,
    Unverified,
    UserNotFound,
)
from socp_tw.interfaces.users import DIFFERS
from socp_tw.limits import DEFAULT_LIMITS, check_ts_window
from socp_tw.logs import Aggregated, get_logger
from socp_tw.services.delivery import DeliveryTracker, delivery_ref
from socp_tw.services.keymirror import key_for
from socp_tw.services.outcomes import MAX_HELD_AGE_MS, DeliveryOutcomes


def _discard(result):
    """Swallow the frame nobody will send (its bytes, or its signing failure)."""
    return None


class PreparedDelivery:
    """A local user's copy of a SERVER_DELIVER, its signature started before the mesh had checked
    the SERVER_DELIVER's (see :meth:`Router.prepare_delivery`).  The router takes the frame from
    it (:meth:`take`); the mesh then calls :meth:`discard`, which drops it if nobody did (a
    forged frame, a failing handler).  It also keeps what the router read from the frame's
    payload for it (``delivery``), so the frame is not validated a second time."""

    __slots__ = ("delivery", "envelope", "frame", "link")

    def __init__(self, link: ILink, frame: Deferred, envelope: wire.Envelope, delivery: tuple) -> None:
        self.link = link
        self.frame: Deferred | None = frame
        self.envelope = envelope
        self.delivery = delivery

    def take(self, link: ILink) -> Deferred | None:
        """The started frame, if it was made for ``link``; else it is discarded."""
        frame, self.frame = self.frame, None
        if frame is not None and link is not self.link:
            frame.addBoth(_discard)
            return None
        return frame

    def discard(self) -> None:
        """Drop the frame unsent, unless it was taken (idempotent)."""
        frame, self.frame = self.frame, None
        if frame is not None:
            frame.addBoth(_discard)


@implementer(IRouter)
class Router(DeliveryOutcomes, Service):
    """Route user content between local links and the mesh."""

    name = "router"
    _log = get_logger("socp_tw.router")

    def __init__(
        self,
        presence: IPresence,
        signer: ISigner,
        peers: IPeerLinks,
        *,
        ts_window: float | None = None,
        now_ms: Callable[[], int] = wire.now_ms,
        user_keys: IUserKeys | None = None,
        clock: IReactorTime | None = None,
        delivery_timeout: float = DEFAULT_LIMITS.delivery_timeout,
        max_pending_deliveries: int = DEFAULT_LIMITS.max_pending_deliveries,
        holding: IHeldMessages | None = None,
    ) -> None:
        """``ts_window`` (seconds): refuse a SERVER_DELIVER whose ``ts`` (the sender's) is further
        than that from ``now_ms()`` with ``ERROR BAD_TS`` to its origin — with the mesh's
        ``seen_ids`` this makes a replayed delivery fail (docs/SECURITY.md); None: no check.
        ``user_keys``: the server-side key pins a delivered frame's ``sender_pub`` must match.
        ``delivery_timeout``: seconds a DM sent to another server waits for its confirmation
        before its sender is told it failed (services/delivery.py).  ``holding``: where DMs that
        cannot reach their recipient now are held instead (services/holding/)."""
        if clock is None:
            from twisted.internet import reactor as clock
        self._presence = IPresence(presence)
        self._signer = ISigner(signer)
        self._peers = IPeerLinks(peers)
        self._user_keys = IUserKeys(user_keys) if user_keys is not None else None
        self._holding = IHeldMessages(holding) if holding is not None else None
        self.deliveries = DeliveryTracker(
            self._peers,
            self._signer,
            self._presence,
            clock,
            self._dm_failed,
            on_confirmed=self._dm_confirmed,
            timeout=delivery_timeout,
            max_pending=max_pending_deliveries,
        )
        if self._holding is not None:
            self._holding.track = self._track_held
        self._ts_window_ms = None if ts_window is None else round(ts_window * 1000)
        self._now_ms = now_ms
        self._refused_gossip = Aggregated(clock, 60.0)  # peers refusing what we send: a line a minute
        self.counters: dict[str, int] = {}
        # Origin servers whose deliveries are checked before signing: each sent one that failed.
        self._checked_first: set[str] = set()
        self._peers.on_frame("SERVER_DELIVER", self.deliver_from_server, prepare=self.prepare_delivery)
        self._peers.on_frame("ERROR", self.error_from_server)
        self._peers.on_frame("ACK", self.ack_from_server)

    def stopService(self) -> None:
        self.deliveries.stop()
        return super().stopService()

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def route(
        self,
        kind: str,
        recipient: str,
        fields: dict[str, Any],
        ts: int,
        sender: str,
        sender_pub: str,
        verified: Callable[[], bool] | None = None,
    ) -> str:
        """See :meth:`IRouter.route`.  With ``verified``, the signature and the content check run
        at once (pool and reactor): the check no longer adds to a message's latency."""
        entry = self._presence.lookup(recipient)
        if entry is None:
            self._check(verified, None)
            if self._can_hold(kind, recipient):
                self._hold(sender, recipient, ts, fields, sender_pub, "offline")
                return "held"
            self._count("not_found")
            raise UserNotFound(recipient)
        if entry.local:
            self._deliver_local(entry.link, kind, recipient, fields, ts, sender, sender_pub, verified)
            return "local"
        payload = {"user_id": recipient, **fields, "sender": sender, "sender_pub": sender_pub}
        if kind != "MSG_DIRECT":
            payload["type"] = kind
        frame = self._signer.frame("SERVER_DELIVER", entry.server_id, payload, ts=ts)
        self._check(verified, frame)
        if not self._peers.send_to_server(entry.server_id, frame):
            frame.addErrback(_discard)
            if self._can_hold(kind, recipient):
                self._hold(sender, recipient, ts, fields, sender_pub, "unreachable")
                return "held"
            self._count("no_route")
            raise UserNotFound(f"{recipient} (no route to its server {entry.server_id})")
        self._count("to_server")
        if kind == "MSG_DIRECT":
            ref = delivery_ref(fields["content_sig"])
            self.deliveries.sent(
                ref, sender, recipient, ts, entry.server_id, fields=fields, sender_pub=sender_pub
            )
        return entry.server_id

    def _deliver_local(
        self,
        link: ILink,
        kind: str,
        recipient: str,
        fields: dict[str, Any],
        ts: int,
        sender: str,
        sender_pub: str,
        verified: Callable[[], bool] | None = None,
        frame: Deferred | None = None,
    ) -> None:
        """Send a local user its copy; ``frame``: its signature, if already started."""
        if frame is None:
            frame = self._local_frame(kind, recipient, fields, ts, sender, sender_pub, link)
        self._check(verified, frame)
        link.send(frame)
        self._count("local")

    def _local_frame(
        self,
        kind: str,
        recipient: str,
        fields: dict[str, Any],
        ts: int,
        sender: str,
        sender_pub: str,
        link: ILink | None = None,
    ) -> Deferred:
        """Start signing what a local recipient gets: USER_DELIVER for a DM, else the frame's own type.
        ``sender_pub`` goes in the encoding the recipient on ``link`` reads (services/keymirror.py)."""
        payload = {**fields, "sender": sender, "sender_pub": key_for(link, sender_pub)}
        frame_type = "USER_DELIVER" if kind == "MSG_DIRECT" else kind
        return self._signer.frame(frame_type, recipient, payload, ts=ts)

    def _check(self, verified: Callable[[], bool] | None, frame: Deferred | None) -> None:
        """Run a content check deferred until the frame's signature was started (see ``route``);
        if it fails, drop the frame (the pool's signature is never sent) and raise
        :class:`Unverified`.  The frame was not handed to any link yet, so no link sees it."""
        if verified is None or verified():
            return
        if frame is not None:
            frame.addBoth(_discard)
        self._count("unverified")
        raise Unverified("the content signature does not verify")

    def _content_problem(
        self, kind: str, fields: dict, sender: str, recipient: str, ts: int, sender_pub: str
    ) -> str | None:
        """Why relayed content must not reach a local user (sender key, content_sig), or None."""
        try:
            known = self._presence.lookup(sender)
            if (
                known is not None
                and known.pubkey  # a keyless advert (docs/INTEROP.md row 1) leaves only the pin
                and known.pubkey != sender_pub
                and not _same_key(known.pubkey, sender_pub)
            ):
                raise ContentError(f"sender_pub of {sender} differs from the key its server advertised")
            if self._user_keys is not None and self._user_keys.check(sender, sender_pub) == DIFFERS:
                raise ContentError(f"sender_pub of {sender} differs from the key pinned for it")
            verify_user_content(kind, fields, sender, recipient, ts, sender_pub)
        except (ContentError, crypto.BadKey) as error:
            return error.detail
        return None

    def _delivery(self, envelope: wire.Envelope) -> tuple[str, str, str, str, dict[str, Any]]:
        """(kind, recipient, sender, sender_pub, fields) of a SERVER_DELIVER; a precise
        :class:`wire.FrameError` for one that cannot be delivered as it is."""
        payload = envelope.payload
        kind = payload.get("type", "MSG_DIRECT")
        if not isinstance(kind, str):
            raise wire.BadFieldType("payload field 'type' must be a string", "type")
        recipient = wire.require_uuid(payload, "user_id")
        if "sender" not in payload:
            raise ContentError(
                "SERVER_DELIVER without sender: its content_sig cannot be checked (not tolerated,"
                " docs/INTEROP.md row 12)"
            )
        sender = wire.require_uuid(payload, "sender")
        sender_pub = wire.require_str(payload, "sender_pub", max_len=4096)
        fields = extract_fields(kind, payload)
        if payload.get("held") is True and kind == "MSG_DIRECT":
            # A held DM keeps its sender's ts, however old: bounded by the retention instead, and
            # delivered once per reference (services/outcomes.py).
            max_age = self._holding.max_age_ms if self._holding is not None else MAX_HELD_AGE_MS
            if self._now_ms() - envelope.ts > max_age:
                raise wire.BadTimestamp("a held DM older than the retention period", "ts")
        elif self._ts_window_ms is not None:
            check_ts_window(envelope.ts, self._now_ms(), self._ts_window_ms)
        return kind, recipient, sender, sender_pub, fields

    def prepare_delivery(self, envelope: wire.Envelope) -> PreparedDelivery | None:
        """Start signing the USER_DELIVER of a SERVER_DELIVER for a local user while the mesh
        still checks the SERVER_DELIVER's own signature (``IPeerLinks.on_frame(prepare=...)``).

        Nothing leaves the server here: the frame goes to a link only from
        :meth:`deliver_from_server`, which the mesh calls only if the signature verifies, and
        only after the content check.  None (nothing started) for anything else: a frame that
        is not well formed, a recipient who is not ours, an origin that sent a forgery."""
        if envelope.from_ in self._checked_first or envelope.payload.get("held") is True:
            return None
        try:
            delivery = self._delivery(envelope)
        except wire.FrameError:
            return None  # deliver_from_server reports it, once the frame is known to be genuine
        kind, recipient, sender, sender_pub, fields = delivery
        entry = self._presence.lookup(recipient)
        if entry is None or not entry.local:
            return None
        frame = self._local_frame(kind, recipient, fields, envelope.ts, sender, sender_pub, entry.link)
        return PreparedDelivery(entry.link, frame, envelope, delivery)

    def deliver_from_server(
        self, envelope: wire.Envelope, origin_link: ILink, prepared: PreparedDelivery | None = None
    ) -> None:
        payload = envelope.payload
        origin = envelope.from_
        if prepared is not None and prepared.envelope is not envelope:
            prepared.discard()  # made for another frame: neither its reading nor its signature fits
            prepared = None
        try:
            # A prepared frame was read and checked by prepare_delivery already.
            delivery = prepared.delivery if prepared is not None else self._delivery(envelope)
        except wire.FrameError as error:
            self._count("bad_deliver")
            self._log.warn(
                "Refused SERVER_DELIVER from server {origin}: {code} {detail}",
                origin=origin,
                code=error.code,
                detail=error.detail,
            )
            self._error_to_server(origin, error.code, error.detail, payload)
            return
        kind, recipient, sender, sender_pub, fields = delivery
        entry = self._presence.lookup(recipient)
        if entry is not None and entry.local and envelope.payload.get("held") is True:
            self._held_delivery(envelope, delivery, entry.link)
            return
        if entry is not None and entry.local:
            refused: list[str] = []

            def content_ok() -> bool:
                problem = self._content_problem(kind, fields, sender, recipient, envelope.ts, sender_pub)
                if problem is not None:
                    refused.append(problem)
                return problem is None

            # Sign while checking (see ``route``), unless this origin already sent a frame that
            # failed the check: then one wasted signature per origin server at most.  The
            # signature may have started even before the mesh checked the frame (``prepared``,
            # never made for an origin that is checked first).
            started = prepared.take(entry.link) if prepared is not None else None
            sign_ahead = origin not in self._checked_first
            try:
                if sign_ahead or content_ok():
                    self._deliver_local(
                        entry.link,
                        kind,
                        recipient,
                        fields,
                        envelope.ts,
                        sender,
                        sender_pub,
                        content_ok if sign_ahead else None,
                        started,
                    )
                    if kind == "MSG_DIRECT":
                        self.deliveries.delivered_here(origin, delivery_ref(fields["content_sig"]))
                    return
            except Unverified:
                self._checked_first.add(origin)
            self._count("invalid_sig")
            if refused[0].startswith("content_sig of"):  # what a relay that re-stamps ts causes too
                refused[0] += " (forged, or a server re-stamped its ts: not tolerated, INTEROP.md row 12)"
            self._log.warn(
                "Refused SERVER_DELIVER ({kind}) from server {origin}: {detail}",
                kind=kind,
                origin=origin,
                detail=refused[0],
            )
            self._error_to_server(origin, "INVALID_SIG", refused[0], payload)
            return
        # A prepared signature not taken above is the mesh's to discard (IPeerLinks.on_frame).
        if entry is not None and entry.server_id != origin:
            raw = wire.encode_frame(
                envelope.type, envelope.from_, envelope.to, envelope.ts, envelope.payload, envelope.sig
            )
            if self._peers.send_to_server(entry.server_id, raw):
                self._count("forwarded")
                return
        self._count("not_found")
        self._error_to_server(origin, "USER_NOT_FOUND", f"no server hosts user {recipient}", payload)


def _same_key(a: str, b: str) -> bool:
    """True if two key encodings (DER/PEM, padded or not) name the same key."""
    try:
        return crypto.encode_public_key(crypto.load_public_key(a)) == crypto.encode_public_key(
            crypto.load_public_key(b)
        )
    except crypto.BadKey:
        return False
