"""Frames on identified server links: de-duplication, the signature check, forged-frame strikes."""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from socp_tw import crypto, wire
from socp_tw.services.mesh.linksets import LINKS_TYPE
from socp_tw.services.mesh.seen import SeenCache
from socp_tw.services.mesh.state import (
    CLOSE_POLICY,
    GOSSIP_TYPES,
    MAX_ANSWERED_TYPES,
    NEVER_ANSWERED,
    _LinkState,
)
from socp_tw.services.mesh.userfrom import USER_FROM_TYPES


class Verify:
    """Mesh part: the one path every frame of an identified link takes before its handler."""

    @property
    def forged_limit(self) -> int:
        """Bad signatures within ``forged_window`` seconds that cut a server link off."""
        return self._strikes.limit

    @forged_limit.setter
    def forged_limit(self, value: int) -> None:
        self._strikes.limit = value

    @property
    def forged_window(self) -> float:
        """Seconds a bad signature counts against its link."""
        return self._strikes.window

    @forged_window.setter
    def forged_window(self, value: float) -> None:
        self._strikes.window = float(value)

    def _verify(
        self, state: _LinkState, envelope: wire.Envelope, key: RSAPublicKey, body: bytes | None = None
    ) -> bool:
        if envelope.sig and crypto.verify_payload(key, envelope.payload, envelope.sig, body):
            return True
        self._forged(state, envelope)
        return False

    def _forged(self, state: _LinkState, envelope: wire.Envelope) -> None:
        """Count a frame whose signature fails; cut off a link that keeps sending them."""
        self.counters["verify_failed"] += 1
        link_id = state.link.link_id
        cut = self._strikes.strike(link_id)
        count = self._strikes.count(link_id)
        self._log.warn(
            "Dropped {type} from {origin} on link {link} ({server_id}): {why} ({count} in {window:g} s)",
            type=envelope.type,
            origin=envelope.from_,
            link=link_id,
            server_id=state.server_id,
            why="signature does not verify" if envelope.sig else "unsigned",
            count=count,
            window=self.forged_window,
        )
        if cut and not state.retired:
            self.counters["cut_off"] += 1
            self._log.error(
                "Cut off link {link} to server {server_id}: {count} bad signatures in {window:g} s",
                link=link_id,
                server_id=state.server_id,
                count=count,
                window=self.forged_window,
            )
            self._retire(state, "too many invalid signatures", CLOSE_POLICY)

    def _stale(self, envelope: wire.Envelope) -> bool:
        return abs(self._now_ms() - envelope.ts) > self._seen.max_age * 1000

    def _server_frame(self, state: _LinkState, envelope: wire.Envelope) -> None:
        kind = envelope.type
        if kind == "CTRL_CLOSE":
            self._ctrl_close(state, envelope)
            return
        if kind == "ACK" and kind not in self._handlers:
            self.counters["dropped.ack"] += 1
            return
        origin = envelope.from_
        if origin == self.server_id:
            self.counters["dropped.own_frame"] += 1  # our own gossip echoed back: absorbed
            return
        tracked = kind in GOSSIP_TYPES or kind in self._handlers
        seen_key = body = None
        if tracked:
            body = wire.canonical(envelope.payload)  # for the seen-ids key and the signature both
            seen_key = SeenCache.key(envelope, body)
            if seen_key in self._seen:
                self.counters["dropped.duplicate"] += 1
                return
            if kind in GOSSIP_TYPES and self._stale(envelope):
                self.counters["dropped.stale"] += 1
                self._log.debug("Dropped stale {type} from {origin}", type=kind, origin=origin)
                return
        known = self._known.get(origin)
        if known is None:
            if kind == "SERVER_ANNOUNCE":
                self._announce(state, envelope, seen_key, None)
            elif kind in USER_FROM_TYPES and wire.is_uuid(origin):
                self._user_from(state, envelope, body)  # a user's id as ``from``: INTEROP.md row 10
            else:
                self.counters["dropped.unknown_origin"] += 1
                self._log.debug("Dropped {type} from unknown server {origin}", type=kind, origin=origin)
            return
        prepared = self._prepare(state, envelope)
        try:
            self._checked_frame(state, envelope, known, body, seen_key, prepared)
        finally:
            if prepared is not None:
                prepared.discard()  # a no-op once the handler used it

    def _prepare(self, state: _LinkState, envelope: wire.Envelope) -> Any:
        """Let the frame's handler start work that stays on this server (a signature) while the
        frame's own signature is checked (``on_frame(prepare=...)``): only for a frame addressed
        to us, on a link that sent no bad signature lately.  The handler gets what it started
        only if the frame verifies; whatever it did not use is discarded after it."""
        prepare = self._preparers.get(envelope.type)
        if prepare is None or envelope.to != self.server_id or self._strikes.count(state.link.link_id):
            return None
        try:
            return prepare(envelope)
        except Exception:
            self._log.failure(
                "Preparing {type} from {origin} failed", type=envelope.type, origin=envelope.from_
            )
            return None

    def _checked_frame(
        self,
        state: _LinkState,
        envelope: wire.Envelope,
        known: Any,
        body: bytes | None,
        seen_key: Any,
        prepared: Any,
    ) -> None:
        kind = envelope.type
        origin = envelope.from_
        if not self._verify(state, envelope, known.key, body):
            return
        if not state.healthy and origin == state.server_id:
            state.healthy = True
            if state.dialer is not None:
                state.dialer.mark_healthy()
                self._log.info("Link to server {server_id} up (outgoing: it answered)", server_id=origin)
            if state.up:
                self._links_changed()  # our frames arrive there now: a link worth claiming
        if seen_key is not None:
            self._seen.add(seen_key)
        self.counters["verified"] += 1  # every frame is counted: verified here, or dropped above
        if kind == "HEARTBEAT":
            return
        if kind == "USER_ADVERTISE":
            self._user_advertise(state, envelope)
        elif kind == "USER_REMOVE":
            self._user_remove(state, envelope)
        elif kind == "SERVER_ANNOUNCE":
            self._announce(state, envelope, seen_key, known)
        elif kind == "SERVER_HELLO_LINK" and origin == state.server_id:
            self._hello_again(state, envelope)
        elif kind == LINKS_TYPE:
            self._link_set_received(state, envelope)
        elif kind in self._handlers:
            self._routed(state, envelope, prepared)
        elif kind in ("SERVER_HELLO_JOIN", "SERVER_WELCOME", "SERVER_HELLO_LINK"):
            self.counters["dropped.late_handshake"] += 1
        else:
            self._unknown_type(state, envelope)

    def _unknown_type(self, state: _LinkState, envelope: wire.Envelope) -> None:
        """Answer an unknown type once per type per link; never an ERROR or ACK (§5)."""
        kind = envelope.type
        self.counters["unknown_type"] += 1
        if kind in NEVER_ANSWERED or kind in state.answered_types:
            return
        if len(state.answered_types) >= MAX_ANSWERED_TYPES:
            return
        state.answered_types.add(kind)
        payload = wire.error_payload("UNKNOWN_TYPE", f"frame type {kind!r} is not understood here")
        payload["msg_ref"] = kind
        state.link.send(self._signer.frame("ERROR", state.server_id, payload))
