"""``USER_HELLO_CHALLENGE`` and ``USER_HELLO``: nonce, key-possession proof, TOFU, user-key pins."""

from __future__ import annotations

import hmac
from typing import Any

from twisted.internet.defer import Deferred

from socp_tw import crypto, wire
from socp_tw.auth.errors import KeystoreError
from socp_tw.auth.hello import hello_proof_preimage
from socp_tw.interfaces import ILink, NameInUse
from socp_tw.interfaces.users import DIFFERS
from socp_tw.services.keymirror import key_for
from socp_tw.services.users.adverts import PRESENCE_LISTS
from socp_tw.services.users.follows import PRESENCE_FOLLOW
from socp_tw.services.users.names import stored_name
from socp_tw.services.users.state import (
    MAX_CLIENT_NAME,
    MAX_KEY_TEXT,
    _HelloClaim,
    _normalised_key_text,
    _optional_str,
    _UserLink,
)


class _Hello:
    """The hello for :class:`UserSide`: proven, registered, pinned or first-use, then online."""

    def _hello_challenge(self, state: _UserLink, envelope: wire.Envelope) -> None:
        self._spend_attempt(state)
        nonce = self._issue_nonce(state)
        self._send(
            state.link,
            "USER_HELLO_NONCE",
            envelope.from_,
            {"nonce": nonce, "server_id": self._signer.server_id},
        )

    def _hello(self, state: _UserLink, envelope: wire.Envelope) -> Deferred:
        presented, state.nonce = state.nonce, None  # consumed by every hello, accepted or not
        self._spend_attempt(state)
        payload = envelope.payload
        user_id = envelope.from_
        pubkey_text = wire.require_str(payload, "pubkey", max_len=MAX_KEY_TEXT)
        client = _optional_str(payload, "client", MAX_CLIENT_NAME)
        enc_text = _optional_str(payload, "enc_pubkey", MAX_KEY_TEXT)
        nonce = _optional_str(payload, "nonce", 256)
        proof = _optional_str(payload, "proof", 2048)
        presence_mode = _optional_str(payload, "presence", 32)
        state.presence_lists = presence_mode == PRESENCE_LISTS
        state.presence_follow = presence_mode == PRESENCE_FOLLOW
        key = crypto.load_public_key(pubkey_text)
        state.pem_keys = crypto.is_pem_b64u(pubkey_text)
        meta: dict[str, Any] = {}
        if client is not None:
            meta["client"] = client
        if enc_text is not None:
            try:
                meta["enc_pubkey"] = crypto.encode_public_key(crypto.load_public_key(enc_text))
            except crypto.BadKey as e:
                raise crypto.BadKey(f"enc_pubkey: {e.detail}", "enc_pubkey") from None
        claim = _HelloClaim(user_id, key, crypto.encode_public_key(key), meta, nonce, proof, presented)
        d = self._store.get_user(user_id)
        d.addCallback(self._hello_user_loaded, state, claim)
        return d

    def _proof_problem(self, claim: _HelloClaim, key) -> str | None:
        """Why ``claim`` fails §6.1 (nonce + proof under ``key``), or None if it passes."""
        if claim.nonce is None or claim.proof is None:
            return "nonce and proof are both required (ask for a nonce with USER_HELLO_CHALLENGE)"
        presented = claim.presented
        if presented is None or not hmac.compare_digest(
            presented.value.encode("utf-8"), claim.nonce.encode("utf-8", "replace")
        ):
            return "nonce unknown on this connection, or already used"
        if self._now() > presented.expires:
            return "nonce expired: ask for a new one with USER_HELLO_CHALLENGE"
        try:
            preimage = hello_proof_preimage(claim.nonce, claim.user_id, self._signer.server_id)
        except KeystoreError:
            return "nonce or user id contains '|'"
        if not crypto.pss_verify(key, preimage, claim.proof):
            return "proof does not verify"
        return None

    def _hello_user_loaded(self, row: dict | None, state: _UserLink, claim: _HelloClaim):
        if state.closed:
            return None
        name = stored_name(row)  # the user's /nick, advertised with the presence
        if name is not None:
            claim.meta["name"] = name
        pin = self._user_keys.lookup(claim.user_id)
        if pin is not None and pin.home_server is not None:
            return self._hello_of_remote_user(state, claim, pin)
        registered = row is not None and row.get("pake_password") is not None
        proven = False
        if registered:
            if claim.pubkey != row["pubkey"] and claim.pubkey != _normalised_key_text(row["pubkey"]):
                return self._auth_failed(state, claim, "pubkey is not the key registered for this user id")
        if registered or claim.nonce is not None or claim.proof is not None:
            problem = self._proof_problem(claim, claim.key)
            if problem is not None:
                return self._auth_failed(state, claim, problem)
            proven = True
        if not proven:
            entry = self._presence.lookup(claim.user_id)
            if entry is not None and not entry.local:
                # An unproven claim must not move a user who is online elsewhere.
                self.send_error(
                    state.link,
                    "NAME_IN_USE",
                    f"user {claim.user_id} is online on server {entry.server_id}",
                    ref="USER_HELLO",
                    to=claim.user_id,
                )
                return None
        if registered:
            return self._go_online(state, claim, "registered")
        if row is not None:
            if claim.pubkey != row["pubkey"] and claim.pubkey != _normalised_key_text(row["pubkey"]):
                return self._key_differs(state, claim)
            return self._go_online(state, claim, "pinned")
        d = self._store.pin_user_key(claim.user_id, claim.pubkey)
        d.addCallback(self._pinned, state, claim)
        return d

    def _hello_of_remote_user(self, state: _UserLink, claim: _HelloClaim, pin: Any) -> None:
        """A hello for an id whose key another server's gossip pinned here: the same key only,
        and proven (nonce + proof): a public key alone must not move someone's id here."""
        if self._user_keys.check(claim.user_id, claim.pubkey) == DIFFERS:
            self._user_key_refused(claim.user_id, pin, claim.pubkey, "USER_HELLO", state.link)
            return self._key_differs(state, claim)
        problem = self._proof_problem(claim, claim.key)
        if problem is not None:
            return self._auth_failed(
                state, claim, f"user {claim.user_id} is known from server {pin.home_server}: {problem}"
            )
        return self._go_online(state, claim, f"key proven, pinned from server {pin.home_server}")

    def _user_key_refused(self, user_id: str, pin: Any, offered: str, source: str, link: ILink) -> None:
        """A key other than the pinned one for ``user_id``: refused and logged at error level,
        once a minute per user (docs/SECURITY.md says how an operator lifts a pin)."""
        self.counters["user_key_refused"] += 1
        count = self._refusals.hit(user_id)
        if count is not None:
            self._log.error(
                "REFUSED changed key for user {user} ({source} from {peer}): pinned {pinned} ({where}),"
                " offered {offered} ({count} in the last minute)",
                user=user_id,
                source=source,
                peer=link.peer,
                pinned=pin.fingerprint,
                where=f"home server {pin.home_server}" if pin.home_server else "here",
                offered=crypto.fingerprint(offered),
                count=count,
            )

    def _pinned(self, pinned: bool, state: _UserLink, claim: _HelloClaim) -> None:
        if not pinned:  # registered or pinned by another connection meanwhile
            self._key_differs(state, claim)
            return
        self._user_keys.pin_local(claim.user_id, claim.pubkey, registered=False)
        self.counters["tofu_pinned"] += 1
        # One line for the login, the pin in it: a storm of first-use hellos is one event each.
        self._go_online(state, claim, f"first use: key {crypto.fingerprint(claim.key)} pinned")

    def _key_differs(self, state: _UserLink, claim: _HelloClaim) -> None:
        self.counters["tofu_key_mismatch"] += 1
        pin = self._user_keys.lookup(claim.user_id)
        if pin is not None and pin.home_server is None:
            self._user_key_refused(claim.user_id, pin, claim.pubkey, "USER_HELLO", state.link)
        self.send_error(
            state.link,
            "BAD_KEY",
            "key differs from the key pinned for this user",
            ref="USER_HELLO",
            to=claim.user_id,
        )

    def _auth_failed(self, state: _UserLink, claim: _HelloClaim, why: str) -> None:
        self.counters["auth_failed"] += 1
        self.send_error(state.link, "AUTH_FAILED", why, ref="USER_HELLO", to=claim.user_id)

    def _go_online(self, state: _UserLink, claim: _HelloClaim, how: str) -> None:
        if state.closed:
            return
        link = state.link
        # Read by the public channel, which observes the user coming online below.
        link.public_pushes = not state.presence_follow
        try:
            self._presence.user_online_local(claim.user_id, claim.pubkey, claim.meta, link)
        except NameInUse:
            self.counters["name_in_use"] += 1
            self.send_error(
                link,
                "NAME_IN_USE",
                f"user {claim.user_id} is already connected to this server",
                ref="USER_HELLO",
                to=claim.user_id,
            )
            return
        state.user_id = claim.user_id
        state.login = None
        link.role = "user"
        link.identity = claim.user_id
        if state.presence_lists:
            self._list_links.add(link.link_id)
        if state.presence_follow:
            self._quiet_links.add(link.link_id)
        if not (state.presence_lists or state.presence_follow):
            self._event_mode_links[link.link_id] = link
        link.pem_keys = state.pem_keys  # keys sent to it mirror its own (services/keymirror.py)
        self._hub.bind(link, self)
        self.counters["hello_ok"] += 1
        self._log.info(
            "User {user} online from {peer} on link {link} ({how})",
            user=claim.user_id,
            peer=link.peer,
            link=link.link_id,
            how=how,
        )
        self._send(
            link,
            "ACK",
            claim.user_id,
            {
                "msg_ref": "USER_HELLO",
                "server_id": self._signer.server_id,
                "server_pub": key_for(link, self._signer.public_key_text),
                **({"name": claim.meta["name"]} if "name" in claim.meta else {}),
            },
        )
        if not state.presence_follow:
            self._replay_adverts(link, claim.user_id)
