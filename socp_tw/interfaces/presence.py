"""Who is online where, and who wants to hear of it."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class NameInUse(Exception):
    """The user id is already connected to this server (``IPresence.user_online_local``)."""


class IPresenceObserver(Interface):
    """Told when a user comes online or goes offline anywhere on the mesh."""

    def user_online(entry):
        """``entry`` (a ``socp_tw.services.presence.UserPresence``) is now online."""

    def user_offline(entry):
        """``entry`` is no longer online (its ``server_id`` says where it was)."""


class IPresence(Interface):
    """Who is online where: ``local_users`` and ``user_locations`` of PROTOCOL.md §3.

    Pure bookkeeping, no I/O: observers (gossip, relaying to local users) act on changes.
    """

    server_id = Attribute("This server's id; local users are recorded under it.")

    def add_observer(observer):
        """Call ``observer`` (an :class:`IPresenceObserver`) on every change."""

    def user_online_local(user_id, pubkey, meta, link):
        """A user completed USER_HELLO on ``link``.  Raises ``NameInUse`` if already local."""

    def update_local_meta(user_id, meta):
        """A local user's ``meta`` changed: replace it and tell the observers (``user_online``
        again, so it is re-advertised).  The entry, or None if the user is not local."""

    def user_offline_local(user_id, link=None):
        """A local user left (with ``link``: only if that is still its link).  True if removed."""

    def user_online_remote(user_id, server_id, pubkey, meta):
        """A USER_ADVERTISE said ``user_id`` is on ``server_id``.  Returns True if anything changed.

        A user hosted here is never displaced by a remote advertise.
        """

    def user_offline_remote(user_id, server_id):
        """A USER_REMOVE: forget ``user_id`` only if its location is still ``server_id``.  True if removed."""

    def server_lost(server_id):
        """Withdraw every user learnt from ``server_id``; return their ids."""

    def lookup(user_id):
        """The ``UserPresence`` of an online user, or None."""

    def local_link(user_id):
        """The :class:`ILink` of a local user, or None."""

    def online_users():
        """Sorted ids of every user known online anywhere."""

    def local_entries():
        """``UserPresence`` of every local user."""

    def users_on(server_id):
        """Ids of users hosted by ``server_id``."""


__all__ = ["IPresence", "IPresenceObserver", "NameInUse"]
