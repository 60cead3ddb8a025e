"""Delivering user content, and holding it when it cannot be delivered now."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class UserNotFound(Exception):
    """Nobody on the mesh hosts this user."""


class Unverified(Exception):
    """A frame signed ahead of its content check failed that check: it was dropped unsent."""


class IRouter(Interface):
    """Delivers user frames to wherever the recipient is (PROTOCOL.md §4-6)."""

    def route(kind, recipient, fields, ts, sender, sender_pub, verified=None):
        """Deliver a user frame of ``kind`` (``MSG_DIRECT``, ``MSG_PUBLIC_CHANNEL``, ``FILE_*`` ...)
        that local user ``sender`` sent to ``recipient``, keeping the original ``ts``.

        ``fields`` are the frame's payload fields (ciphertext, content_sig, ...).
        Local recipient: a server-signed ``USER_DELIVER`` (for a DM) or the original
        type.  Remote: ``SERVER_DELIVER`` to the hosting server.  Returns "local" or
        the hosting server id; raises :class:`UserNotFound`.

        ``verified``: the content check, when the caller has not made it yet.  The
        frame's signature is then started first and ``verified()`` runs on the reactor
        while the pool signs; the frame is sent only if it returns true, otherwise it is
        dropped unsent and :class:`Unverified` raised (also instead of
        :class:`UserNotFound`: a bad signature is reported as such).
        """

    def deliver_from_server(envelope, origin_link):
        """Handle a verified ``SERVER_DELIVER`` from the mesh: deliver locally after the
        content_sig check, forward unchanged towards the hosting server, or answer the
        origin with ``ERROR USER_NOT_FOUND`` / ``INVALID_SIG``."""


class IHeldMessages(Interface):
    """Store-and-forward of DMs (socp_tw/services/holding/, docs/MESH.md)."""

    def can_hold(recipient):
        """True if a DM to ``recipient`` may be held (some server has seen the id)."""

    def hold(sender, recipient, ts, fields, sender_pub, reason):
        """Hold a DM; fire once it is written and its sender told ``queued``, or fail with
        ``QueueFull`` (its ``detail`` names the bound)."""

    def handed_over(ref):
        """The server a held DM was sent to confirmed it: forget it."""

    def not_handed_over(ref):
        """A held DM sent to a server was not confirmed: keep it for a later try."""

    def refused(ref):
        """The server a held DM was sent to refused it for good: forget it.  True if it was held."""

    max_age_ms = Attribute(
        "The oldest held DM (by its ts, in ms) delivered here, and how long delivered refs are kept."
    )

    def claim_delivered(ref):
        """Fire True the first time a held DM with ``ref`` is delivered here, else False."""

    track = Attribute(
        "``track(dm, server_id)``, set by the router: follow a held DM sent to a server until that"
        " server confirms it (then ``handed_over``) or not (``not_handed_over``)."
    )


__all__ = ["IHeldMessages", "IRouter", "Unverified", "UserNotFound"]
