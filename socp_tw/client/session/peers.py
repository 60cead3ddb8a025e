"""Other users: presence from the server's relays, their keys against the pins, ``/list`` and
``/trust``."""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.defer import Deferred, DeferredList

from socp_tw import crypto, wire
from socp_tw.client.pins import CHANGED, NEW
from socp_tw.client.session.core import RequestFailed, ServerError, SessionCore
from socp_tw.client.text import printable
from socp_tw.logs import get_logger

_log = get_logger("socp_tw.client.session")

MAX_LIST_LOOKUPS = 100
MAX_FOLLOWS = 1000  # as many users as our server lets one link follow (services/users/follows.py)


class Peers(SessionCore):
    """Who is online, and which key each user has (TOFU pins)."""

    def _on_advertise(self, envelope: wire.Envelope) -> None:
        if self._signed_by_server(envelope) is False and envelope.from_ == self.server_id:
            self._count("bad_server_sig")
            return
        self._apply_advert(envelope.payload, envelope.from_)

    def _apply_advert(self, payload: dict, sent_by: str, quiet: bool = False) -> None:
        """One user online (a USER_ADVERTISE, or an entry of a batched USER_LIST); ``quiet``
        records it without a presence line (the answer to a follow says where someone is, not
        that they just came)."""
        user_id = payload.get("user_id")
        if not wire.is_uuid(user_id) or user_id == self.user_id:
            return
        server_id = payload.get("server_id")
        self.presence[user_id] = server_id if isinstance(server_id, str) else sent_by
        meta = payload.get("meta")
        before, was_called = self.names.who(user_id), self.names.claims.get(user_id)
        self.names.claim(user_id, meta)
        now_called = self.names.claims.get(user_id)
        if now_called and was_called != now_called and user_id in self._announced and self._follows(user_id):
            self.show(f"* {printable(before)} now calls themselves {printable(now_called)}")
        pubkey = payload.get("pubkey")
        if not isinstance(pubkey, str):
            pubkey = meta.get("pubkey") if isinstance(meta, dict) else None
        if isinstance(pubkey, str):
            self._saw_key(user_id, pubkey)
        if quiet:
            self._announced.add(user_id)
        else:
            self._announce(user_id, online=True)

    def _follow(self, user_ids: Iterable[str]) -> None:
        """``PRESENCE_FOLLOW`` for the users not followed yet on this link: our server then tells
        us when they come and go (and answers with where they are now)."""
        if not self.logged_in:
            return
        fresh = sorted({u for u in user_ids if wire.is_uuid(u) and u != self.user_id} - self._following)
        fresh = fresh[: max(0, MAX_FOLLOWS - len(self._following))]
        if fresh:
            self._following.update(fresh)
            self._send("PRESENCE_FOLLOW", self.server_id or "*", {"user_ids": fresh})

    def refresh_directory(self) -> Deferred:
        """Ask the server who is online (LIST_REQUEST), quietly: their ids (and names, where it
        says them) become candidates for prefixes and Tab."""
        return Deferred.fromCoroutine(self._directory()).addErrback(lambda _: None)

    async def _directory(self) -> list[str] | None:
        """The ids of a LIST_RESPONSE (names learnt too), or None if the server gave none."""
        if not self.logged_in:
            return None
        response = self._expect("LIST_RESPONSE", "LIST_REQUEST")
        self._send("LIST_REQUEST", self.server_id or "*", {})
        envelope = await response
        users = envelope.payload.get("online_users", envelope.payload.get("users"))
        if not isinstance(users, list):
            raise RequestFailed("the server's LIST_RESPONSE has no user list")
        online = [u.lower() for u in users[:100000] if wire.is_uuid(u)]
        for user_id in online:
            self.names.see(user_id)
        names = envelope.payload.get("names")
        if isinstance(names, dict):
            for user_id, name in list(names.items())[:100000]:
                if wire.is_uuid(user_id) and user_id.lower() in self.names.known:
                    self.names.claim(user_id.lower(), {"name": name})
        return online

    def _follows(self, user_id: str) -> bool:
        """Whether presence lines are printed for ``user_id``: you DMed each other or named them."""
        return user_id in self.names.talked or self.names.petname(user_id) is not None

    def _announce(self, user_id: str, online: bool) -> None:
        """``* alice (577eab50) is online`` / ``offline``, once per change, for users you talked to
        (a DM either way in this session) or named (``/name``)."""
        was_online = user_id in self._announced
        if online:
            self._announced.add(user_id)
        else:
            self._announced.discard(user_id)
        if online == was_online:
            return  # a repeat (or the replay after a reconnect)
        if not self._follows(user_id):
            return
        self.show(f"* {printable(self.names.who(user_id))} is {'online' if online else 'offline'}")

    def _on_remove(self, envelope: wire.Envelope) -> None:
        if self._signed_by_server(envelope) is False and envelope.from_ == self.server_id:
            return
        self._apply_remove(envelope.payload)

    def _apply_remove(self, payload: dict) -> None:
        """One user offline (a USER_REMOVE, or a ``removed`` entry of a batched USER_LIST)."""
        user_id = payload.get("user_id")
        server_id = payload.get("server_id")
        if isinstance(user_id, str) and (server_id is None or self.presence.get(user_id) == server_id):
            self.presence.pop(user_id, None)
            self._announce(user_id, online=False)

    def _on_user_list(self, envelope: wire.Envelope) -> None:
        if self._signed_by_server(envelope) is False:
            return
        users = envelope.payload.get("users")
        if not isinstance(users, list):
            return
        answers_follow = envelope.payload.get("follow") is True  # a snapshot, not arrivals
        for item in users[:10000]:
            if isinstance(item, dict) and ("pubkey" in item or isinstance(item.get("meta"), dict)):
                # our server's batched presence (docs/MESH.md)
                self._apply_advert(item, envelope.from_, quiet=answers_follow)
            elif isinstance(item, dict):
                user_id = item.get("user_id")
                if wire.is_uuid(user_id) and user_id != self.user_id:
                    self.presence.setdefault(user_id, str(item.get("server_id", "")))
            elif wire.is_uuid(item) and item != self.user_id:
                self.presence.setdefault(item, "")
        removed = envelope.payload.get("removed")
        for item in removed[:10000] if isinstance(removed, list) else []:
            if isinstance(item, dict):
                self._apply_remove(item)

    def _saw_key(self, user_id: str, pubkey: str) -> bool:
        """Remember the key the network shows for ``user_id``; warn once if it differs from the pin."""
        try:
            check = self.pins.check_user(user_id, pubkey)
        except crypto.BadKey as e:
            _log.info("Ignored an unusable key for {user_id}: {detail}", user_id=user_id, detail=e.detail)
            return False
        self._seen_keys[user_id] = pubkey
        if check.status == CHANGED and (user_id, check.fingerprint) not in self._warned_keys:
            self._warned_keys.add((user_id, check.fingerprint))
            self._key_changed_warning(user_id, check.pinned_fingerprint, check.fingerprint)
        return True

    def _key_changed_warning(self, user_id: str, pinned: str | None, new: str) -> None:
        self.show(
            f"[WARNING] !!! THE KEY OF {user_id} HAS CHANGED !!!\n"
            f"  pinned [{pinned}], now offered [{new}].\n"
            f"  Someone may be impersonating this user. Messages signed by the new key are rejected and\n"
            f"  /tell refuses to encrypt to it. If you have verified the new fingerprint with them,\n"
            f"  run /trust {user_id}"
        )

    def list_users(self) -> Deferred:
        """``/list``: LIST_REQUEST, then one line per online user with a key fingerprint."""
        return Deferred.fromCoroutine(self._list()).addErrback(self._internal_error)

    async def _list(self) -> None:
        if not await self._require_online():
            return
        try:
            online = set(await self._directory() or ())
        except ServerError as e:
            if e.code != "UNKNOWN_TYPE":
                self.show(f"[ERROR] {printable(str(e))}")
                return
            online = set(self.presence)  # a server without LIST_REQUEST: our own view from gossip
        except RequestFailed as e:
            self.show(f"[ERROR] /list failed: {printable(str(e))}")
            return
        online.add(self.user_id)
        unknown = [u for u in sorted(online) if u != self.user_id and self._known_key(u) is None]
        if unknown and self.logged_in:
            lookups = [Deferred.fromCoroutine(self._fetch_key(u)) for u in unknown[:MAX_LIST_LOOKUPS]]
            await DeferredList(lookups, consumeErrors=True)
        lines = [f"Online users ({len(online)}):"]
        for user_id in sorted(online):
            lines.append(self._list_line(user_id))
        self.show("\n".join(lines))

    def _known_key(self, user_id: str) -> str | None:
        if user_id == self.user_id:
            return self._pub
        return self._seen_keys.get(user_id) or self.pins.user_key(user_id)

    def _list_line(self, user_id: str) -> str:
        """``  <uuid> (name)  [fp]``: the name is your petname, else the user's claim, else none."""
        if user_id == self.user_id:
            mine = f" ({printable(self.my_name)})" if self.my_name else ""
            return f"* {user_id}{mine}  [{crypto.fingerprint(self._key)}] (you)"
        who = printable(self.names.tag(user_id))
        key = self._known_key(user_id)
        if key is None:
            return f"  {who}  [key unknown]"
        check = self.pins.check_user(user_id, key)
        if check.status == CHANGED:
            return f"  {who}  [{check.fingerprint}] KEY CHANGED (pinned [{check.pinned_fingerprint}])"
        return f"  {who}  [{check.fingerprint}]"

    def nick(self, name: str) -> Deferred:
        """``/nick <name>``: ``USER_SET_META {name}`` to our server, which keeps it and advertises it."""
        return Deferred.fromCoroutine(self._nick(name)).addErrback(self._internal_error)

    async def _nick(self, name: str) -> None:
        if not await self._require_online():
            return
        acked = self._expect(
            "ACK", "USER_SET_META", match=lambda e: e.payload.get("msg_ref") == "USER_SET_META"
        )
        self._send("USER_SET_META", self.server_id or "*", {"name": name})
        try:
            await acked
        except ServerError as e:
            if e.code == "UNKNOWN_TYPE":
                self.show("[ERROR] this server does not keep names (no USER_SET_META)")
            else:
                self.show(f"[ERROR] {printable(str(e))}")
            return
        except RequestFailed as e:
            self.show(f"[ERROR] /nick failed: {printable(str(e))}")
            return
        self.my_name = name
        self.show(f"Others now see you as {self.user_id} ({printable(name)}).")

    def set_petname(self, user_id: str, name: str | None) -> None:
        """``/name <uuid> [<petname>]``: your own name for a user (pins file), or forget it."""
        self.names.set_petname(user_id, name)
        if name is not None:
            self._follow([user_id])
        if name is None:
            self.show(f"Forgot your name for {user_id}.")
        else:
            claim = self.names.claims.get(user_id)
            also = f" (they call themselves {printable(claim)})" if claim and claim != name else ""
            self.show(f"{user_id} is {printable(name)} to you{also}.")

    async def _fetch_key(self, user_id: str) -> str | None:
        """PUBKEY_REQUEST → the key the server knows for ``user_id`` (remembered), or None."""
        answer = self._expect(
            "PUBKEY_RESPONSE",
            "PUBKEY_REQUEST",
            match=lambda e: e.payload.get("user_id") == user_id,
            timeout=self._pubkey_timeout,
        )
        self._send("PUBKEY_REQUEST", self.server_id or "*", {"user_id": user_id})
        try:
            envelope = await answer
        except ServerError as e:
            if e.code not in ("USER_NOT_FOUND", "UNKNOWN_TYPE"):
                raise
            return None
        pubkey = envelope.payload.get("pubkey")
        if isinstance(pubkey, str) and self._saw_key(user_id, pubkey):
            return pubkey
        return None

    async def _recipient_key(self, user_id: str) -> str | None:
        if user_id == self.user_id:
            return self._pub
        key = self._seen_keys.get(user_id)
        if key is None:
            key = await self._fetch_key(user_id)
        if key is None:
            key = self.pins.user_key(user_id)
        return key

    def trust(self, user_id: str) -> Deferred:
        """``/trust <uuid>``: pin the key the network now shows for ``user_id`` (after a change)."""
        return Deferred.fromCoroutine(self._trust(user_id)).addErrback(self._internal_error)

    async def _trust(self, user_id: str) -> None:
        key = self._seen_keys.get(user_id)
        if key is None and self.logged_in:
            try:
                key = await self._fetch_key(user_id)
            except (ServerError, RequestFailed):
                key = None
        if key is None:
            self.show(f"[ERROR] no key of {user_id} seen yet: nothing to trust")
            return
        check = self.pins.check_user(user_id, key)
        if check.status != CHANGED:
            if check.status == NEW:
                self.pins.pin_user(user_id, key)
            self.show(f"The key of {user_id} [{check.fingerprint}] is trusted.")
            return
        self.pins.pin_user(user_id, key)
        self._warned_keys.discard((user_id, check.fingerprint))
        self.show(f"[KEY] now trusting {user_id} [{check.fingerprint}] (was [{check.pinned_fingerprint}])")
