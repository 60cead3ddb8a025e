"""Identifying a server link, the accepting side: SERVER_HELLO_JOIN answered by SERVER_WELCOME,
SERVER_HELLO_LINK or SERVER_ANNOUNCE as a first frame.  The dialler's side is ``joining.py``."""

from __future__ import annotations

from typing import Any

from socp_tw import crypto, wire
from socp_tw.interfaces import ILink
from socp_tw.services.mesh.seen import SeenCache
from socp_tw.services.mesh.state import (
    OUR_EXTENSIONS,
    KeyRefused,
    _LinkState,
    _note_ext,
    _parse_address_payload,
)


class Handshake:
    """Mesh part: the first frames of a server link, dialler and accepting side."""

    def _own_key_for(self, server_id: str | None = None, pem: bool = False) -> str:
        """Our public key in the encoding ``server_id`` understands (PEM mirror, §8)."""
        known = self._known.get(server_id) if server_id else None
        return self._own_pem if pem or (known is not None and known.pem) else self._own_pubkey

    def _address_payload(self, server_id: str | None = None, pem: bool = False) -> dict[str, Any]:
        host, port = self.advertised_address()
        pubkey = self._own_key_for(server_id, pem)
        return {"host": host, "port": port, "pubkey": pubkey, "ext": OUR_EXTENSIONS}

    # -- first frames of incoming links ---------------------------------------------------------

    def _first_frame(self, link: ILink, envelope: wire.Envelope) -> None:
        if link.link_id in self._refused_links:
            self.counters["dropped.after_refusal"] += 1  # refused already; closing
        elif envelope.type == "SERVER_HELLO_JOIN":
            self._accept_join(link, envelope)
        elif envelope.type in ("SERVER_HELLO_LINK", "SERVER_ANNOUNCE"):
            self._accept_link(link, envelope)

    def _accept_join(self, link: ILink, envelope: wire.Envelope) -> None:
        """SERVER_HELLO_JOIN: assign an id, pin the key, answer SERVER_WELCOME; the link stays."""
        try:
            host, port, key_text = _parse_address_payload(envelope.payload)
        except wire.FrameError as e:
            self._refuse(link, e.code, e.detail)
            return
        try:
            key = crypto.load_public_key(key_text)
        except crypto.BadKey as e:
            self._refuse(link, "BAD_KEY", e.detail)
            return
        if envelope.sig and not crypto.verify_payload(key, envelope.payload, envelope.sig):
            self._refuse(link, "INVALID_SIG", "SERVER_HELLO_JOIN is not signed by the key it carries")
            return
        norm = crypto.encode_public_key(key)
        requested = envelope.from_ if wire.is_uuid(envelope.from_) else None
        assigned = requested
        if requested is None or requested == self.server_id:
            assigned = wire.new_uuid4()
        elif requested in self._known and self._known[requested].pubkey == norm and not envelope.sig:
            # Anyone can copy a public key: a pinned id must prove it holds the private one.
            self._refuse(
                link, "INVALID_SIG", f"server {requested} is known here: its SERVER_HELLO_JOIN must be signed"
            )
            return
        elif requested in self._known and self._known[requested].pubkey != norm:
            self._key_changed(requested, self._known[requested].key, key, "SERVER_HELLO_JOIN")
            assigned = wire.new_uuid4()
            self._log.warn(
                "Server id {requested} is taken by another key: assigning {assigned} to the joiner",
                requested=requested,
                assigned=assigned,
            )
        try:
            key, norm = self._check_key(assigned, key_text, "SERVER_HELLO_JOIN", (host, port))
            known = self._remember(assigned, key, key_text, (host, port), "SERVER_HELLO_JOIN", linked=True)
        except KeyRefused as e:
            self._refuse(link, e.code, e.detail)
            return
        _note_ext(known, envelope.payload)
        if envelope.sig:
            known.described = (envelope.payload, envelope.sig)
        self._log.info("Server joining {server_id}", server_id=assigned)
        self.counters["joins_accepted"] += 1
        link.role = "server"
        link.identity = assigned
        self._hub.bind(link, self)
        state = _LinkState(link, last_seen=self._clock.seconds())
        self._links[link.link_id] = state
        link.send(self._signer.frame("SERVER_WELCOME", assigned, self._welcome_payload(assigned)))
        self._link_up(state, assigned)
        self._want_link(assigned)

    def _welcome_payload(self, joiner: str) -> dict[str, Any]:
        """SERVER_WELCOME: us and every live linked server, in both list forms (§4)."""
        host, port = self.advertised_address()
        servers = [
            {
                "server_id": self.server_id,
                "host": host,
                "port": port,
                "pubkey": self._own_key_for(joiner),
                "ext": OUR_EXTENSIONS,
            }
        ]
        for server_id in self.connected_servers():
            known = self._known.get(server_id)
            if server_id == joiner or known is None or known.host is None:
                continue
            pubkey = crypto.encode_public_key(known.key, pem=known.pem)
            servers.append({"server_id": server_id, "host": known.host, "port": known.port, "pubkey": pubkey})
        # ``server_id`` too: one implementation requires it in ``clients`` (docs/INTEROP.md row 11).
        clients = [
            {
                "user_id": s["server_id"],
                "server_id": s["server_id"],
                "host": s["host"],
                "port": s["port"],
                "pubkey": s["pubkey"],
            }
            for s in servers
        ]
        return {"assigned_id": joiner, "clients": clients, "servers": servers}

    def _accept_link(self, link: ILink, envelope: wire.Envelope) -> None:
        """SERVER_HELLO_LINK (or SERVER_ANNOUNCE) as the first frame of an incoming link."""
        server_id = envelope.from_
        try:
            host, port, key_text = _parse_address_payload(envelope.payload)
        except wire.FrameError as e:
            self._refuse(link, e.code, e.detail)
            return
        if server_id == self.server_id:
            self._refuse(link, "BAD_FRAME", f"{envelope.type} claims this server's own id")
            return
        try:
            key, _ = self._check_key(server_id, key_text, envelope.type, (host, port))
            pinned = server_id in self._known or (host, port) in self._boot_keys
            if not envelope.sig and pinned:
                # Some servers never sign a LINK (docs/INTEROP.md row 9): accepted when its key is
                # the pinned one (_check_key refused any other) and it does not displace a live
                # link; every later frame on it is verified with that key, so a copier of the
                # public key gets a link that nothing it sends can pass.
                if server_id in self._by_server:
                    raise KeyRefused(
                        "INVALID_SIG",
                        f"unsigned {envelope.type} for server {server_id}, which is linked already",
                    )
                self.counters["link.unsigned"] += 1
                self._log.info(
                    "{type} from server {server_id} has no signature: accepted, it carries the pinned key",
                    type=envelope.type,
                    server_id=server_id,
                )
            elif envelope.sig and not crypto.verify_payload(key, envelope.payload, envelope.sig):
                raise KeyRefused("INVALID_SIG", f"{envelope.type} signature does not verify")
            known = self._remember(server_id, key, key_text, (host, port), envelope.type, linked=True)
        except KeyRefused as e:
            self._refuse(link, e.code, e.detail)
            return
        _note_ext(known, envelope.payload)
        if envelope.sig:
            known.described = (envelope.payload, envelope.sig)
        link.role = "server"
        link.identity = server_id
        self._hub.bind(link, self)
        state = _LinkState(link, last_seen=self._clock.seconds(), healthy=True)
        self._links[link.link_id] = state
        self._link_up(state, server_id)
        self._want_link(server_id)
        if envelope.type == "SERVER_ANNOUNCE":
            self._seen.add(SeenCache.key(envelope))
            self._log.info("Server announced: {server_id}", server_id=server_id)
            self._forward(envelope, state)
