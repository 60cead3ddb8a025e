"""The public channel's periodic clean-up: members whose leave or join nobody else will make.

Every ``sweep_interval`` a server leaves for its own members who are not connected (after
a restart or a missed close).  The *leader* (lowest id among this server and its live
peers) also leaves for members whose server vanished and joins users of servers that
don't speak these frames, once that has lasted ``evict_after`` seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from socp_tw.logs import get_logger

if TYPE_CHECKING:
    from socp_tw.services.public.channel import Change, PublicChannel

__all__ = ["Sweeper"]


class Sweeper:
    """Corrects members the mesh forgot (one per channel)."""

    _log = get_logger("socp_tw.public")

    def __init__(self, channel: PublicChannel) -> None:
        self._channel = channel
        self._stale_since: dict[str, float] = {}  # member id -> clock time it was first seen stale

    def sweep(self) -> None:
        """One pass (see the module docstring)."""
        channel = self._channel
        if not channel.live():
            return
        server_id, presence, state = channel.server_id, channel.presence, channel.state
        own_gone = [
            (s.member_id, False, server_id, None)
            for s in state.states.values()
            if s.present and s.host_id == server_id and presence.local_link(s.member_id) is None
        ]
        if own_gone:
            channel.counters["swept_own"] += len(own_gone)
            channel.emit(own_gone)
        if not channel.is_leader():
            self._stale_since.clear()
            return
        now = channel.clock.seconds()
        connected = set(channel.peers.connected_servers())
        speaking = set(state.origins)
        stale: dict[str, Change] = {}
        for s in state.states.values():
            if not s.present or s.host_id == server_id:
                continue
            if presence.lookup(s.member_id) is not None:
                continue
            if s.host_id in connected and s.host_id in speaking:
                continue  # its server is up and will say when it leaves
            stale[s.member_id] = (s.member_id, False, s.host_id, None)
        for user_id in presence.online_users():
            entry = presence.lookup(user_id)
            if entry is None or entry.local or entry.server_id in speaking:
                continue
            if not state.is_member(user_id):
                stale[user_id] = (user_id, True, entry.server_id, entry.pubkey)
        for member_id in list(self._stale_since):
            if member_id not in stale:
                del self._stale_since[member_id]
        due = []
        for member_id, change in stale.items():
            since = self._stale_since.setdefault(member_id, now)
            if now - since >= channel.evict_after:
                due.append(change)
                del self._stale_since[member_id]
        if due:
            channel.counters["swept"] += len(due)
            self._log.info("Public channel: the leader corrects {count} stale members", count=len(due))
            channel.emit(due)
