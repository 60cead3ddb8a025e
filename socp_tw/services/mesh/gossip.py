"""Gossip: SERVER_ANNOUNCE, introductions, USER_ADVERTISE / USER_REMOVE and their checks."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from socp_tw import crypto, wire
from socp_tw.interfaces.users import DIFFERS, FULL
from socp_tw.services.mesh.pins import KnownServer
from socp_tw.services.mesh.state import (
    MAX_META_BYTES,
    KeyRefused,
    _LinkState,
    _note_ext,
    _parse_address_payload,
)


class Gossip:
    """Mesh part: server and presence gossip, flooded and de-duplicated."""

    def _hello_again(self, state: _LinkState, envelope: wire.Envelope) -> None:
        """SERVER_HELLO_LINK on a live link: only an address update is of interest."""
        try:
            host, port, key_text = _parse_address_payload(envelope.payload)
            key, _ = self._check_key(envelope.from_, key_text, "SERVER_HELLO_LINK", (host, port))
            known = self._remember(
                envelope.from_, key, key_text, (host, port), "SERVER_HELLO_LINK", linked=True
            )
            known.described = (envelope.payload, envelope.sig)
            _note_ext(known, envelope.payload)
        except (wire.FrameError, KeyRefused) as e:
            self.counters["dropped.bad_hello"] += 1
            self._log.warn(
                "Ignored SERVER_HELLO_LINK from {server_id}: {detail}",
                server_id=envelope.from_,
                detail=str(e),
            )

    def _announce(
        self, state: _LinkState, envelope: wire.Envelope, seen_key: tuple | None, known: KnownServer | None
    ) -> None:
        """SERVER_ANNOUNCE {host, port, pubkey}: pin (first contact) or check the key, store the
        address, forward unchanged to the other links.  Signature already checked if ``known``."""
        origin = envelope.from_
        try:
            host, port, key_text = _parse_address_payload(envelope.payload)
            key, _ = self._check_key(origin, key_text, "SERVER_ANNOUNCE", (host, port))
        except (wire.FrameError, KeyRefused) as e:  # a refused key change is also logged as an error
            self._bad_gossip(state, envelope, e.detail)
            return
        if known is None and envelope.sig and not crypto.verify_payload(key, envelope.payload, envelope.sig):
            self._forged(state, envelope)
            return
        if seen_key is not None:
            self._seen.add(seen_key)
        direct = origin == state.server_id
        try:
            new = origin not in self._known
            known = self._remember(origin, key, key_text, (host, port), "SERVER_ANNOUNCE", linked=direct)
        except KeyRefused as e:
            self._bad_gossip(state, envelope, e.detail)
            return
        if envelope.sig:
            known.described = (envelope.payload, envelope.sig)
        _note_ext(known, envelope.payload)
        self.counters["announces"] += 1
        if envelope.to == "*":
            self._log.info("Server announced: {server_id}", server_id=origin)
            self._forward(envelope, state)
        elif new:
            self._log.info(
                "Learnt of server {server_id} from server {via}", server_id=origin, via=state.server_id
            )
        if origin not in self._by_server:
            self._want_link(origin, self._gossip_dial_delay(origin))

    def _introduce_neighbours(self, state: _LinkState) -> None:
        """Introduce a new neighbour and our other live neighbours to each other.

        Each learns the other from the other's own signed self-description, sent as a
        SERVER_ANNOUNCE addressed to it (the transport sig covers the payload only, so it
        still verifies with the described server's key).  Servers that joined at the same
        time, or linked without joining, thus still find each other.
        """
        server_id = state.server_id
        newcomer = self._known.get(server_id)
        for other_id, other in list(self._by_server.items()):
            known = self._known.get(other_id)
            if other_id == server_id or known is None:
                continue
            if known.described is not None:
                payload, sig = known.described
                state.link.send(
                    wire.encode_frame("SERVER_ANNOUNCE", other_id, server_id, self._now_ms(), payload, sig)
                )
            if newcomer is not None and newcomer.described is not None:
                payload, sig = newcomer.described
                other.link.send(
                    wire.encode_frame("SERVER_ANNOUNCE", server_id, other_id, self._now_ms(), payload, sig)
                )

    # -- presence gossip ------------------------------------------------------------------------------

    def _bad_gossip(self, state: _LinkState, envelope: wire.Envelope, detail: str) -> None:
        self.counters["dropped.bad_gossip"] += 1
        self._log.warn(
            "Dropped {type} from {origin} (via {server_id}): {detail}",
            type=envelope.type,
            origin=envelope.from_,
            server_id=state.server_id,
            detail=detail,
        )

    def _user_advertise(self, state: _LinkState, envelope: wire.Envelope) -> None:
        payload = envelope.payload
        try:
            user_id = wire.require_uuid(payload, "user_id")
            server_id = wire.require_uuid(payload, "server_id")
            meta = payload.get("meta")
            if meta is not None and not isinstance(meta, dict):
                raise wire.BadFieldType("payload field 'meta' must be an object", "meta")
            pubkey = _advertised_key(payload, meta)
        except wire.FrameError as e:
            self._bad_gossip(state, envelope, e.detail)
            return
        if server_id == self.server_id:
            self._bad_gossip(state, envelope, "it places a user on this server")
            return
        if envelope.from_ != server_id:
            self._not_its_own(state, envelope, user_id, server_id)
            return
        if pubkey is None:
            self._keyless_advertise(state, envelope, user_id, server_id, meta or {})
            return
        verdict = self._user_keys.pin_advertised(user_id, pubkey, server_id)
        if verdict == DIFFERS:
            self._user_key_refused(envelope, user_id, pubkey)
            return
        if verdict == FULL:
            self.counters["dropped.user_pins_full"] += 1
            return
        meta = meta or {}
        if len(wire.canonical(meta)) > MAX_META_BYTES:
            meta = {"pubkey": pubkey}
        self.counters["gossip.advertise"] += 1
        self._presence.user_online_remote(user_id, server_id, pubkey, meta)
        if server_id not in self._by_server:
            self._schedule_withdraw(server_id)
        self._forward(envelope, state)

    def _keyless_advertise(
        self, state: _LinkState, envelope: wire.Envelope, user_id: str, server_id: str, meta: dict
    ) -> None:
        """USER_ADVERTISE with no key anywhere (docs/INTEROP.md row 1): the location is recorded
        and relayed, the pin book is never touched.  The presence entry keeps the key of an
        earlier (pin-checked) advert of the same user, else it has none; a key for the user only
        ever comes from a keyed advert, which is checked against the pin as always."""
        current = self._presence.lookup(user_id)
        pubkey = current.pubkey if current is not None and not current.local else ""
        if len(wire.canonical(meta)) > MAX_META_BYTES:
            meta = {}
        self.counters["gossip.advertise_keyless"] += 1
        self._log.debug(
            "USER_ADVERTISE of user {user} from server {origin} carries no key: location recorded",
            user=user_id,
            origin=server_id,
        )
        self._presence.user_online_remote(user_id, server_id, pubkey, meta)
        if server_id not in self._by_server:
            self._schedule_withdraw(server_id)
        self._forward(envelope, state)

    def _user_remove(self, state: _LinkState, envelope: wire.Envelope) -> None:
        try:
            user_id = wire.require_uuid(envelope.payload, "user_id")
            server_id = wire.require_uuid(envelope.payload, "server_id")
        except wire.FrameError as e:
            self._bad_gossip(state, envelope, e.detail)
            return
        if envelope.from_ != server_id:
            self._not_its_own(state, envelope, user_id, server_id)
            return
        self.counters["gossip.remove"] += 1
        self._presence.user_offline_remote(user_id, server_id)
        self._forward(envelope, state)

    def _not_its_own(self, state: _LinkState, envelope: wire.Envelope, user_id: str, named: str) -> None:
        """Presence is spoken only by the hosting server: ``from`` (the origin, which relays keep)
        must be the ``server_id`` the frame names.  Dropped, counted, one warning a minute per origin."""
        origin = envelope.from_
        self.counters["dropped.not_hosting_server"] += 1
        count = self._refusals.hit(("not-own", origin))
        if count is not None:
            self._log.warn(
                "Dropped {type} from server {origin} (via {via}): it speaks for server {named} about"
                " user {user}; only a user's own server may ({count} such frames from {origin} in the"
                " last minute)",
                type=envelope.type,
                origin=origin,
                via=state.server_id,
                named=named,
                user=user_id,
                count=count,
            )

    def _user_key_refused(self, envelope: wire.Envelope, user_id: str, pubkey: str) -> None:
        """An advertise with another key than the one pinned for the user: refused, like a changed
        server key (docs/SECURITY.md says how an operator lifts a pin)."""
        self.counters["user_key_refused"] += 1
        pin = self._user_keys.lookup(user_id)
        count = self._refusals.hit(("user-key", envelope.from_, user_id))
        if count is not None and pin is not None:
            self._log.error(
                "REFUSED changed key for user {user} advertised by server {origin}: pinned {pinned}"
                " ({where}), offered {offered} ({count} in the last minute)",
                user=user_id,
                origin=envelope.from_,
                pinned=pin.fingerprint,
                where=f"home server {pin.home_server}" if pin.home_server else "here",
                offered=crypto.fingerprint(pubkey),
                count=count,
            )

    def _forward(self, envelope: wire.Envelope, arrival: _LinkState) -> int:
        """Send ``envelope`` unchanged to the live links that need it (linksets.py: never the one
        it came on, nor its origin, nor a server that has it from the origin directly)."""
        return self.relay(envelope, arrival.link)

    def _advertise_frame(self, entry: Any) -> Deferred:
        meta = {**entry.meta, "pubkey": entry.pubkey}
        payload = {
            "user_id": entry.user_id,
            "server_id": self.server_id,
            "pubkey": entry.pubkey,
            "meta": meta,
        }
        return self._signer.frame("USER_ADVERTISE", "*", payload)

    def user_online(self, entry: Any) -> None:
        """IPresenceObserver: a local user came online: USER_ADVERTISE to every server."""
        if entry.local and self._by_server:
            self.broadcast(self._advertise_frame(entry))

    def user_offline(self, entry: Any) -> None:
        """IPresenceObserver: a local user left: USER_REMOVE to every server."""
        if entry.local and self._by_server:
            payload = {"user_id": entry.user_id, "server_id": self.server_id}
            self.broadcast(self._signer.frame("USER_REMOVE", "*", payload))


def _advertised_key(payload: dict, meta: dict | None) -> str | None:
    """The advert's user key: top-level ``pubkey``, else ``meta.pubkey`` (some servers send only
    that), else None.  A key that is present must be a usable key."""
    if "pubkey" in payload:
        pubkey = wire.require_str(payload, "pubkey", max_len=16384)
    elif meta is not None and "pubkey" in meta:
        pubkey = wire.require_str(meta, "pubkey", max_len=16384)
    else:
        return None
    crypto.load_public_key(pubkey)
    return pubkey
