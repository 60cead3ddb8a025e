"""Presence relayed to local users: ``USER_ADVERTISE`` / ``USER_REMOVE`` and the advert cache.

Keys go to each user in the encoding of its own hello key (services/keymirror.py): users who
sent b64u(PEM) get a second frame with the key as PEM, signed once for all of them, cached
beside the DER one (made at the first PEM user's hello if need be).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from socp_tw.services.keymirror import key_for, reads_pem
from socp_tw.services.presence import UserPresence
from socp_tw.services.users.state import MAX_CACHED_ADVERTS
from socp_tw.transport.fanout import copies_of, sign_for_all


class _PemLink:
    pem_keys = True


def _advert_payload(entry: UserPresence, pem: bool) -> dict[str, Any]:
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
    """IPresenceObserver for :class:`UserSide`: one signed frame per event, replayed after a hello."""

    def user_online(self, entry: UserPresence) -> None:
        links = [e.link for e in self._presence.local_entries() if e.user_id != entry.user_id]
        pem_links = [link for link in links if reads_pem(link)]
        der_links = [link for link in links if not reads_pem(link)]
        self._cache(self._adverts, entry.user_id, self._relay_to(der_links, _advert_payload(entry, False)))
        if pem_links:
            frame = self._relay_to(pem_links, _advert_payload(entry, True))
            self._cache(self._adverts_pem, entry.user_id, frame)
        else:
            self._adverts_pem.pop(entry.user_id, None)  # stale now; made again when a PEM user needs it

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
        """After a hello: every cached advert but the user's own, in the encoding it reads."""
        pem = reads_pem(link)
        for other, frame in list(self._adverts.items()):
            if other == user_id:
                continue
            if pem:
                pem_frame = self._adverts_pem.get(other)
                if pem_frame is None:
                    entry = self._presence.lookup(other)
                    if entry is None:
                        continue
                    pem_frame = self._signer.frame("USER_ADVERTISE", "*", _advert_payload(entry, True))
                    self._cache(self._adverts_pem, other, pem_frame)
                frame = pem_frame
            link.send(copies_of(frame, 1)[0])

    def user_offline(self, entry: UserPresence) -> None:
        self._adverts.pop(entry.user_id, None)
        self._adverts_pem.pop(entry.user_id, None)
        self._relay("USER_REMOVE", {"user_id": entry.user_id, "server_id": entry.server_id}, entry.user_id)

    def _relay_to(self, links: list, payload: dict[str, Any]) -> Deferred:
        frame = sign_for_all(self._signer, self._log, "USER_ADVERTISE", payload, links)
        self.counters["relayed.USER_ADVERTISE"] += len(links)
        return frame

    def _relay(self, frame_type: str, payload: dict[str, Any], about: str) -> Deferred:
        """Sign one frame and send the same bytes to every local user but ``about``."""
        links = [e.link for e in self._presence.local_entries() if e.user_id != about]
        frame = sign_for_all(self._signer, self._log, frame_type, payload, links)
        self.counters["relayed." + frame_type] += len(links)
        return frame  # fires with the frame's bytes, or None if signing failed
