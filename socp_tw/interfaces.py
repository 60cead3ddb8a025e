"""The contracts between socp-tw's services.

Services receive their collaborators typed by these interfaces and adapt them with
``IFoo(obj)``, so a swapped argument fails loudly.  ``socp_tw.testing`` ships an
in-memory fake of each, checked by the same contract tests as the real thing.
"""

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


class IStore(Interface):
    """The server's database (PROTOCOL.md §3).  Every method returns a Deferred.

    User ids compare case-insensitively (a look-alike spelling of a known id is the
    same id); keys are compared as the exact text given, so callers pass one
    normalised encoding (b64u DER).
    """

    def get_user(user_id):
        """Fire with a dict of the ``users`` row or None.

        Keys: ``user_id``, ``pubkey``, ``privkey_store``, ``pake_password`` (both None for a
        TOFU pin), ``meta`` (decoded dict), ``version``, ``created_at`` (Unix ms),
        ``home_server`` (None for a user registered or first seen here, else the server whose
        advertise pinned its key).
        """

    def add_user(user_id, pubkey, privkey_store, pake_password, meta):
        """Insert a registered user; fire True, or False if ``user_id`` already exists
        (registered or pinned)."""

    def update_user_meta(user_id, changes):
        """Merge ``changes`` into the user's ``meta`` (a None value removes that key); fire
        True, or False if the id has no row here."""

    def pin_user_key(user_id, pubkey):
        """Record a first-use key for an id never registered here (no privkey_store,
        no verifier).  Fire True if pinned now or already pinned to the same key, False if the id
        holds another key or is registered (a registered id must prove possession instead)."""

    def pin_remote_user(user_id, pubkey, home_server):
        """Pin the key another server advertised for a user id this server does not know yet
        (``home_server``: that server).  Fire True if pinned now, False if the id is known."""

    def load_group(group_id):
        """Fire with the replicated state of a group (docs/PUBLIC-CHANNEL.md), or None if unknown.

        A dict: ``group_id``, ``creator_id``, ``version`` (the sum of ``origins``), ``meta``
        (decoded dict), ``origins`` ({origin server id: highest event seq}), ``states`` (a list
        of dicts ``member_id``, ``present`` (bool), ``lamport``, ``origin_id``, ``seq``,
        ``host_id``, ``pubkey`` (None for a leave): the newest event known per member) and
        ``members`` ({member id: wrapped group key or None}: the current members).
        """

    def save_group_state(group_id, states, origins):
        """Record member states (each replaces that member's state) and raise per-origin counters
        (a counter is never lowered).  Current members follow the states: a present one is added
        (without a key) if missing, an absent one removed.  Fire with the group's new version;
        fail with ``ValueError`` for an unknown group or a malformed state, writing nothing."""

    def set_group_key(group_id, wraps, meta):
        """Store a new group key, wrapped per member: ``wraps`` {member id: wrapped key} sets
        each current member's ``wrapped_key`` (members not in ``wraps`` get None) and ``meta``
        entries are merged into the group's meta.  Fire with the number of members given a key;
        ``ValueError`` for an unknown group."""
