"""Workers, signing, links and the hub: what every service stands on."""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IWorkers(Interface):
    """Somewhere to run CPU-heavy work (RSA private-key operations) off the reactor thread."""

    size = Attribute("How many calls may run at once.")

    def run(f, *args, **kwargs):
        """Call ``f(*args, **kwargs)``; return a Deferred firing with its result (or failure)."""


class ISigner(Interface):
    """Makes the frames this server sends: envelope plus transport signature."""

    server_id = Attribute("This server's UUID (the ``from`` of every frame it sends).")
    public_key_text = Attribute("This server's public key, b64u(DER SPKI).")

    def frame(type, to, payload, ts=None):
        """Return a Deferred firing with the encoded, signed frame (bytes).

        ``ts`` defaults to now; relays pass the original ts.  Signing runs on the workers.
        """

    def frame_now(type, to, payload, ts=None):
        """Like :meth:`frame` but synchronous: for cold paths and tests only."""

    def sign_content_now(preimage):
        """Return this server's ``content_sig`` (RSASSA-PSS, b64url) over ``preimage`` (bytes).

        Synchronous, a private-key operation: call it from work already running on the
        workers (e.g. signing the shares of a new public-channel group key).
        """


class ILink(Interface):
    """One WebSocket connection, user or server, incoming or outgoing."""

    link_id = Attribute("Unique id of this connection within the process (for logs and tables).")
    peer = Attribute("Printable remote address, e.g. ``127.0.0.1:53122``.")
    role = Attribute('"pending" until the first identifying frame, then "user" or "server".')
    identity = Attribute("The user or server id bound to this link, or None.")
    outgoing = Attribute("True when we dialled this link.")

    def send(frame):
        """Queue ``frame`` (bytes, or a Deferred firing with bytes) for sending.

        Frames leave in the order ``send`` was called, even when an earlier one is
        still being signed; a Deferred that fails is logged and skipped.
        """

    def close(code=1000, reason=None):
        """Close the connection cleanly with WebSocket close ``code``."""


class ILinkHandler(Interface):
    """Receives the events of links that it has claimed."""

    def frame_received(link, envelope):
        """A well-formed frame (a ``socp_tw.wire.Envelope``) arrived on ``link``."""

    def link_closed(link, reason):
        """``link`` is gone; forget it."""


class IHub(Interface):
    """Owns the links accepted on the listening port and routes their frames to handlers.

    A connection's first frame identifies it (PROTOCOL.md §1): the handler that
    claimed that frame type becomes the link's handler for the rest of its life.
    """

    def claim(types, handler):
        """Make ``handler`` (an :class:`ILinkHandler`) own links whose first frame is of ``types``."""

    def bind(link, handler):
        """Send every later frame of ``link`` (and its close) to ``handler``: the peer is identified."""

    def send_error(link, code, detail, ref=None):
        """Send a server-signed ``ERROR {code, detail}`` on ``link`` and count it."""

    def allow_error(link, code=""):
        """True if one more ERROR may be signed for ``link``; False past its error budget
        (the caller then drops the error: a flood of bad frames must not buy signatures)."""

    def link_opened(link):
        """A connection completed its WebSocket handshake."""

    def frame_received(link, envelope):
        """A well-formed frame arrived on an accepted ``link``."""

    def frame_rejected(link, error):
        """A frame on ``link`` failed parsing with ``error`` (a ``socp_tw.wire.FrameError``)."""

    def link_closed(link, reason):
        """``link`` is gone."""


__all__ = ["IHub", "ILink", "ILinkHandler", "ISigner", "IWorkers"]
