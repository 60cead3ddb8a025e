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
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from socp_tw import crypto, keystore, wire
from socp_tw.auth.limiter import LoginLimiter
from socp_tw.content import USER_CONTENT_FIELDS, extract_fields, verify_user_content
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
    Unverified,
    UserNotFound,
)
from socp_tw.limits import DEFAULT_LIMITS, BoundedTTLCache, Limits, check_ts_window
from socp_tw.logs import Aggregated, get_logger
from socp_tw.protocols.links import copies_of, sign_for_all
from socp_tw.services.presence import NameInUse, UserPresence
from socp_tw.services.userkeys import DIFFERS, UserKeys

__all__ = [
    "AUTH_FRAMES",
    "LoginLimiter",
    "UserFrameHandler",
    "UserSide",
]

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
    srp: keystore.SrpServer
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


def _normalised_key_text(text: str) -> str | None:
    """b64u(DER) of a key given in any accepted encoding, or None if it does not load."""
    try:
        return crypto.encode_public_key(crypto.load_public_key(text))
    except crypto.BadKey:
        return None


def _srp_challenge(verifier: str, a_pub: str) -> tuple[keystore.SrpServer, dict]:
    """Worker-pool side of USER_LOGIN_START: parse the verifier, answer A (4096-bit modexps)."""
    srp = keystore.SrpServer(verifier)
    return srp, srp.challenge(a_pub)


def _optional_str(payload: dict[str, Any], name: str, max_len: int) -> str | None:
    if payload.get(name) is None:
        return None
    return wire.require_str(payload, name, max_len=max_len)


# ----------------------------------------------------------------- the service


