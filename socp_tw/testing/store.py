"""An in-memory database: :class:`MemoryStore`, an :class:`IStore` with SQLiteStore's answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from socp_tw import wire
from socp_tw.interfaces import IStore

__all__ = ["MemoryStore"]


@implementer(IStore)
class MemoryStore:
    """An in-memory :class:`IStore`: the same answers as ``SQLiteStore``, already fired."""

    def __init__(self, now_ms: Callable[[], int] = wire.now_ms) -> None:
        self._now_ms = now_ms
        self.users: dict[str, dict[str, Any]] = {}  # keyed by user_id.lower()
        #: group_id -> {creator_id, meta, origins, states: {member: state}, members: {member: wrapped}}
        self.groups: dict[str, dict[str, Any]] = {
            "public": {"creator_id": "system", "meta": {}, "origins": {}, "states": {}, "members": {}}
        }
        self.calls = 0

    def get_user(self, user_id: str) -> Deferred:
        self.calls += 1
        row = self.users.get(user_id.lower())
        return succeed(None if row is None else {**row, "meta": json.loads(json.dumps(row["meta"]))})

    def add_user(
        self, user_id: str, pubkey: str, privkey_store: str, pake_password: str, meta: dict[str, Any]
    ) -> Deferred:
        self.calls += 1
        if not all(isinstance(v, str) and v for v in (user_id, pubkey, privkey_store, pake_password)):
            return fail(ValueError("add_user needs non-empty strings for id, key, key store and verifier"))
        if user_id.lower() in self.users:
            return succeed(False)
        self._insert(user_id, pubkey, privkey_store, pake_password, meta or {})
        return succeed(True)

    def pin_user_key(self, user_id: str, pubkey: str) -> Deferred:
        self.calls += 1
        if not all(isinstance(v, str) and v for v in (user_id, pubkey)):
            return fail(ValueError("pin_user_key needs a non-empty id and key"))
        row = self.users.get(user_id.lower())
        if row is None:
            self._insert(user_id, pubkey, None, None, {})
            return succeed(True)
        return succeed(row["pake_password"] is None and row["pubkey"] == pubkey)

    def pin_remote_user(self, user_id: str, pubkey: str, home_server: str) -> Deferred:
        self.calls += 1
        if not all(isinstance(v, str) and v for v in (user_id, pubkey, home_server)):
            return fail(ValueError("pin_remote_user needs a non-empty id, key and home server"))
        if user_id.lower() in self.users:
            return succeed(False)
        self._insert(user_id, pubkey, None, None, {}, home_server)
        return succeed(True)

    def update_user_meta(self, user_id: str, changes: dict[str, Any]) -> Deferred:
        self.calls += 1
        row = self.users.get(user_id.lower())
        if row is None:
            return succeed(False)
        merged = {**row["meta"], **changes}
        row["meta"] = {k: v for k, v in merged.items() if v is not None}
        return succeed(True)

    def load_group(self, group_id: str) -> Deferred:
        self.calls += 1
        group = self.groups.get(group_id)
        if group is None:
            return succeed(None)
        return succeed(
            {
                "group_id": group_id,
                "creator_id": group["creator_id"],
                "version": sum(group["origins"].values()),
                "meta": json.loads(json.dumps(group["meta"])),
                "origins": dict(group["origins"]),
                "states": [dict(group["states"][m]) for m in sorted(group["states"])],
                "members": dict(group["members"]),
            }
        )

    def save_group_state(
        self, group_id: str, states: list[dict[str, Any]], origins: dict[str, int]
    ) -> Deferred:
        from socp_tw.services.store import validate_group_state

        self.calls += 1
        group = self.groups.get(group_id)
        try:
            validate_group_state(states, origins)
            if group is None:
                raise ValueError(f"no group {group_id!r}")
        except ValueError:
            return fail()
        for origin, seq in origins.items():
            group["origins"][origin] = max(seq, group["origins"].get(origin, 0))
        for state in states:
            member = state["member_id"]
            group["states"][member] = dict(state)
            if state["present"]:
                group["members"].setdefault(member, None)
            else:
                group["members"].pop(member, None)
        return succeed(sum(group["origins"].values()))

    def set_group_key(self, group_id: str, wraps: dict[str, str], meta: dict[str, Any]) -> Deferred:
        self.calls += 1
        group = self.groups.get(group_id)
        try:
            if not isinstance(wraps, dict) or not isinstance(meta, dict):
                raise ValueError("wraps and meta must be dicts")
            if not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in wraps.items()):
                raise ValueError("wraps maps member ids to wrapped keys (non-empty strings)")
            meta = json.loads(json.dumps(meta))
            if group is None:
                raise ValueError(f"no group {group_id!r}")
        except (TypeError, ValueError) as e:
            return fail(ValueError(f"set_group_key: {e}"))
        group["meta"].update(meta)
        members = group["members"]
        for member in members:
            members[member] = wraps.get(member)
        return succeed(sum(1 for member in wraps if member in members))

    def _insert(self, user_id, pubkey, privkey_store, pake_password, meta, home_server=None) -> None:
        self.users[user_id.lower()] = {
            "home_server": home_server,
            "user_id": user_id,
            "pubkey": pubkey,
            "privkey_store": privkey_store,
            "pake_password": pake_password,
            "meta": json.loads(json.dumps(meta, sort_keys=True)),
            "version": 1,
            "created_at": self._now_ms(),
        }
