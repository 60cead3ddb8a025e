"""The :class:`UserSide` service: the facade the hub, presence and later issues talk to."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from zope.interface import implementer

from socp_tw import wire
from socp_tw.auth.hello import new_nonce
from socp_tw.auth.limiter import LoginLimiter
from socp_tw.auth.scrypt import MIN_SCRYPT_N
from socp_tw.interfaces import (
    IHub,
    ILink,
    ILinkHandler,
    IPresence,
    IPresenceObserver,
    IRouter,
    ISigner,
    IStore,
    IUserFrames,
    IUserKeys,
    IWorkers,
)
from socp_tw.limits import DEFAULT_LIMITS, BoundedTTLCache, Limits
from socp_tw.logs import Aggregated, get_logger
from socp_tw.services.users.adverts import _Adverts
from socp_tw.services.users.dispatch import _Dispatching
from socp_tw.services.users.follows import _Follows
from socp_tw.services.users.frames import _AuthenticatedFrames
from socp_tw.services.users.hello import _Hello
from socp_tw.services.users.login import _Login
from socp_tw.services.users.names import _Names
from socp_tw.services.users.registration import _Registration
from socp_tw.services.users.state import (
    AUTH_FRAMES,
    MAX_AUTH_ATTEMPTS_PER_LINK,
    NONCE_TTL,
    UserFrameHandler,
    _Nonce,
    _UserLink,
)


@implementer(ILinkHandler, IPresenceObserver, IUserFrames)
class UserSide(
    _Dispatching, _Registration, _Login, _Hello, _AuthenticatedFrames, _Adverts, _Follows, _Names, Service
):
    """Authenticate users and serve their links."""

    name = "users"
    _log = get_logger("socp_tw.users")

    def __init__(
        self,
        hub: IHub,
        presence: IPresence,
        router: IRouter,
        store: IStore,
        signer: ISigner,
        workers: IWorkers,
        clock=None,
        min_scrypt_n: int = MIN_SCRYPT_N,
        limits: Limits = DEFAULT_LIMITS,
        *,
        user_keys: IUserKeys,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self._hub = IHub(hub)
        self._presence = IPresence(presence)
        self._router = IRouter(router)
        self._store = IStore(store)
        self._signer = ISigner(signer)
        self._workers = IWorkers(workers)
        self._user_keys = IUserKeys(user_keys)
        self._refusals = Aggregated(clock, 60.0)
        self._clock = clock
        self._min_scrypt_n = min_scrypt_n
        self.limiter = LoginLimiter(clock, max_ids=limits.max_login_failure_entries)
        self.limits = limits
        #: ``seen_ids`` of user content accepted here: (type, from, to, ts, sha256(canonical(payload))).
        self._seen = BoundedTTLCache(limits.seen_ids_max, limits.seen_ids_ttl, clock)
        self.counters: Counter[str] = Counter()
        self._links: dict[str, _UserLink] = {}
        #: The signed USER_ADVERTISE of every online user, replayed to each user who comes
        #: online: its bytes, or the signing Deferred while the signature is still being made
        #: (a user arriving in that window must not miss the advertisement).
        self._adverts: dict[str, bytes | Deferred] = {}
        #: Links whose client asked for batched presence (USER_HELLO ``presence: "lists"``), the
        #: changes gathered for their next USER_LIST and its timer (``adverts.py``).
        self._list_links: set[str] = set()
        self._presence_batch: dict[str, tuple[bool, dict]] = {}
        self._presence_call = None
        #: Links in follow mode (USER_HELLO ``presence: "follow"``) and, per followed user id,
        #: the ids of the links that follow it (``follows.py``).
        self._quiet_links: set[str] = set()
        self._followers: dict[str, set[str]] = {}
        #: The links of local users who get the spec's frame per presence event (neither lists
        #: nor follow mode): an event goes to these without a scan of every local user.
        self._event_mode_links: dict[str, ILink] = {}
        self._adverts_pem: dict[str, bytes | Deferred] = {}  # the same, keys as PEM (keymirror)
        self._auth_handlers: dict[str, Callable[[_UserLink, wire.Envelope], Deferred | None]] = {
            "USER_REGISTER": self._register,
            "USER_LOGIN_START": self._login_start,
            "USER_LOGIN_PROOF": self._login_proof,
            "USER_HELLO_CHALLENGE": self._hello_challenge,
            "USER_HELLO": self._hello,
        }
        self._user_frames: dict[str, UserFrameHandler] = {}
        self.register_user_frame("MSG_DIRECT", self._msg_direct)
        self.register_user_frame("LIST_REQUEST", self._list_request)
        self.register_user_frame("PUBKEY_REQUEST", self._pubkey_request)
        self.register_user_frame("USER_SET_META", self._set_meta)
        self.register_user_frame("PRESENCE_FOLLOW", self._follow)
        self._hub.claim(AUTH_FRAMES, self)
        self._presence.add_observer(self)

    # ------------------------------------------------------------ public API

    def register_user_frame(self, frame_type: str, handler: UserFrameHandler) -> None:
        """Handle ``frame_type`` on authenticated user links (the extension point for later frames).

        The handler runs after the ``from`` check; it may return a Deferred (the link's
        next frame waits for it) and raise ``wire.FrameError`` to answer ``ERROR``.
        """
        self._user_frames[frame_type] = handler

    def send_error(
        self, link: ILink, code: str, detail: str, ref: str | None = None, to: str | None = None, **extra: Any
    ) -> None:
        """Send a server-signed ``ERROR {code, detail, msg_ref?, ...extra}`` on a user link; count it.

        Dropped (and counted by the hub) once the connection is past its error budget.
        """
        if not self._hub.allow_error(link, code):
            return
        detail = detail[: self.limits.max_error_detail_chars]
        payload: dict[str, Any] = wire.error_payload(code, detail)
        if ref is not None:
            payload["msg_ref"] = ref
        payload.update(extra)
        self.counters["errors_sent." + code] += 1
        self._log.info(
            "ERROR {code} to user link {link} ({user}): {detail}",
            code=code,
            link=link.link_id,
            user=link.identity or to or "-",
            detail=detail,
        )
        link.send(self._signer.frame("ERROR", link.identity or to or "*", payload))

    def authenticated_key(self, user_id: str) -> str | None:
        """The key (b64u DER) a local user authenticated with, or None if not local."""
        entry = self._presence.lookup(user_id)
        return entry.pubkey if entry is not None and entry.local else None

    # ------------------------------------------------------------ helpers

    def _now(self) -> float:
        return self._clock.seconds()

    def _spend_attempt(self, state: _UserLink) -> None:
        state.auth_attempts += 1
        if state.auth_attempts > MAX_AUTH_ATTEMPTS_PER_LINK:
            self.counters["link_attempts_exhausted"] += 1
            raise wire.RateLimited("too many authentication attempts on this connection; reconnect")

    def _send(self, link: ILink, frame_type: str, to: str, payload: dict[str, Any]) -> None:
        link.send(self._signer.frame(frame_type, to, payload))

    def _issue_nonce(self, state: _UserLink) -> str:
        value = new_nonce()
        state.nonce = _Nonce(value, self._now() + NONCE_TTL)
        return value

    @staticmethod
    def _same_from(envelope: wire.Envelope, user_id: str) -> None:
        if envelope.from_ != user_id:
            raise wire.BadFieldType("payload user_id must equal the envelope 'from'", "user_id")
