"""``USER_REGISTER``: a new account (PROTOCOL-EXTENSIONS §3), its key pinned as registered."""

from __future__ import annotations

from twisted.internet.defer import Deferred

from socp_tw import crypto, wire
from socp_tw.auth.errors import KeystoreError
from socp_tw.auth.sealing import parse_keystore
from socp_tw.auth.verifier import parse_verifier
from socp_tw.interfaces.users import DIFFERS
from socp_tw.services.users.state import MAX_BLOB_TEXT, MAX_KEY_TEXT, _UserLink


class _Registration:
    """Registration for :class:`UserSide`."""

    def _register(self, state: _UserLink, envelope: wire.Envelope) -> Deferred:
        self._spend_attempt(state)
        payload = envelope.payload
        user_id = wire.require_str(payload, "user_id", max_len=128)
        pubkey_text = wire.require_str(payload, "pubkey", max_len=MAX_KEY_TEXT)
        privkey_store = wire.require_str(payload, "privkey_store", max_len=MAX_BLOB_TEXT)
        pake_password = wire.require_str(payload, "pake_password", max_len=MAX_BLOB_TEXT)
        if not wire.is_uuid4(user_id):
            raise wire.BadUUID("user_id must be a UUID v4", "user_id")
        self._same_from(envelope, user_id)
        key = crypto.load_public_key(pubkey_text)  # BadKey: BAD_KEY
        if not crypto.verify_payload(key, payload, envelope.sig):
            raise wire.InvalidSig("USER_REGISTER must be signed by the key being registered")
        try:
            parse_keystore(privkey_store)
        except KeystoreError as e:
            raise wire.BadFieldType(f"privkey_store: {e}", "privkey_store") from None
        try:
            record = parse_verifier(pake_password)
        except KeystoreError as e:
            raise wire.BadFieldType(f"pake_password: {e}", "pake_password") from None
        if record.params.n < self._min_scrypt_n:
            raise wire.BadFieldType(
                f"pake_password: scrypt n must be at least {self._min_scrypt_n} on this server",
                "pake_password",
            )
        pubkey = crypto.encode_public_key(key)
        pin = self._user_keys.lookup(user_id)
        if pin is not None and pin.home_server is not None:
            # Known from another server's gossip: that server is authoritative for the id.
            if self._user_keys.check(user_id, pubkey) == DIFFERS:
                self._user_key_refused(user_id, pin, pubkey, "USER_REGISTER", state.link)
            self.send_error(
                state.link,
                "NAME_IN_USE",
                f"user id {user_id} belongs to server {pin.home_server}",
                ref="USER_REGISTER",
                to=user_id,
                user_id=user_id,
            )
            return None
        d = self._store.add_user(user_id, pubkey, privkey_store, pake_password, {})
        d.addCallback(self._registered, state, user_id, pubkey)
        return d

    def _registered(self, added: bool, state: _UserLink, user_id: str, pubkey: str) -> None:
        if not added:
            self.send_error(
                state.link,
                "NAME_IN_USE",
                f"user id {user_id} is already known on this server",
                ref="USER_REGISTER",
                to=user_id,
                user_id=user_id,
            )
            return
        self.counters["registered"] += 1
        self._user_keys.pin_local(user_id, pubkey, registered=True)
        self._log.info("User {user} registered from {peer}", user=user_id, peer=state.link.peer)
        self._send(state.link, "ACK", user_id, {"msg_ref": "USER_REGISTER", "user_id": user_id})
