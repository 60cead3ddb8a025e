"""Who is online where (PROTOCOL.md §3): ``local_users`` and ``user_locations``.

Bookkeeping only; gossip and relaying to clients are observers of this table, so
the rules about *who* may change an entry live in one place:
a local user is never displaced by a remote advertise, and a USER_REMOVE only
removes a user still located on the server that sent it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from twisted.application.service import Service
from zope.interface import implementer

from socp_tw.interfaces import ILink, IPresence, IPresenceObserver, NameInUse
from socp_tw.logs import get_logger

#: Default bound on users learnt from other servers: gossip is hostile input too.
MAX_REMOTE_USERS = 100_000


@dataclass
class UserPresence:
    """One online user."""

    user_id: str
    server_id: str
    pubkey: str
    meta: dict[str, Any] = field(default_factory=dict)
    link: ILink | None = None

    @property
    def local(self) -> bool:
        return self.link is not None


@implementer(IPresence)
class Presence(Service):
    """The presence table, shared by the user side and the mesh."""

    name = "presence"
    _log = get_logger("socp_tw.presence")

    def __init__(self, server_id: str, max_remote_users: int = MAX_REMOTE_USERS) -> None:
        self.server_id = server_id
        self.max_remote_users = max_remote_users
        self._users: dict[str, UserPresence] = {}
        self._observers: list[IPresenceObserver] = []
        self._local_count = 0
        self._full_warned = False

    def add_observer(self, observer: IPresenceObserver) -> None:
        self._observers.append(IPresenceObserver(observer))

    def _notify(self, method: str, entry: UserPresence) -> None:
        for observer in list(self._observers):
            try:
                getattr(observer, method)(entry)
            except Exception:
                self._log.failure("Presence observer {observer} failed", observer=observer)

    def user_online_local(self, user_id: str, pubkey: str, meta: dict[str, Any], link: ILink) -> UserPresence:
        current = self._users.get(user_id)
        if current is not None and current.local:
            raise NameInUse(user_id)
        entry = UserPresence(user_id, self.server_id, pubkey, dict(meta), link)
        self._users[user_id] = entry
        self._local_count += 1
        self._notify("user_online", entry)
        return entry

    def update_local_meta(self, user_id: str, meta: dict[str, Any]) -> UserPresence | None:
        """A local user's ``meta`` changed (``USER_SET_META``): observers advertise it again."""
        entry = self._users.get(user_id)
        if entry is None or not entry.local:
            return None
        entry.meta = dict(meta)
        self._notify("user_online", entry)
        return entry

    def user_offline_local(self, user_id: str, link: ILink | None = None) -> bool:
        entry = self._users.get(user_id)
        if entry is None or not entry.local or (link is not None and entry.link is not link):
            return False
        del self._users[user_id]
        self._local_count -= 1
        self._notify("user_offline", entry)
        return True

    def user_online_remote(self, user_id: str, server_id: str, pubkey: str, meta: dict[str, Any]) -> bool:
        current = self._users.get(user_id)
        if current is not None:
            if current.local:
                self._log.warn(
                    "Ignored advertise of local user {user} by server {server}",
                    user=user_id,
                    server=server_id,
                )
                return False
            if (current.server_id, current.pubkey, current.meta) == (server_id, pubkey, meta):
                return False
        elif len(self._users) - self._local_count >= self.max_remote_users:
            if not self._full_warned:
                self._full_warned = True
                self._log.error(
                    "Presence table full ({limit} remote users): ignoring new advertises",
                    limit=self.max_remote_users,
                )
            return False
        entry = UserPresence(user_id, server_id, pubkey, dict(meta))
        self._users[user_id] = entry
        self._notify("user_online", entry)
        return True

    def user_offline_remote(self, user_id: str, server_id: str) -> bool:
        entry = self._users.get(user_id)
        if entry is None or entry.local or entry.server_id != server_id:
            return False
        del self._users[user_id]
        self._full_warned = False
        self._notify("user_offline", entry)
        return True

    def server_lost(self, server_id: str) -> list[str]:
        gone = self.users_on(server_id)
        for user_id in gone:
            self.user_offline_remote(user_id, server_id)
        return gone

    def lookup(self, user_id: str) -> UserPresence | None:
        return self._users.get(user_id)

    def local_link(self, user_id: str) -> ILink | None:
        entry = self._users.get(user_id)
        return entry.link if entry is not None else None

    def online_users(self) -> list[str]:
        return sorted(self._users)

    def local_entries(self) -> list[UserPresence]:
        return [e for e in self._users.values() if e.local]

    def users_on(self, server_id: str) -> list[str]:
        return sorted(u for u, e in self._users.items() if e.server_id == server_id and not e.local)

    def remote_servers(self) -> set[str]:
        """Ids of the servers that host at least one user we know of."""
        return {e.server_id for e in self._users.values() if not e.local}

    def counts(self) -> tuple[int, int]:
        """(local users, users online anywhere)."""
        return self._local_count, len(self._users)

    def rename_server(self, server_id: str) -> None:
        """This server was assigned another id when joining: record local users under it."""
        old, self.server_id = self.server_id, server_id
        for entry in self._users.values():
            if entry.local and entry.server_id == old:
                entry.server_id = server_id
