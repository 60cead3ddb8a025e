"""Presence for clients that follow: ``USER_HELLO presence: "follow"`` and ``PRESENCE_FOLLOW``.

A client in this mode (docs/MESH.md, "Presence to local users"; PROTOCOL-EXTENSIONS §14) gets
no replay of every online user after its hello and no frame for every login anywhere: only
the ``USER_ADVERTISE`` / ``USER_REMOVE`` of the users it follows (the same signed bytes the
per-event users get: no extra signature), and ``/list`` answers on request.  A login then
costs one frame per follower instead of one per local user, and a newcomer nothing per
online user, so a storm of N logins is O(N) frames, not O(N²).  The public channel's
membership and key shares are likewise sent to such a link only once it subscribes
(``PUBLIC_CHANNEL_SUBSCRIBE``, services/public/).
"""

from __future__ import annotations

from typing import Any

from socp_tw import wire
from socp_tw.interfaces import ILink

PRESENCE_FOLLOW = "follow"  # USER_HELLO "presence" value: per-event frames only for followed users
MAX_FOLLOWS = 1000  # user ids one link may follow (a frame naming more is refused whole)


class FollowLimit(wire.FrameError):
    """A link asked to follow more than :data:`MAX_FOLLOWS` users."""

    code = "BAD_FIELD"


def _follow_ids(payload: dict[str, Any]) -> list[str]:
    """The ``user_ids`` of a PRESENCE_FOLLOW, lower-cased, each a UUID, at most MAX_FOLLOWS."""
    if "user_ids" not in payload:
        raise wire.MissingField("PRESENCE_FOLLOW needs user_ids (a list of user ids)", "user_ids")
    ids = payload["user_ids"]
    if not isinstance(ids, list):
        raise wire.BadFieldType("user_ids must be a list of user ids", "user_ids")
    if len(ids) > MAX_FOLLOWS:
        raise FollowLimit(f"at most {MAX_FOLLOWS} user ids may be followed", "user_ids")
    if not all(wire.is_uuid(u) for u in ids):
        raise wire.BadUUID("every entry of user_ids must be a user id (UUID)", "user_ids")
    return [u.lower() for u in ids]


class _Follows:
    """The follow side of :class:`UserSide`: who follows whom, and the answer to a follow."""

    def _is_quiet(self, link_id: str) -> bool:
        """True for a link in follow mode (no presence but its follows', no replay)."""
        return link_id in self._quiet_links

    def _follower_links(self, about: str) -> list[ILink]:
        """The links of local users in follow mode who follow ``about``."""
        links = self._links
        return [links[i].link for i in self._followers.get(about, ()) if i in links]

    def _follow(self, link: ILink, sender: str, envelope: wire.Envelope) -> None:
        """``PRESENCE_FOLLOW {user_ids}``: follow them (on top of earlier follows) and answer with
        their state now, one signed ``USER_LIST {users, removed}``: ``users`` holds the advert of
        each who is online, ``removed`` ``{user_id}`` for the others."""
        wanted = _follow_ids(envelope.payload)
        state = self._links.get(link.link_id)
        if state is None:
            return
        if self._is_quiet(link.link_id):
            fresh = [u for u in dict.fromkeys(wanted) if u not in state.follows and u != sender]
            if len(state.follows) + len(fresh) > MAX_FOLLOWS:
                raise FollowLimit(
                    f"at most {MAX_FOLLOWS} user ids may be followed (you follow {len(state.follows)})",
                    "user_ids",
                )
            if fresh and not state.follows:
                state.follows = set()
            for user_id in fresh:
                state.follows.add(user_id)
                self._followers.setdefault(user_id, set()).add(link.link_id)
        self.counters["follows"] += 1
        online, offline = [], []
        for user_id in dict.fromkeys(wanted):
            entry = self._presence.lookup(user_id)
            if entry is None:
                offline.append({"user_id": user_id})
            else:
                online.append(self._advert_for(link, entry))
        self._send(link, "USER_LIST", sender, {"users": online, "removed": offline, "follow": True})

    def _forget_follows(self, link_id: str, follows: set[str] | tuple) -> None:
        """A link closed: it follows nobody any more."""
        self._quiet_links.discard(link_id)
        for user_id in follows:
            followers = self._followers.get(user_id)
            if followers is not None:
                followers.discard(link_id)
                if not followers:
                    del self._followers[user_id]
