"""The user side of the server: registration, login, ``USER_HELLO`` and authenticated user links.

Pre-hello frames (``docs/PROTOCOL-EXTENSIONS.md``): ``USER_REGISTER``, the SRP-6a login
(``USER_LOGIN_START`` / ``USER_LOGIN_PROOF``), ``USER_HELLO_CHALLENGE`` and
``USER_HELLO`` with its key-possession proof, or a plain first-use hello from a client of
another SOCP implementation (TOFU, §6.3).  After the hello (PROTOCOL.md §5):
``MSG_DIRECT`` (shape, ``from`` and ``content_sig`` checked before routing),
``LIST_REQUEST``, ``PUBKEY_REQUEST``, ``HEARTBEAT``, ``CTRL_CLOSE``; later issues add
frame types through :meth:`UserSide.register_user_frame`.

Each link's frames are handled strictly in arrival order, one at a time: a frame
whose handling waits (a database read, SRP work on the workers) holds back the
frames behind it, so a client that pipelines ``USER_HELLO`` and its first
``MSG_DIRECT`` gets them processed in that order, and no two handlers of one link
ever race.  The backlog per link is bounded: at ``BACKLOG_PAUSE`` waiting frames the
server stops reading the connection (TCP then slows the client down) until half of
them are handled; past ``MAX_BACKLOG`` frames are refused with ``RATE_LIMITED``.

As a presence observer it relays every ``USER_ADVERTISE`` / ``USER_REMOVE`` to the
local users (one server-signed frame per event, the same bytes for everyone) and
replays the current advertisements to a user right after its hello.

Modules, one concern each: :mod:`.state` (constants, frame errors, the per-link state),
:mod:`.dispatch` (the per-link queue and backlog, state and replay checks),
:mod:`.registration` (``USER_REGISTER``), :mod:`.login` (SRP-6a), :mod:`.hello` (nonce,
proof, TOFU and the user-key pin checks), :mod:`.frames` (``MSG_DIRECT``, ``LIST_REQUEST``,
``PUBKEY_REQUEST``), :mod:`.adverts` (presence relayed to users, the advert cache) and
:mod:`.service` (the :class:`UserSide` facade, built from those parts as mixins).
"""

from socp_tw.auth.limiter import LoginLimiter
from socp_tw.services.users.service import UserSide
from socp_tw.services.users.state import (
    AUTH_FRAMES,
    BACKLOG_PAUSE,
    LOGIN_TTL,
    MAX_AUTH_ATTEMPTS_PER_LINK,
    MAX_BACKLOG,
    MAX_BLOB_TEXT,
    MAX_CACHED_ADVERTS,
    MAX_CLIENT_NAME,
    MAX_KEY_TEXT,
    NONCE_TTL,
    UserFrameHandler,
)

__all__ = [
    "AUTH_FRAMES",
    "BACKLOG_PAUSE",
    "LOGIN_TTL",
    "MAX_AUTH_ATTEMPTS_PER_LINK",
    "MAX_BACKLOG",
    "MAX_BLOB_TEXT",
    "MAX_CACHED_ADVERTS",
    "MAX_CLIENT_NAME",
    "MAX_KEY_TEXT",
    "NONCE_TTL",
    "LoginLimiter",
    "UserFrameHandler",
    "UserSide",
]
