"""The user side as other services see it, and the server-side user key pins."""

from __future__ import annotations

from zope.interface import Interface

#: The verdicts of :meth:`IUserKeys.check` / :meth:`IUserKeys.pin_advertised`.
NEW, SAME, DIFFERS, FULL = "new", "same", "differs", "full"


class IUserFrames(Interface):
    """The user side as the services that handle user frames see it (public channel, files).

    Frames of a registered type reach their handler only from an authenticated user link
    and after the ``from`` check.
    """

    def register_user_frame(frame_type, handler):
        """Call ``handler(link, user_id, envelope)`` for every ``frame_type`` frame of a local user.

        The handler may return a Deferred (the link's next frame waits for it) and raise
        ``wire.FrameError`` to have it answered with ``ERROR`` (its code and detail).
        """

    def send_error(link, code, detail, ref=None, to=None, **extra):
        """Send a server-signed ``ERROR {code, detail, msg_ref?, ...extra}`` on user ``link``.

        ``ref`` is the type of the frame it answers; ``to`` the recipient when the link has
        no identity yet.  Dropped once the connection is past its error budget.
        """

    def authenticated_key(user_id):
        """The key (b64u DER) a local user authenticated with, or None if not local."""


class IUserKeys(Interface):
    """Server-side user key pins: the first key this server learnt for each user id
    (socp_tw/services/userkeys.py, docs/SECURITY.md)."""

    def lookup(user_id):
        """The :class:`~socp_tw.services.userkeys.UserKeyPin` of ``user_id`` (``digest``,
        ``home_server`` (None: here), ``registered``, ``fingerprint``), or None."""

    def check(user_id, pubkey):
        """``"new"`` if no key is pinned for ``user_id``, ``"same"`` if ``pubkey`` (any
        encoding) is the pinned key, ``"differs"`` otherwise."""

    def pin_local(user_id, pubkey, registered):
        """Record a key the store has just pinned here (registration or first-use hello)."""

    def pin_advertised(user_id, pubkey, server_id):
        """Check a key advertised by ``server_id``; pin it (and store it) for an unknown id.
        Returns ``"new"``, ``"same"``, ``"differs"`` or ``"full"`` (new, but no room)."""


__all__ = ["DIFFERS", "FULL", "NEW", "SAME", "IUserFrames", "IUserKeys"]
