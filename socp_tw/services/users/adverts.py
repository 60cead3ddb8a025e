"""Presence relayed to local users: ``USER_ADVERTISE`` / ``USER_REMOVE`` and the advert cache."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from socp_tw.services.presence import UserPresence
from socp_tw.services.users.state import MAX_CACHED_ADVERTS
from socp_tw.transport.fanout import sign_for_all


class _Adverts:
    """IPresenceObserver for :class:`UserSide`: one signed frame per event, replayed after a hello."""

    def user_online(self, entry: UserPresence) -> None:
        if entry.pubkey:
            meta = {**entry.meta, "pubkey": entry.pubkey}
            payload = {
                "user_id": entry.user_id,
                "server_id": entry.server_id,
                "pubkey": entry.pubkey,
                "meta": meta,
            }
        else:  # learnt from a keyless advert (docs/INTEROP.md row 1): a location, no key to relay
            payload = {"user_id": entry.user_id, "server_id": entry.server_id, "meta": dict(entry.meta)}
        frame = self._relay("USER_ADVERTISE", payload, entry.user_id)
        if entry.user_id in self._adverts or len(self._adverts) < MAX_CACHED_ADVERTS:
            self._adverts[entry.user_id] = frame

        def remember(data: bytes | None) -> bytes | None:
            if self._adverts.get(entry.user_id) is frame:  # not withdrawn or re-advertised since
                if isinstance(data, bytes):
                    self._adverts[entry.user_id] = data
                else:
                    del self._adverts[entry.user_id]
            return data

        frame.addCallback(remember)

    def user_offline(self, entry: UserPresence) -> None:
        self._adverts.pop(entry.user_id, None)
        self._relay("USER_REMOVE", {"user_id": entry.user_id, "server_id": entry.server_id}, entry.user_id)

    def _relay(self, frame_type: str, payload: dict[str, Any], about: str) -> Deferred:
        """Sign one frame and send the same bytes to every local user but ``about``."""
        links = [e.link for e in self._presence.local_entries() if e.user_id != about]
        frame = sign_for_all(self._signer, self._log, frame_type, payload, links)
        self.counters["relayed." + frame_type] += len(links)
        return frame  # fires with the frame's bytes, or None if signing failed
