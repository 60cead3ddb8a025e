"""An in-memory presence table: :class:`FakePresence`, with the real table's rules and a call log."""

from __future__ import annotations

from typing import Any

from zope.interface import implementer

from socp_tw.interfaces import ILink, IPresence, IPresenceObserver

__all__ = ["FakePresence"]


@implementer(IPresence)
class FakePresence:
    """An in-memory :class:`IPresence` with the same rules as the real table, and a call log.

    ``calls`` records (method, user_id, ...) in order, so tests can assert what the
    code under test told the presence table.
    """

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self.users: dict[str, Any] = {}
        self.observers: list[Any] = []
        self.calls: list[tuple] = []

    def add_observer(self, observer: Any) -> None:
        self.observers.append(IPresenceObserver(observer))

    def _notify(self, method: str, entry: Any) -> None:
        for observer in list(self.observers):
            getattr(observer, method)(entry)

    def user_online_local(self, user_id: str, pubkey: str, meta: dict[str, Any], link: ILink) -> Any:
        from socp_tw.services.presence import NameInUse, UserPresence

        self.calls.append(("user_online_local", user_id))
        current = self.users.get(user_id)
        if current is not None and current.local:
            raise NameInUse(user_id)
        entry = self.users[user_id] = UserPresence(user_id, self.server_id, pubkey, dict(meta), link)
        self._notify("user_online", entry)
        return entry

    def update_local_meta(self, user_id: str, meta: dict[str, Any]) -> Any:
        self.calls.append(("update_local_meta", user_id))
        entry = self.users.get(user_id)
        if entry is None or not entry.local:
            return None
        entry.meta = dict(meta)
        self._notify("user_online", entry)
        return entry

    def user_offline_local(self, user_id: str, link: ILink | None = None) -> bool:
        self.calls.append(("user_offline_local", user_id))
        entry = self.users.get(user_id)
        if entry is None or not entry.local or (link is not None and entry.link is not link):
            return False
        del self.users[user_id]
        self._notify("user_offline", entry)
        return True

    def user_online_remote(self, user_id: str, server_id: str, pubkey: str, meta: dict[str, Any]) -> bool:
        from socp_tw.services.presence import UserPresence

        self.calls.append(("user_online_remote", user_id, server_id))
        current = self.users.get(user_id)
        if current is not None and (
            current.local or (current.server_id, current.pubkey, current.meta) == (server_id, pubkey, meta)
        ):
            return False
        entry = self.users[user_id] = UserPresence(user_id, server_id, pubkey, dict(meta))
        self._notify("user_online", entry)
        return True

    def user_offline_remote(self, user_id: str, server_id: str) -> bool:
        self.calls.append(("user_offline_remote", user_id, server_id))
        entry = self.users.get(user_id)
        if entry is None or entry.local or entry.server_id != server_id:
            return False
        del self.users[user_id]
        self._notify("user_offline", entry)
        return True

    def server_lost(self, server_id: str) -> list[str]:
        self.calls.append(("server_lost", server_id))
        gone = self.users_on(server_id)
        for user_id in gone:
            self.user_offline_remote(user_id, server_id)
        return gone

    def lookup(self, user_id: str) -> Any:
        return self.users.get(user_id)

    def local_link(self, user_id: str) -> ILink | None:
        entry = self.users.get(user_id)
        return entry.link if entry is not None else None

    def online_users(self) -> list[str]:
        return sorted(self.users)

    def local_entries(self) -> list[Any]:
        return [e for e in self.users.values() if e.local]

    def users_on(self, server_id: str) -> list[str]:
        return sorted(u for u, e in self.users.items() if e.server_id == server_id and not e.local)
