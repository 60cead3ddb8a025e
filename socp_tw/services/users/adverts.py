"""Presence relayed to local users: ``USER_ADVERTISE`` / ``USER_REMOVE``, batched ``USER_LIST``, the
advert cache.

By default every local user gets one signed frame per presence event (the same bytes for
all, one signature): spec clients build their user list and key cache from those.  A
client that says ``"presence": "lists"`` in its ``USER_HELLO`` (docs/MESH.md, "Presence to
local users") gets instead one ``USER_LIST {users, removed}`` per :data:`PRESENCE_WINDOW`
holding every change of that window (the last event per user), in pages of
:data:`MAX_LIST_USERS`: a burst of logins costs it one frame per window, not one per login.

Keys go to each user in the encoding of its own hello key (services/keymirror.py): users who
sent b64u(PEM) get a second frame with the key as PEM, signed once for all of them, cached
beside the DER one (made at the first PEM user's hello if need be).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from socp_tw.services.keymirror import key_for, reads_pem
from socp_tw.services.users.state import MAX_CACHED_ADVERTS
from socp_tw.transport.fanout import copies_of, sign_for_all

PRESENCE_WINDOW = 0.2  # seconds presence changes are gathered before one USER_LIST goes out
MAX_LIST_USERS = 50  # users per USER_LIST page (an advert is ~2.3 KB: a page stays far below a frame)
PRESENCE_LISTS = "lists"  # USER_HELLO "presence" value that asks for batched USER_LIST


class _PemLink:
    pem_keys = True


def _advert_payload(entry: Any, pem: bool) -> dict[str, Any]:
    if not entry.pubkey:  # learnt from a keyless advert (docs/INTEROP.md row 1): a location only
        return {"user_id": entry.user_id, "server_id": entry.server_id, "meta": dict(entry.meta)}
    pubkey = key_for(_PemLink, entry.pubkey) if pem else entry.pubkey
    return {
        "user_id": entry.user_id,
        "server_id": entry.server_id,
        "pubkey": pubkey,
        "meta": {**entry.meta, "pubkey": pubkey},
    }


class _Adverts:
    """IPresenceObserver for :class:`UserSide`: one signed frame per event, replayed after a hello;
    batched for the links in ``_list_links``."""

    def _event_links(self, about: str) -> list:
        """The links in per-event mode but ``about``'s, plus the follow-mode links that follow
        ``about`` (follows.py); not those that get batched lists."""
        return [
            link for link in self._event_mode_links.values() if link.identity != about
        ] + self._follower_links(about)

    @staticmethod
    def _advert_for(link: Any, entry: Any) -> dict[str, Any]:
        """``entry``'s advert payload, its key in the encoding ``link`` reads."""
        return _advert_payload(entry, reads_pem(link))

    def user_online(self, entry: Any) -> None:
        links = self._event_links(entry.user_id)
        pem_links = [link for link in links if reads_pem(link)]
        der_links = [link for link in links if not reads_pem(link)]
        if der_links:
            frame = self._relay_to(der_links, _advert_payload(entry, False))
            self._cache(self._adverts, entry.user_id, frame)
        else:
            # Nobody to tell now (every user in follow mode): no signature; a spec client's
            # hello signs it if it ever needs it (_replay_adverts).
            self._adverts.pop(entry.user_id, None)
        if pem_links:
            frame = self._relay_to(pem_links, _advert_payload(entry, True))
            self._cache(self._adverts_pem, entry.user_id, frame)
        else:
            self._adverts_pem.pop(entry.user_id, None)  # stale now; made again when a PEM user needs it
        self._gather(entry.user_id, True, _advert_payload(entry, False))

    def _cache(self, cache: dict[str, bytes | Deferred], user_id: str, frame: Deferred) -> None:
        if user_id in cache or len(cache) < MAX_CACHED_ADVERTS:
            cache[user_id] = frame

        def remember(data: bytes | None) -> bytes | None:
            if cache.get(user_id) is frame:  # not withdrawn or re-advertised since
                if isinstance(data, bytes):
                    cache[user_id] = data
                else:
                    del cache[user_id]
            return data

        frame.addCallback(remember)

    def _replay_adverts(self, link: Any, user_id: str) -> None:
        """After a hello: the advert of every online user but the user's own, in the encoding it
        reads, signed now where nobody needed it before (then kept for the next)."""
        pem = reads_pem(link)
        cache = self._adverts_pem if pem else self._adverts
        for other in self._presence.online_users():
            entry = self._presence.lookup(other)
            if other != user_id and other not in cache and entry is not None:
                frame = self._signer.frame("USER_ADVERTISE", "*", _advert_payload(entry, pem))
                frame.addErrback(self._replay_unsigned)  # then not cached; each copy is skipped
                self._cache(cache, other, frame)
        for other, frame in list(cache.items()):
            if other != user_id:
                link.send(copies_of(frame, 1)[0])

    def _replay_unsigned(self, failure: Any) -> None:
        self._log.failure("Could not sign USER_ADVERTISE for a newcomer's replay", failure)

    def user_offline(self, entry: Any) -> None:
        self._adverts.pop(entry.user_id, None)
        self._adverts_pem.pop(entry.user_id, None)
        payload = {"user_id": entry.user_id, "server_id": entry.server_id}
        self._relay("USER_REMOVE", payload, entry.user_id)
        self._gather(entry.user_id, False, payload)

    def _relay_to(self, links: list, payload: dict[str, Any]) -> Deferred:
        frame = sign_for_all(self._signer, self._log, "USER_ADVERTISE", payload, links)
        self.counters["relayed.USER_ADVERTISE"] += len(links)
        return frame

    def _relay(self, frame_type: str, payload: dict[str, Any], about: str) -> None:
        """Sign one frame and send the same bytes to every local user in per-event mode but
        ``about``, and to ``about``'s followers; nothing is signed if there is nobody."""
        links = self._event_links(about)
        if links:
            sign_for_all(self._signer, self._log, frame_type, payload, links)
            self.counters["relayed." + frame_type] += len(links)

    # -- batched presence (USER_LIST)

    def _gather(self, user_id: str, online: bool, item: dict[str, Any]) -> None:
        """Keep the last change of ``user_id`` for the next USER_LIST, if anyone gets lists."""
        if not self._list_links or self._presence_stopped:
            return  # nobody gets lists, or the server is stopping (its links are closing)
        self._presence_batch.pop(user_id, None)  # re-inserted: the pages keep the order of the events
        self._presence_batch[user_id] = (online, item)
        if self._presence_call is None:
            self._presence_call = self._clock.callLater(PRESENCE_WINDOW, self._send_lists)

    def _send_lists(self) -> None:
        """End of a window: one USER_LIST page per :data:`MAX_LIST_USERS` changes, the same bytes
        to every local user who asked for lists (its own advert included: a client skips it)."""
        self._presence_call = None
        batch, self._presence_batch = self._presence_batch, {}
        self._list_links.intersection_update(self._links)  # closed links leave
        links = [self._links[link_id].link for link_id in self._list_links]  # no scan of every user
        if not links or not batch:
            return
        changes = list(batch.values())
        for start in range(0, len(changes), MAX_LIST_USERS):
            page = changes[start : start + MAX_LIST_USERS]
            payload = {
                "users": [item for online, item in page if online],
                "removed": [item for online, item in page if not online],
            }
            sign_for_all(self._signer, self._log, "USER_LIST", payload, links)
            self.counters["relayed.USER_LIST"] += len(links)
        self.counters["presence_lists"] += 1

    _presence_stopped = False

    def stopService(self) -> Any:
        self._presence_stopped = True
        if self._presence_call is not None and self._presence_call.active():
            self._presence_call.cancel()
        self._presence_call = None
        return super().stopService()