@implementer(ILinkHandler, IPresenceObserver, IUserFrames)
class UserSide(Service):
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
        min_scrypt_n: int = keystore.MIN_SCRYPT_N,
        limits: Limits = DEFAULT_LIMITS,
        user_keys: IUserKeys | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self._hub = IHub(hub)
        self._presence = IPresence(presence)
        self._router = IRouter(router)
        self._store = IStore(store)
        self._signer = ISigner(signer)
        self._workers = IWorkers(workers)
        self._user_keys = IUserKeys(user_keys) if user_keys is not None else UserKeys()
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

    # ------------------------------------------------------- ILinkHandler

    def frame_received(self, link: ILink, envelope: wire.Envelope) -> None:
        state = self._links.get(link.link_id)
        if state is None:
            # This link is a user link from its first frame on: bind it now so its
            # close reaches us and the per-link state (nonce, login) is dropped.
            state = self._links[link.link_id] = _UserLink(link)
            self._hub.bind(link, self)
        if state.closed:
            return
        if state.busy:
            if len(state.backlog) >= MAX_BACKLOG:
                self.counters["backlog_full"] += 1
                self.send_error(
                    link,
                    "RATE_LIMITED",
                    "too many frames in flight; slow down",
                    ref=envelope.type,
                    to=envelope.from_,
                )
                return
            if not state.backlog:
                state.backlog = deque()
            state.backlog.append(envelope)
            if len(state.backlog) >= BACKLOG_PAUSE:
                self._pause_reading(state)
            return
        self._drain(state, envelope)

    def link_closed(self, link: ILink, reason: str | None) -> None:
        state = self._links.pop(link.link_id, None)
        if state is None:
            return
        state.closed = True
        state.backlog = ()
        state.nonce = state.login = None
        if state.user_id is not None and self._presence.user_offline_local(state.user_id, link):
            self._log.info("User {user} offline ({reason})", user=state.user_id, reason=reason)

    # ------------------------------------------------------------ dispatching

    def _drain(self, state: _UserLink, envelope: wire.Envelope) -> None:
        """Handle ``envelope`` and then the backlog, until a handler has to wait."""
        while True:
            if state.reading_paused and len(state.backlog) <= BACKLOG_PAUSE // 2:
                self._resume_reading(state)
            d = self._handle(state, envelope)
            if d is not None:
                finished: list = []
                d.addBoth(finished.append)
                if not finished:
                    state.busy = True
                    d.addBoth(self._resume, state)
                    return
            if state.closed or not state.backlog:
                state.backlog = ()  # an idle link keeps no deque
                return
            envelope = state.backlog.popleft()

    def _pause_reading(self, state: _UserLink) -> None:
        """Stop reading a link whose backlog is long: its client's writes back up (backpressure)."""
        transport = getattr(state.link, "transport", None)
        if state.reading_paused or not hasattr(transport, "pauseProducing"):
            return
        state.reading_paused = True
        self.counters["reading_paused"] += 1
        transport.pauseProducing()

    def _resume_reading(self, state: _UserLink) -> None:
        state.reading_paused = False
        transport = getattr(state.link, "transport", None)
        if not state.closed and hasattr(transport, "resumeProducing"):
            transport.resumeProducing()

    def _resume(self, _: object, state: _UserLink) -> None:
        state.busy = False
        if not state.closed and state.backlog:
            self._drain(state, state.backlog.popleft())

    def _handle(self, state: _UserLink, envelope: wire.Envelope) -> Deferred | None:
        try:
            d = self._dispatch(state, envelope)
        except Exception:
            self._failed(Failure(), state, envelope)
            return None
        if d is not None:
            d.addErrback(self._failed, state, envelope)
        return d

    def _failed(self, failure: Failure, state: _UserLink, envelope: wire.Envelope) -> None:
        error = failure.value
        if isinstance(error, wire.FrameError):
            self.send_error(state.link, error.code, error.detail, ref=envelope.type, to=envelope.from_)
            return
        self._log.failure(
            "Failed handling {type} on link {link}", failure, type=envelope.type, link=state.link.link_id
        )
        self.send_error(
            state.link,
            "INTERNAL",
            f"the server failed handling {envelope.type}",
            ref=envelope.type,
            to=envelope.from_,
        )

    def _dispatch(self, state: _UserLink, envelope: wire.Envelope) -> Deferred | None:
        frame_type = envelope.type
        if frame_type in ("ERROR", "ACK"):
            self.counters["ignored." + frame_type] += 1  # never answered: no error loops
            return None
        if frame_type == "CTRL_CLOSE":
            state.link.close(1000, "closed at the client's request")
            return None
        if frame_type == "HEARTBEAT":
            return None
        if state.user_id is None:
            handler = self._auth_handlers.get(frame_type)
            if handler is not None:
                return handler(state, envelope)
            if frame_type in self._user_frames:
                raise _NotNow(f"{frame_type} needs an authenticated link: send USER_HELLO first")
            raise _UnknownType(f"frame type {frame_type!r} is not understood here")
        if frame_type in self._auth_handlers:
            raise _NotNow("already authenticated")
        if envelope.from_ != state.user_id:
            self.counters["spoofed_from"] += 1
            self._log.warn(
                "User {user} sent {type} from {claimed}: dropped",
                user=state.user_id,
                type=frame_type,
                claimed=envelope.from_,
            )
            raise _BadFrom(f"'from' must be your own user id {state.user_id}", "from")
        handler = self._user_frames.get(frame_type)
        if handler is None:
            raise _UnknownType(f"frame type {frame_type!r} is not understood here")
        if frame_type in USER_CONTENT_FIELDS:
            self._check_fresh(envelope)
        return handler(state.link, state.user_id, envelope)

    def _check_fresh(self, envelope: wire.Envelope) -> None:
        """Replay protection for user content: ``ts`` inside the window, and never the same frame twice.

        A frame outside ``±ts_window`` gets ``BAD_TS``; one identical to a frame accepted in the
        last ``seen_ids_ttl`` seconds (same from, to, ts and payload) gets ``REPLAY``.  Since
        ``seen_ids_ttl >= 2 * ts_window``, a replay is caught by one check or the other.  The
        frame is remembered before it is handled, so one that failed cannot be replayed either.
        """
        check_ts_window(envelope.ts, int(self._now() * 1000), self.limits.ts_window_ms)
        digest = hashlib.sha256(wire.canonical(envelope.payload)).digest()
        if not self._seen.add((envelope.type, envelope.from_, envelope.to, envelope.ts, digest)):
            self.counters["replayed"] += 1
            self._log.warn(
                "User {user} replayed a {type} frame (ts {ts}): dropped",
                user=envelope.from_,
                type=envelope.type,
                ts=envelope.ts,
            )
            raise _Replay(f"this {envelope.type} frame was already received; a new frame needs a new ts")

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
        value = keystore.new_nonce()
        state.nonce = _Nonce(value, self._now() + NONCE_TTL)
        return value

    @staticmethod
    def _same_from(envelope: wire.Envelope, user_id: str) -> None:
        if envelope.from_ != user_id:
            raise wire.BadFieldType("payload user_id must equal the envelope 'from'", "user_id")

    # ------------------------------------------------------------ registration

    def _register(self, state: _UserLink, envelope: wire.Envelope) -> Deferred:
        self._spend_attempt(state)
        payload = envelope.payload
        user_id = wire.require_str(payload, "user_id", max_len=128)
        pubkey_text = wire.require_str(payload, "pubkey", max_len=MAX_KEY_TEXT)
        privkey_store = wire.require_str(payload, "privkey_store", max_len=MAX_BLOB_TEXT)
        pake_password = wire.require_str(payload, "pake_password", max_len=MAX_BLOB_TEXT)
        if not wire.is_uuid4(user_id):
            raise wire.BadUUID("user_id must be a UUID v4", "user_id")
        self._same_from(envelope, user_id)
        key = crypto.load_public_key(pubkey_text)  # BadKey: BAD_KEY
        if not crypto.verify_payload(key, payload, envelope.sig):
            raise wire.InvalidSig("USER_REGISTER must be signed by the key being registered")
        try:
            keystore.parse_keystore(privkey_store)
        except keystore.KeystoreError as e:
            raise wire.BadFieldType(f"privkey_store: {e}", "privkey_store") from None
        try:
            record = keystore.parse_verifier(pake_password)
        except keystore.KeystoreError as e:
            raise wire.BadFieldType(f"pake_password: {e}", "pake_password") from None
        if record.params.n < self._min_scrypt_n:
            raise wire.BadFieldType(
                f"pake_password: scrypt n must be at least {self._min_scrypt_n} on this server",
                "pake_password",
            )
        pubkey = crypto.encode_public_key(key)
        pin = self._user_keys.lookup(user_id)
        if pin is not None and pin.home_server is not None:
            # Known from another server's gossip: that server is authoritative for the id.
            if self._user_keys.check(user_id, pubkey) == DIFFERS:
                self._user_key_refused(user_id, pin, pubkey, "USER_REGISTER", state.link)
            self.send_error(
                state.link,
                "NAME_IN_USE",
                f"user id {user_id} belongs to server {pin.home_server}",
                ref="USER_REGISTER",
                to=user_id,
                user_id=user_id,
            )
            return None
        d = self._store.add_user(user_id, pubkey, privkey_store, pake_password, {})
        d.addCallback(self._registered, state, user_id, pubkey)
        return d

    def _registered(self, added: bool, state: _UserLink, user_id: str, pubkey: str) -> None:
        if not added:
            self.send_error(
                state.link,
                "NAME_IN_USE",
                f"user id {user_id} is already known on this server",
                ref="USER_REGISTER",
                to=user_id,
                user_id=user_id,
            )
            return
        self.counters["registered"] += 1
        self._user_keys.pin_local(user_id, pubkey, registered=True)
        self._log.info("User {user} registered from {peer}", user=user_id, peer=state.link.peer)
        self._send(state.link, "ACK", user_id, {"msg_ref": "USER_REGISTER", "user_id": user_id})

    # ------------------------------------------------------------ login (SRP-6a)

    def _login_start(self, state: _UserLink, envelope: wire.Envelope) -> Deferred | None:
        self._spend_attempt(state)
        state.login = None  # a new start replaces the pending attempt
        user_id = wire.require_uuid(envelope.payload, "user_id")
        a_pub = wire.require_str(envelope.payload, "A", max_len=1024)
        self._same_from(envelope, user_id)
        wait = self.limiter.retry_after(user_id)
        if wait:
            self.counters["login_rate_limited"] += 1
            raise wire.RateLimited(f"retry after {wait} s")
        d = self._store.get_user(user_id)
        d.addCallback(self._login_user_loaded, state, user_id, a_pub)
        return d

    def _login_user_loaded(self, row: dict | None, state: _UserLink, user_id: str, a_pub: str):
        if row is None or not row.get("pake_password"):
            self.send_error(
                state.link,
                "USER_NOT_FOUND",
                f"no user {user_id} is registered on this server",
                ref="USER_LOGIN_START",
                to=user_id,
                user_id=user_id,
            )
            return None
        d = self._workers.run(_srp_challenge, row["pake_password"], a_pub)
        d.addCallbacks(
            self._login_challenged,
            self._login_challenge_failed,
            callbackArgs=(state, user_id, row["privkey_store"]),
            errbackArgs=(user_id,),
        )
        return d

    def _login_challenged(self, result, state: _UserLink, user_id: str, privkey_store: str) -> None:
        srp, challenge = result
        if state.closed:
            return
        state.login = _PendingLogin(user_id, srp, privkey_store, self._now() + LOGIN_TTL)
        self._send(state.link, "USER_LOGIN_CHALLENGE", user_id, {"user_id": user_id, **challenge})

    def _login_challenge_failed(self, failure: Failure, user_id: str) -> None:
        if failure.check(keystore.CorruptKeystore):
            self._log.error(
                "Stored verifier of user {user} is unusable: {why}", user=user_id, why=str(failure.value)
            )
            raise _LoginFailed("this account's stored verifier is unusable; contact the server operator")
        failure.trap(keystore.LoginError)
        raise _LoginFailed(f"bad A: {failure.value}")

    def _login_proof(self, state: _UserLink, envelope: wire.Envelope) -> None:
        pending, state.login = state.login, None  # one proof per challenge, whatever the outcome
        user_id = wire.require_uuid(envelope.payload, "user_id")
        m1 = wire.require_str(envelope.payload, "M1", max_len=1024)
        if pending is None or pending.user_id != user_id:
            raise _LoginFailed("no login attempt in progress for this user id: send USER_LOGIN_START")
        if self._now() > pending.expires:
            raise _LoginFailed("the login attempt expired: send USER_LOGIN_START again")
        wait = self.limiter.retry_after(user_id)
        if wait:  # locked by failures elsewhere since this attempt started
            self.counters["login_rate_limited"] += 1
            raise wire.RateLimited(f"retry after {wait} s")
        try:
            m2 = pending.srp.verify(m1)
        except keystore.LoginError:
            failures, lock = self.limiter.failure(user_id)
            self.counters["login_failed"] += 1
            self._log.info(
                "Failed login for user {user} from {peer} ({failures} in a row, locked {lock} s)",
                user=user_id,
                peer=state.link.peer,
                failures=failures,
                lock=lock,
            )
            raise _LoginFailed("wrong password") from None
        self.limiter.success(user_id)
        self.counters["login_ok"] += 1
        self._log.info("User {user} logged in with password from {peer}", user=user_id, peer=state.link.peer)
        nonce = self._issue_nonce(state)
        self._send(
            state.link,
            "USER_LOGIN_OK",
            user_id,
            {"user_id": user_id, "M2": m2, "privkey_store": pending.privkey_store, "nonce": nonce},
        )

    # ------------------------------------------------------------ hello

    def _hello_challenge(self, state: _UserLink, envelope: wire.Envelope) -> None:
        self._spend_attempt(state)
        nonce = self._issue_nonce(state)
        self._send(
            state.link,
            "USER_HELLO_NONCE",
            envelope.from_,
            {"nonce": nonce, "server_id": self._signer.server_id},
        )

    def _hello(self, state: _UserLink, envelope: wire.Envelope) -> Deferred:
        presented, state.nonce = state.nonce, None  # consumed by every hello, accepted or not
        self._spend_attempt(state)
        payload = envelope.payload
        user_id = envelope.from_
        pubkey_text = wire.require_str(payload, "pubkey", max_len=MAX_KEY_TEXT)
        client = _optional_str(payload, "client", MAX_CLIENT_NAME)
        enc_text = _optional_str(payload, "enc_pubkey", MAX_KEY_TEXT)
        nonce = _optional_str(payload, "nonce", 256)
        proof = _optional_str(payload, "proof", 2048)
        key = crypto.load_public_key(pubkey_text)
        meta: dict[str, Any] = {}
        if client is not None:
            meta["client"] = client
        if enc_text is not None:
            try:
                meta["enc_pubkey"] = crypto.encode_public_key(crypto.load_public_key(enc_text))
            except crypto.BadKey as e:
                raise crypto.BadKey(f"enc_pubkey: {e.detail}", "enc_pubkey") from None
        claim = _HelloClaim(user_id, key, crypto.encode_public_key(key), meta, nonce, proof, presented)
        d = self._store.get_user(user_id)
        d.addCallback(self._hello_user_loaded, state, claim)
        return d

    def _proof_problem(self, claim: _HelloClaim, key) -> str | None:
        """Why ``claim`` fails §6.1 (nonce + proof under ``key``), or None if it passes."""
        if claim.nonce is None or claim.proof is None:
            return "nonce and proof are both required (ask for a nonce with USER_HELLO_CHALLENGE)"
        presented = claim.presented
        if presented is None or not hmac.compare_digest(
            presented.value.encode("utf-8"), claim.nonce.encode("utf-8", "replace")
        ):
            return "nonce unknown on this connection, or already used"
        if self._now() > presented.expires:
            return "nonce expired: ask for a new one with USER_HELLO_CHALLENGE"
        try:
            preimage = keystore.hello_proof_preimage(claim.nonce, claim.user_id, self._signer.server_id)
        except keystore.KeystoreError:
            return "nonce or user id contains '|'"
        if not crypto.pss_verify(key, preimage, claim.proof):
            return "proof does not verify"
        return None

    def _hello_user_loaded(self, row: dict | None, state: _UserLink, claim: _HelloClaim):
        if state.closed:
            return None
        pin = self._user_keys.lookup(claim.user_id)
        if pin is not None and pin.home_server is not None:
            return self._hello_of_remote_user(state, claim, pin)
        registered = row is not None and row.get("pake_password") is not None
        proven = False
        if registered:
            if claim.pubkey != row["pubkey"] and claim.pubkey != _normalised_key_text(row["pubkey"]):
                return self._auth_failed(state, claim, "pubkey is not the key registered for this user id")
        if registered or claim.nonce is not None or claim.proof is not None:
            problem = self._proof_problem(claim, claim.key)
            if problem is not None:
                return self._auth_failed(state, claim, problem)
            proven = True
        if not proven:
            entry = self._presence.lookup(claim.user_id)
            if entry is not None and not entry.local:
                # An unproven claim must not move a user who is online elsewhere.
                self.send_error(
                    state.link,
                    "NAME_IN_USE",
                    f"user {claim.user_id} is online on server {entry.server_id}",
                    ref="USER_HELLO",
                    to=claim.user_id,
                )
                return None
        if registered:
            return self._go_online(state, claim, "registered")
        if row is not None:
            if claim.pubkey != row["pubkey"] and claim.pubkey != _normalised_key_text(row["pubkey"]):
                return self._key_differs(state, claim)
            return self._go_online(state, claim, "pinned")
        d = self._store.pin_user_key(claim.user_id, claim.pubkey)
        d.addCallback(self._pinned, state, claim)
        return d

    def _hello_of_remote_user(self, state: _UserLink, claim: _HelloClaim, pin: Any) -> None:
        """A hello for an id whose key another server's gossip pinned here: the same key only,
        and proven (nonce + proof): a public key alone must not move someone's id here."""
        if self._user_keys.check(claim.user_id, claim.pubkey) == DIFFERS:
            self._user_key_refused(claim.user_id, pin, claim.pubkey, "USER_HELLO", state.link)
            return self._key_differs(state, claim)
        problem = self._proof_problem(claim, claim.key)
        if problem is not None:
            return self._auth_failed(
                state, claim, f"user {claim.user_id} is known from server {pin.home_server}: {problem}"
            )
        return self._go_online(state, claim, f"key proven, pinned from server {pin.home_server}")

    def _user_key_refused(self, user_id: str, pin: Any, offered: str, source: str, link: ILink) -> None:
        """A key other than the pinned one for ``user_id``: refused and logged at error level,
        once a minute per user (docs/SECURITY.md says how an operator lifts a pin)."""
        self.counters["user_key_refused"] += 1
        count = self._refusals.hit(user_id)
        if count is not None:
            self._log.error(
                "REFUSED changed key for user {user} ({source} from {peer}): pinned {pinned} ({where}),"
                " offered {offered} ({count} in the last minute)",
                user=user_id,
                source=source,
                peer=link.peer,
                pinned=pin.fingerprint,
                where=f"home server {pin.home_server}" if pin.home_server else "here",
                offered=crypto.fingerprint(offered),
                count=count,
            )

    def _pinned(self, pinned: bool, state: _UserLink, claim: _HelloClaim) -> None:
        if not pinned:  # registered or pinned by another connection meanwhile
            self._key_differs(state, claim)
            return
        self._user_keys.pin_local(claim.user_id, claim.pubkey, registered=False)
        self.counters["tofu_pinned"] += 1
        self._log.info(
            "Pinned the key of user {user} on first use ({fp})",
            user=claim.user_id,
            fp=crypto.fingerprint(claim.key),
        )
        self._go_online(state, claim, "first use")

    def _key_differs(self, state: _UserLink, claim: _HelloClaim) -> None:
        self.counters["tofu_key_mismatch"] += 1
        pin = self._user_keys.lookup(claim.user_id)
        if pin is not None and pin.home_server is None:
            self._user_key_refused(claim.user_id, pin, claim.pubkey, "USER_HELLO", state.link)
        self.send_error(
            state.link,
            "BAD_KEY",
            "key differs from the key pinned for this user",
            ref="USER_HELLO",
            to=claim.user_id,
        )

    def _auth_failed(self, state: _UserLink, claim: _HelloClaim, why: str) -> None:
        self.counters["auth_failed"] += 1
        self.send_error(state.link, "AUTH_FAILED", why, ref="USER_HELLO", to=claim.user_id)

    def _go_online(self, state: _UserLink, claim: _HelloClaim, how: str) -> None:
        if state.closed:
            return
        link = state.link
        try:
            self._presence.user_online_local(claim.user_id, claim.pubkey, claim.meta, link)
        except NameInUse:
            self.counters["name_in_use"] += 1
            self.send_error(
                link,
                "NAME_IN_USE",
                f"user {claim.user_id} is already connected to this server",
                ref="USER_HELLO",
                to=claim.user_id,
            )
            return
        state.user_id = claim.user_id
        state.login = None
        link.role = "user"
        link.identity = claim.user_id
        self._hub.bind(link, self)
        self.counters["hello_ok"] += 1
        self._log.info(
            "User {user} online from {peer} on link {link} ({how})",
            user=claim.user_id,
            peer=link.peer,
            link=link.link_id,
            how=how,
        )
        self._send(
            link,
            "ACK",
            claim.user_id,
            {
                "msg_ref": "USER_HELLO",
                "server_id": self._signer.server_id,
                "server_pub": self._signer.public_key_text,
            },
        )
        for user_id, frame in list(self._adverts.items()):
            if user_id != claim.user_id:
                link.send(copies_of(frame, 1)[0])

    # ------------------------------------------------------------ authenticated frames

    def _msg_direct(self, link: ILink, sender: str, envelope: wire.Envelope) -> Deferred | None:
        payload = envelope.payload
        recipient = envelope.to
        if not wire.is_uuid(recipient):
            raise wire.BadUUID("MSG_DIRECT 'to' must be the recipient's user id", "to")
        fields = extract_fields("MSG_DIRECT", payload)
        sender_pub = wire.require_str(payload, "sender_pub", max_len=MAX_KEY_TEXT)
        own = self.authenticated_key(sender)
        if own is None or (sender_pub != own and _normalised_key_text(sender_pub) != own):
            raise wire.InvalidSig("sender_pub is not the key you authenticated with")
        key = crypto.load_public_key(sender_pub)
        preimage = crypto.dm_preimage(fields["ciphertext"], sender, recipient, envelope.ts)

        def conforming() -> bool:  # the preimage conforming clients sign
            return crypto.pss_verify(key, preimage, fields["content_sig"])

        state = self._links.get(link.link_id)
        if state is not None and state.sign_ahead:
            # Sign while checking: the pool starts the signature before the reactor checks
            # the content_sig, and the frame is dropped unsent if the check fails.  A link
            # loses this after one failure, so it can cost at most one wasted signature.
            try:
                self._route(
                    link, "MSG_DIRECT", recipient, fields, envelope.ts, sender, sender_pub, conforming
                )
                return None
            except Unverified:
                state.sign_ahead = False
                self.counters["sign_ahead_lost"] += 1
        elif conforming():
            self._route(link, "MSG_DIRECT", recipient, fields, envelope.ts, sender, sender_pub)
            return None
        # Other preimage variants cost up to 8 more verifications: off the reactor.
        d = self._workers.run(
            verify_user_content, "MSG_DIRECT", fields, sender, recipient, envelope.ts, sender_pub
        )
        d.addCallback(
            lambda _: self._route(link, "MSG_DIRECT", recipient, fields, envelope.ts, sender, sender_pub)
        )
        return d

    def _route(
        self,
        link: ILink,
        kind: str,
        recipient: str,
        fields: dict[str, Any],
        ts: int,
        sender: str,
        sender_pub: str,
        verified: Callable[[], bool] | None = None,
    ) -> None:
        """Hand a user's frame to the router; USER_NOT_FOUND if nobody hosts ``recipient``.
        :class:`Unverified` (``verified`` failed) is the caller's to handle."""
        try:
            self._router.route(kind, recipient, fields, ts, sender, sender_pub, verified)
        except UserNotFound:
            self.send_error(
                link, "USER_NOT_FOUND", f"user {recipient} is not online", ref=kind, user_id=recipient, ts=ts
            )
            return
        # Counted, not logged: a log event per message costs more than the routing itself.
        self.counters["routed." + kind] += 1

    def _list_request(self, link: ILink, user_id: str, envelope: wire.Envelope) -> None:
        users = self._presence.online_users()
        self._send(link, "LIST_RESPONSE", user_id, {"online_users": users, "users": list(users)})

    def _pubkey_request(self, link: ILink, user_id: str, envelope: wire.Envelope) -> None:
        wanted = wire.require_uuid(envelope.payload, "user_id")
        entry = self._presence.lookup(wanted)
        if entry is None:
            self.send_error(
                link, "USER_NOT_FOUND", f"user {wanted} is not online", ref="PUBKEY_REQUEST", user_id=wanted
            )
            return
        self._send(
            link,
            "PUBKEY_RESPONSE",
            user_id,
            {"user_id": entry.user_id, "pubkey": entry.pubkey, "server_id": entry.server_id},
        )

    # ------------------------------------------------------------ IPresenceObserver

    def user_online(self, entry: UserPresence) -> None:
        meta = {**entry.meta, "pubkey": entry.pubkey}
        payload = {
            "user_id": entry.user_id,
            "server_id": entry.server_id,
            "pubkey": entry.pubkey,
            "meta": meta,
        }
        frame = self._relay("USER_ADVERTISE", payload, entry.user_id)
        if entry.user_id in self._adverts or len(self._adverts) < MAX_CACHED_ADVERTS:
            self._adverts[entry.user_id] = frame

        def remember(data: bytes | None) -> bytes | None:
            if self._adverts.get(entry.user_id) is frame:  # not withdrawn or re-advertised since
                if isinstance(data, bytes):
                    self._adverts[entry.user_id] = data
                else:
                    del self._adverts[entry.user_id]
            return data

        frame.addCallback(remember)

    def user_offline(self, entry: UserPresence) -> None:
        self._adverts.pop(entry.user_id, None)
        self._relay("USER_REMOVE", {"user_id": entry.user_id, "server_id": entry.server_id}, entry.user_id)

    def _relay(self, frame_type: str, payload: dict[str, Any], about: str) -> Deferred:
        """Sign one frame and send the same bytes to every local user but ``about``."""
        links = [e.link for e in self._presence.local_entries() if e.user_id != about]
        frame = sign_for_all(self._signer, self._log, frame_type, payload, links)
        self.counters["relayed." + frame_type] += len(links)
        return frame  # fires with the frame's bytes, or None if signing failed
