"""Frames of authenticated user links: ``MSG_DIRECT``, ``LIST_REQUEST``, ``PUBKEY_REQUEST``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from socp_tw import crypto, wire
from socp_tw.content import extract_fields, verify_user_content
from socp_tw.interfaces import ILink, Unverified, UserNotFound
from socp_tw.services.keymirror import key_for
from socp_tw.services.users.state import MAX_KEY_TEXT, _normalised_key_text


class _AuthenticatedFrames:
    """The built-in user frames of :class:`UserSide` (registered in its constructor)."""

    def _msg_direct(self, link: ILink, sender: str, envelope: wire.Envelope) -> Deferred | None:
        payload = envelope.payload
        recipient = envelope.to
        if not wire.is_uuid(recipient):
            raise wire.BadUUID("MSG_DIRECT 'to' must be the recipient's user id", "to")
        fields = extract_fields("MSG_DIRECT", payload)
        sender_pub = wire.require_str(payload, "sender_pub", max_len=MAX_KEY_TEXT)
        own = self.authenticated_key(sender)
        if own is None or (sender_pub != own and _normalised_key_text(sender_pub) != own):
            raise wire.InvalidSig("sender_pub is not the key you authenticated with")
        key = crypto.load_public_key(sender_pub)
        preimage = crypto.dm_preimage(fields["ciphertext"], sender, recipient, envelope.ts)

        def conforming() -> bool:  # the preimage conforming clients sign
            return crypto.pss_verify(key, preimage, fields["content_sig"])

        state = self._links.get(link.link_id)
        if state is not None and state.sign_ahead:
            # Sign while checking: the pool starts the signature before the reactor checks
            # the content_sig, and the frame is dropped unsent if the check fails.  A link
            # loses this after one failure, so it can cost at most one wasted signature.
            try:
                self._route(
                    link, "MSG_DIRECT", recipient, fields, envelope.ts, sender, sender_pub, conforming
                )
                return None
            except Unverified:
                state.sign_ahead = False
                self.counters["sign_ahead_lost"] += 1
        elif conforming():
            self._route(link, "MSG_DIRECT", recipient, fields, envelope.ts, sender, sender_pub)
            return None
        # Other preimage variants cost up to 8 more verifications: off the reactor.
        d = self._workers.run(
            verify_user_content, "MSG_DIRECT", fields, sender, recipient, envelope.ts, sender_pub
        )
        d.addCallback(
            lambda _: self._route(link, "MSG_DIRECT", recipient, fields, envelope.ts, sender, sender_pub)
        )
        return d

    def _route(
        self,
        link: ILink,
        kind: str,
        recipient: str,
        fields: dict[str, Any],
        ts: int,
        sender: str,
        sender_pub: str,
        verified: Callable[[], bool] | None = None,
    ) -> None:
        """Hand a user's frame to the router; USER_NOT_FOUND if nobody hosts ``recipient``.
        :class:`Unverified` (``verified`` failed) is the caller's to handle."""
        try:
            self._router.route(kind, recipient, fields, ts, sender, sender_pub, verified)
        except UserNotFound:
            self.send_error(
                link, "USER_NOT_FOUND", f"user {recipient} is not online", ref=kind, user_id=recipient, ts=ts
            )
            return
        # Counted, not logged: a log event per message costs more than the routing itself.
        self.counters["routed." + kind] += 1

    def _list_request(self, link: ILink, user_id: str, envelope: wire.Envelope) -> None:
        users = self._presence.online_users()
        payload: dict[str, Any] = {"online_users": users, "users": list(users)}
        names = {}
        for other in users:  # the /nick of each who has one (PROTOCOL-EXTENSIONS §13)
            entry = self._presence.lookup(other)
            name = entry.meta.get("name") if entry is not None else None
            if isinstance(name, str):
                names[other] = name
        if names:
            payload["names"] = names
        self._send(link, "LIST_RESPONSE", user_id, payload)

    def _offline_pubkey(self, row: dict | None, link: ILink, user_id: str, wanted: str) -> None:
        if row is None:  # pinned in memory a moment ago, not written yet
            self.send_error(
                link, "USER_NOT_FOUND", f"user {wanted} is not online", ref="PUBKEY_REQUEST", user_id=wanted
            )
            return
        home = row.get("home_server") or self._signer.server_id
        payload = {
            "user_id": row["user_id"],
            "pubkey": key_for(link, row["pubkey"]),
            "server_id": home,
            "online": False,
        }
        self._send(link, "PUBKEY_RESPONSE", user_id, payload)

    def _pubkey_request(self, link: ILink, user_id: str, envelope: wire.Envelope) -> Deferred | None:
        wanted = wire.require_uuid(envelope.payload, "user_id")
        entry = self._presence.lookup(wanted)
        if entry is None or not entry.pubkey:  # a keyless advert: the pin, if any, has the key
            if self._user_keys.lookup(wanted) is None:
                self.send_error(
                    link,
                    "USER_NOT_FOUND",
                    f"no server has seen user {wanted}",
                    ref="PUBKEY_REQUEST",
                    user_id=wanted,
                )
                return None
            # Known but offline: its pinned key, so a DM can be encrypted to it and held.
            d = self._store.get_user(wanted)
            d.addCallback(self._offline_pubkey, link, user_id, wanted)
            return d
        self._send(
            link,
            "PUBKEY_RESPONSE",
            user_id,
            {"user_id": entry.user_id, "pubkey": key_for(link, entry.pubkey), "server_id": entry.server_id},
        )
