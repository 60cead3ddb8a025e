"""The server mesh and its outgoing links (services/mesh/)."""

from __future__ import annotations

from zope.interface import Attribute, Interface

from socp_tw.interfaces.core import ILinkHandler


class IPeerLinks(Interface):
    """The server-to-server links of the mesh (PROTOCOL.md §4)."""

    def connected_servers():
        """Sorted ids of servers with a live link."""

    def server_key(server_id):
        """The pinned public key (``RSAPublicKey``) of ``server_id``, or None."""

    def send_to_server(server_id, frame):
        """Send ``frame`` (bytes or Deferred of bytes) towards ``server_id``: its own link if
        there is one, else a relay path.  Returns False when no route exists."""

    def broadcast(frame, exclude=None):
        """Send ``frame`` on every live server link except the one with link_id ``exclude``;
        return how many links it went to."""

    def relay(envelope, link):
        """Pass a verified ``to: "*"`` frame from another server on, unchanged, to the servers
        that need it: every live link but ``link`` (its arrival) and the origin, less the
        neighbours that have it from the origin directly (the link-set rule, docs/MESH.md).
        Returns how many links it went to."""

    def acks_deliveries(server_id):
        """True if ``server_id`` said it confirms every SERVER_DELIVER it delivers (``ACK``)."""

    def heard_since(server_id, when):
        """True if a frame arrived on the live link to ``server_id`` at or after ``when``
        (clock seconds)."""

    def unresponsive(server_id, since):
        """A delivery to ``server_id`` was not confirmed in time; if its link has also been
        silent since ``since``, the peer is hung: treat the link as dead now."""

    def on_frame(type, handler, prepare=None):
        """Call ``handler(envelope, link)`` for every verified server frame of ``type``
        (e.g. the router takes ``SERVER_DELIVER``).

        ``prepare(envelope)``, if given, is called for such a frame addressed to this server
        *before* its signature is checked, on a link that sent no bad signature lately: it may
        start work that leaves nothing outside the server (a signature) and return a token
        with a ``discard()`` method (a no-op once the handler has used the work), or None.
        If the frame verifies, the handler is called as ``handler(envelope, link, token)``;
        if not, it never sees the frame.  Either way the token is discarded afterwards."""

    counters = Attribute(
        "A ``collections.Counter`` of mesh events (links up/down, frames rejected, relayed ...),"
        " for status lines and tests."
    )

    def add_change_observer(callback):
        """Call ``callback()`` (no arguments) whenever :meth:`connected_servers` changes."""


class IPeerLinkEvents(ILinkHandler):
    """The mesh as its outgoing links see it (``socp_tw.services.mesh.Mesh``).

    The dialers (``socp_tw.services.mesh.dialing``) and their WebSocket client protocol
    (``socp_tw.protocols.peer``) report here; frames and closes arrive as on any
    :class:`ILinkHandler`.
    """

    counters = Attribute(
        "The mesh's ``collections.Counter``; an outgoing link that does not read counts"
        " ``closed.send_overflow`` in it."
    )

    def set_outgoing(outgoing):
        """Dial other servers through ``outgoing`` (an :class:`IOutgoingLinks`) from now on."""

    def outgoing_opened(link, dialer):
        """The outgoing ``link`` of ``dialer`` (an :class:`IDialer`) completed its WebSocket
        handshake: identify ourselves on it."""

    def frame_rejected(link, error):
        """A frame on an outgoing ``link`` failed parsing with ``error`` (a ``wire.FrameError``)."""

    def goodbye(link):
        """Tell the server on ``link`` that we are leaving (before a shutdown close), once."""


class IDialer(Interface):
    """One outgoing link to one address, redialled with backoff while the mesh wants it.

    A new dialer is paused.  The mesh resumes it while it wants a link to that server and
    pauses it while another link to the server is live.
    """

    host = Attribute("The host dialled (the next attempt uses it).")
    port = Attribute("The port dialled.")
    url = Attribute("``ws://`` or ``wss://`` URL of the address dialled (logs).")
    server_id = Attribute("The id of the server dialled, or None until an introducer's WELCOME.")
    join = Attribute("True: open with SERVER_HELLO_JOIN (an introducer); the mesh clears it.")
    pem = Attribute("True: send our key as b64u(PEM) in SERVER_HELLO_JOIN (bootstrap key given as PEM).")
    wanted = Attribute("True from :meth:`resume` (after its delay) until :meth:`pause`: it dials.")

    def resume(delay=0.0):
        """Dial (after ``delay`` seconds) and keep redialling until paused."""

    def pause():
        """Stop dialling; a live link of this dialer is left alone."""

    def retarget(host, port):
        """The server moved: dial ``host:port`` from the next attempt on."""

    def mark_healthy():
        """The peer accepted the link: the next redial starts from the shortest delay."""


class IOutgoingLinks(Interface):
    """Owns the mesh's dialers (``socp_tw.services.mesh.dialing.OutgoingLinks``)."""

    def dialer(host, port, server_id=None, join=False):
        """A new, paused :class:`IDialer` for ``host:port``."""

    def remove(dialer):
        """Forget ``dialer`` (replaced by another): stop it, close its link without a goodbye.
        Returns a Deferred that fires once it has stopped."""


class IOutgoingLinkOwner(Interface):
    """The dialer behind one outgoing WebSocket connection, as its client protocol sees it.

    ``socp_tw.protocols.peer`` builds one connection per attempt; this is all it knows
    of the dialer that made it.
    """

    address = Attribute("Printable ``host:port`` dialled (``[v6]:port``): the link's ``peer``.")
    url = Attribute("The URL dialled (the WebSocket handshake's).")
    mesh = Attribute("The :class:`IPeerLinkEvents` that the link's frames and events go to.")
    max_send_queue = Attribute("Frames awaiting a signature past which the link is closed as not reading.")
    max_send_queue_bytes = Attribute("Bytes not taken by the kernel past which it is closed so.")

    def new_link_id():
        """A link id unique in the process (``out-N``)."""

    def opened(link):
        """``link`` completed its WebSocket handshake."""

    def closed(link, opened, code, reason):
        """``link`` closed; ``opened`` False if its WebSocket handshake never completed."""


__all__ = ["IDialer", "IOutgoingLinkOwner", "IOutgoingLinks", "IPeerLinkEvents", "IPeerLinks"]
