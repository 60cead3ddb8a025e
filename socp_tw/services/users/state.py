"""The user side's constants, frame errors and per-link state (one ``_UserLink`` per connection)."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred

from socp_tw import crypto, wire
from socp_tw.auth.login import SrpServer
from socp_tw.interfaces import ILink

#: The frames valid only before the hello; the hub routes a link's first frame here for these.
AUTH_FRAMES = ("USER_REGISTER", "USER_LOGIN_START", "USER_LOGIN_PROOF", "USER_HELLO_CHALLENGE", "USER_HELLO")

NONCE_TTL = 60.0  # seconds a hello nonce stays valid (PROTOCOL-EXTENSIONS §5)
LOGIN_TTL = 60.0  # seconds a pending SRP attempt stays valid (§4)
MAX_AUTH_ATTEMPTS_PER_LINK = 32  # registrations + login starts + nonce requests + hellos per connection
MAX_BACKLOG = 128  # frames waiting behind a slow one on one link
BACKLOG_PAUSE = 32  # frames waiting on one link before we stop reading it (TCP then slows the client)
MAX_CACHED_ADVERTS = 10_000  # advertisements replayed to a newly connected user
MAX_CLIENT_NAME = 128
MAX_KEY_TEXT = 16384
MAX_BLOB_TEXT = 65536

#: ``handler(link, user_id, envelope) -> Deferred | None`` for a frame type on an
#: authenticated user link; raise a ``wire.FrameError`` to answer ERROR with its code.
UserFrameHandler = Callable[[ILink, str, wire.Envelope], "Deferred | None"]


class _NotNow(wire.FrameError):
    """A frame that is not valid in the link's current state."""

    code = "BAD_FRAME"


class _UnknownType(wire.FrameError):
    code = "UNKNOWN_TYPE"


@dataclass
class _HelloClaim:
    """What a USER_HELLO claims, parsed."""

    user_id: str
    key: Any  # RSAPublicKey
    pubkey: str  # b64u DER of ``key``
    meta: dict[str, Any]
    nonce: str | None
    proof: str | None
    presented: _Nonce | None


class _LoginFailed(wire.FrameError):
    code = "LOGIN_FAILED"


class _Replay(wire.FrameError):
    """User content identical to a frame already accepted (same from, to, ts and payload)."""

    code = "REPLAY"


class _BadFrom(wire.FrameError):
    """A frame on an authenticated user link whose ``from`` is not the link's user."""

    code = "BAD_FROM"


# ------------------------------------------------------------------ link state


@dataclass
class _Nonce:
    value: str
    expires: float


@dataclass
class _PendingLogin:
    user_id: str
    srp: SrpServer
    privkey_store: str
    expires: float


@dataclass(eq=False, slots=True)
class _UserLink:
    """What the user side knows about one connection (slots: one per connected user)."""

    link: ILink
    user_id: str | None = None  # set once USER_HELLO is accepted
    nonce: _Nonce | None = None
    login: _PendingLogin | None = None
    auth_attempts: int = 0
    busy: bool = False
    backlog: deque | tuple = ()  # frames waiting behind a busy handler; a deque only while there are any
    reading_paused: bool = False
    closed: bool = False
    sign_ahead: bool = True  # DMs signed while their content_sig is checked (until one fails)
    presence_lists: bool = False  # its hello asked for batched USER_LIST presence (adverts.py)
    presence_follow: bool = False  # its hello asked for presence of followed users only (follows.py)
    follows: set | tuple = ()  # the users it follows (a set once it follows anyone)
    pem_keys: bool = False  # its hello key was b64u(PEM): keys sent to it are too (keymirror)


def _normalised_key_text(text: str) -> str | None:
    """b64u(DER) of a key given in any accepted encoding, or None if it does not load."""
    try:
        return crypto.encode_public_key(crypto.load_public_key(text))
    except crypto.BadKey:
        return None


def _srp_challenge(verifier: str, a_pub: str) -> tuple[SrpServer, dict]:
    """Worker-pool side of USER_LOGIN_START: parse the verifier, answer A (4096-bit modexps)."""
    srp = SrpServer(verifier)
    return srp, srp.challenge(a_pub)


def _optional_str(payload: dict[str, Any], name: str, max_len: int) -> str | None:
    if payload.get(name) is None:
        return None
    return wire.require_str(payload, name, max_len=max_len)
