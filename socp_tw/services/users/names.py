"""``USER_SET_META {name}`` (docs/PROTOCOL-EXTENSIONS.md §13): a user's display name.

The name is checked (socp_tw/usernames.py: at most 32 characters, no spaces or control
characters), stored in the user's ``users.meta`` on this, their home server, and
re-advertised: presence tells the other servers and the local users, whose
``USER_ADVERTISE.meta.name`` carries it.  An empty or null name withdraws it.  The stored
name is advertised again at every later hello.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from socp_tw import wire
from socp_tw.interfaces import ILink
from socp_tw.usernames import clean_name, name_problem


class _BadName(wire.FrameError):
    """A ``USER_SET_META`` name that breaks the rules."""

    code = "BAD_FIELD"


def stored_name(row: dict[str, Any] | None) -> str | None:
    """The name kept in a ``users`` row's meta, if it is still an acceptable one."""
    meta = row.get("meta") if isinstance(row, dict) else None
    return clean_name(meta.get("name")) if isinstance(meta, dict) else None


class _Names:
    """The ``USER_SET_META`` handler for :class:`UserSide`."""

    def _set_meta(self, link: ILink, user_id: str, envelope: wire.Envelope) -> Deferred:
        payload = envelope.payload
        if set(payload) - {"name"} or "name" not in payload:
            raise wire.BadFieldType("USER_SET_META carries exactly one field, 'name'", "name")
        raw = payload["name"]
        if raw is not None and not isinstance(raw, str):
            raise wire.BadFieldType("field 'name' must be a string or null", "name")
        name = None
        if raw:
            problem = name_problem(raw)
            if problem is not None:
                raise _BadName(problem, "name")
            name = clean_name(raw)
        d = self._store.update_user_meta(user_id, {"name": name})
        d.addCallback(self._name_stored, link, user_id, name)
        return d

    def _name_stored(self, _: object, link: ILink, user_id: str, name: str | None) -> None:
        entry = self._presence.lookup(user_id)
        if entry is not None and entry.local and entry.link is link:
            meta = {k: v for k, v in entry.meta.items() if k != "name"}
            if name is not None:
                meta["name"] = name
            self._presence.update_local_meta(user_id, meta)
        self.counters["names_set"] += 1
        self._log.info("User {user} set a display name", user=user_id)
        self._send(link, "ACK", user_id, {"msg_ref": "USER_SET_META", "name": name})
