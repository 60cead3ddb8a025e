"""The protocol logic of ``socp-client``: register, log in, list, send and receive DMs.

:class:`ClientSession` is independent of the transport: the connection layer hands it
a *link* (anything with ``send(bytes)`` and ``close(code, reason)``) and the parsed
frames it receives; the console calls its commands.  It prints through a *ui*
(``show(text)``, ``ask_password(prompt)``).

Trust:

- the server: its key comes in the ``USER_HELLO`` ACK (``server_pub``) and is pinned
  per server URL on first use; a different key later aborts the login loudly.  Every
  frame the server sends after the hello must verify with it; before the first hello
  with a server (no pin yet) the login frames cannot be checked and are taken as is.
- other users: keys are pinned on first contact (first DM sent to or received from
  them); a DM whose verified signature comes from a different key is rejected, and
  ``/tell`` refuses to encrypt to a changed key, until the user runs ``/trust``.
- incoming DMs are shown only after: server signature, addressed to us, content_sig
  valid for ``sender`` (any preimage variant of PROTOCOL §2), sender key matches the
  pin, and decryption succeeds.  Anything else prints a ``[WARNING] rejected DM`` line,
  never the text.  Public-channel messages (``/all``) get the same checks, with the
  public content_sig preimage, and are shown once each as ``[public] <sender>: <text>``.

The public channel (docs/PUBLIC-CHANNEL.md): the server pushes its membership (ids and
keys) in ``PUBLIC_CHANNEL_UPDATED`` frames and our group-key share in
``PUBLIC_CHANNEL_KEY_SHARE``; ``/all`` encrypts and signs one ``MSG_PUBLIC_CHANNEL`` per
member on the workers.

Private-key work (key generation, scrypt, signing, decryption) runs on ``workers``;
timers use the injected ``clock``.
"""

from __future__ import annotations

import re
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall

from socp_tw import __version__, crypto, keystore, wire
from socp_tw.client.console import one_line, printable
from socp_tw.client.files import STALL_TIMEOUT, FileTransfers
from socp_tw.client.pins import CHANGED, NEW, PinStore
from socp_tw.logs import get_logger
from socp_tw.protocols.links import OrderedSender

_log = get_logger("socp_tw.client.session")

CLIENT_NAME = f"socp-tw/{__version__}"
REPLY_TIMEOUT = 30.0
PUBKEY_TIMEOUT = 10.0
MIN_PASSWORD_CHARS = 8
MAX_RELOGIN_FAILURES = 5
MAX_LIST_LOOKUPS = 100

# Multi-part DMs (our client's convention, docs/CLIENT.md): a header line inside the
# plaintext of every part: "[SOCP-PART <index>/<count> id=<16 hex>]\n" (index from 1).
PART_MAGIC = "[SOCP-PART "
PART_RE = re.compile(r"\[SOCP-PART ([1-9][0-9]{0,2})/([1-9][0-9]{0,2}) id=([0-9a-f]{16})\]\n")
PART_HEADER_MAX = 40
PART_TEXT_BYTES = crypto.OAEP_MAX_PLAINTEXT - PART_HEADER_MAX
MAX_PARTS = 64
MAX_DM_BYTES = MAX_PARTS * PART_TEXT_BYTES
REASSEMBLY_TIMEOUT = 60.0
MAX_PENDING_PER_SENDER = 8
MAX_PENDING_TOTAL = 64
_MAX_CIPHERTEXT_CHARS = 1024  # one RSA-4096 block is 683 b64u characters
MAX_PUBLIC_SEEN = 4096  # public-channel frames remembered to show each message once
MAX_PUBLIC_MEMBERS = 100_000
MAX_SENT_DMS = 1000  # DMs remembered to name the one a delivery failure is about
SENT_DM_TTL = 600.0  # ... for at most this many seconds
PREVIEW_CHARS = 30  # of a failed DM's text shown in its [FAILED] line


class ServerError(Exception):
    """The server answered a request with ``ERROR {code, detail}``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class RequestFailed(Exception):
    """A request could not complete (timeout, lost connection, bad answer); ``str`` says why."""


class NotConnected(RequestFailed):
    """There is no open connection to the server."""


@dataclass
class _Waiter:
    frame_type: str
    ref: str
    deferred: Deferred
    match: Callable[[wire.Envelope], bool] | None = None
    timer: IDelayedCall | None = None


@dataclass
class _Partial:
    sender: str
    msg_id: str
    count: int
    parts: dict[int, str] = field(default_factory=dict)
    timer: IDelayedCall | None = None
    public: bool = False  # a public-channel message (/all), not a DM


@dataclass(eq=False)
class SentDM:
    """One ``/tell`` (all its parts): what a ``[FAILED]`` line says of it."""

    recipient: str
    preview: str  # the start of the text, escaped for one line
    sent_at: float  # clock seconds
    parts: list[int] = field(default_factory=list)  # the ts of each MSG_DIRECT
    reported: bool = False  # its [FAILED] line was shown (once per message, not per part)


class SentDMs:
    """The DMs sent lately, found by (recipient, ts) of any of their parts: the server names
    those two in ``ERROR {msg_ref: MSG_DIRECT, user_id, ts}`` when it cannot deliver one.
    Bounded: the last :data:`MAX_SENT_DMS` messages, none older than :data:`SENT_DM_TTL` s."""

    def __init__(self, clock: Any, limit: int = MAX_SENT_DMS, ttl: float = SENT_DM_TTL) -> None:
        self._clock = clock
        self._limit = limit
        self._ttl = ttl
        self._messages: deque[SentDM] = deque()
        self._by_part: dict[tuple[str, int], SentDM] = {}

    def __len__(self) -> int:
        return len(self._messages)

    def add(self, recipient: str, text: str) -> SentDM:
        """Remember a DM about to be sent; then :meth:`add_part` for each of its frames."""
        self._expire()
        message = SentDM(recipient, one_line(text, PREVIEW_CHARS + 1), self._clock.seconds())
        self._messages.append(message)
        while len(self._messages) > self._limit:
            self._forget(self._messages.popleft())
        return message

    def add_part(self, message: SentDM, ts: int) -> None:
        message.parts.append(ts)
        self._by_part[(message.recipient, ts)] = message

    def find(self, recipient: str, ts: object) -> SentDM | None:
        """The DM one of whose parts went to ``recipient`` with ``ts``, if still remembered."""
        self._expire()
        if type(ts) is not int:
            return None
        return self._by_part.get((recipient, ts))

    def _forget(self, message: SentDM) -> None:
        for ts in message.parts:
            if self._by_part.get((message.recipient, ts)) is message:
                del self._by_part[(message.recipient, ts)]

    def _expire(self) -> None:
        cutoff = self._clock.seconds() - self._ttl
        while self._messages and self._messages[0].sent_at < cutoff:
            self._forget(self._messages.popleft())


def _signed_frame(key: RSAPrivateKey, ftype: str, from_: str, to: str, ts: int, payload: dict) -> bytes:
    return wire.encode_frame(ftype, from_, to, ts, payload, crypto.sign_payload(key, payload))


def _dm_frame(
    key: RSAPrivateKey,
    recipient_key: RSAPublicKey,
    sender_pub: str,
    from_: str,
    to: str,
    ts: int,
    plain: bytes,
) -> bytes:
    """One MSG_DIRECT: OAEP to the recipient, content_sig over the §2 DM preimage, transport sig."""
    ciphertext = crypto.oaep_encrypt(recipient_key, plain)
    content_sig = crypto.sign_content(key, crypto.dm_preimage(ciphertext, from_, to, ts))
    payload = {"ciphertext": ciphertext, "sender_pub": sender_pub, "content_sig": content_sig}
    return _signed_frame(key, "MSG_DIRECT", from_, to, ts, payload)


def _public_frame(
    key: RSAPrivateKey,
    recipient_pub: str,
    sender_pub: str,
    from_: str,
    to: str,
    ts: int,
    plain: bytes,
) -> bytes:
    """One member's MSG_PUBLIC_CHANNEL: OAEP to that member, content_sig over the §2 public
    preimage (``ciphertext + from + ts``), transport sig.  Runs on the workers."""
    ciphertext = crypto.oaep_encrypt(crypto.load_public_key(recipient_pub), plain)
    content_sig = crypto.sign_content(key, crypto.public_preimage(ciphertext, from_, ts))
    payload = {"ciphertext": ciphertext, "sender_pub": sender_pub, "content_sig": content_sig}
    return _signed_frame(key, "MSG_PUBLIC_CHANNEL", from_, to, ts, payload)


def _seal(key: RSAPrivateKey, password: str, user_id: str, params: keystore.ScryptParams) -> tuple[str, str]:
    return (
        keystore.seal_private_key(key, password, params=params),
        keystore.make_verifier(user_id, password, params=params),
    )


def encode_dm_parts(text: str, msg_id: str | None = None) -> list[bytes]:
    """The plaintext blocks of a DM: the text itself if it fits one OAEP block, else parts
    with a ``[SOCP-PART i/n id=…]`` header.  ``ValueError`` over :data:`MAX_DM_BYTES`."""
    raw = text.encode("utf-8")
    if len(raw) <= crypto.OAEP_MAX_PLAINTEXT and not text.startswith(PART_MAGIC):
        return [raw]
    pieces = crypto.split_text(text, PART_TEXT_BYTES)
    if len(pieces) > MAX_PARTS:
        raise ValueError(f"the message is {len(raw)} bytes; the limit is {MAX_DM_BYTES}")
    msg_id = msg_id or secrets.token_hex(8)
    count = len(pieces)
    return [
        f"[SOCP-PART {i}/{count} id={msg_id}]\n".encode() + piece.encode("utf-8")
        for i, piece in enumerate(pieces, 1)
    ]


class ClientSession:
    """One user's session with one server, across reconnections."""

    def __init__(
        self,
        ui: Any,
        pins: PinStore,
        server_url: str,
        *,
        workers: Any,
        clock: Any,
        password: str | None = None,
        scrypt_params: keystore.ScryptParams = keystore.DEFAULT_SCRYPT,
        key_factory: Callable[[], RSAPrivateKey] = crypto.generate_private_key,
        reply_timeout: float = REPLY_TIMEOUT,
        pubkey_timeout: float = PUBKEY_TIMEOUT,
        reassembly_timeout: float = REASSEMBLY_TIMEOUT,
        download_dir: str = ".",
        file_stall_timeout: float = STALL_TIMEOUT,
    ) -> None:
        self.ui = ui
        self.pins = pins
        self.server_url = server_url
        self._workers = workers
        self._clock = clock
        self._file_password = password
        self._scrypt_params = scrypt_params
        self._key_factory = key_factory
        self._reply_timeout = reply_timeout
        self._pubkey_timeout = pubkey_timeout
        self._reassembly_timeout = reassembly_timeout
        self.quit_hook: Callable[[], Any] | None = None

        self._link: Any = None
        self._sender: OrderedSender | None = None
        self._waiters: list[_Waiter] = []
        self.user_id: str | None = None
        self._key: RSAPrivateKey | None = None
        self._pub: str | None = None
        self.logged_in = False  # the hello was accepted on the current link
        self._want_online = False  # we logged in once: log in again after a reconnect
        self._auth_busy = False
        self._relogin_failures = 0
        self.server_id: str | None = None
        self._server_key: RSAPublicKey | None = None
        pinned = pins.server(server_url)
        if pinned is not None:
            self.server_id, key_text = pinned
            self._server_key = crypto.load_public_key(key_text)

        self.presence: dict[str, str] = {}  # user_id -> hosting server id (from relayed gossip)
        self._seen_keys: dict[str, str] = {}  # user_id -> latest key the network showed us
        self._warned_keys: set[tuple[str, str]] = set()
        self._inbox: Deferred = succeed(None)  # serialises decryption so DMs show in arrival order
        self._partials: OrderedDict[tuple[str, str], _Partial] = OrderedDict()
        self._completed: deque[tuple[str, str]] = deque(maxlen=256)
        # The public channel as our server last told us (None: not told yet on this link).
        self.public_version: int | None = None
        self.public_members: dict[str, str] = {}  # member id -> key
        self.public_key_share: dict[str, Any] | None = None  # {version, creator, wrapped}
        self._public_seen: deque[tuple[str, str]] = deque(maxlen=MAX_PUBLIC_SEEN)
        self.sent_dms = SentDMs(clock)
        self.counters: dict[str, int] = {}
        self._change_waiters: list[tuple[Deferred, IDelayedCall]] = []
        self._generation = 0  # bumped on every connect and disconnect
        self._shut_down = False
        self.files = FileTransfers(self, download_dir, stall_timeout=file_stall_timeout)

    # ------------------------------------------------------------ helpers

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def show(self, text: str) -> None:
        self.ui.show(text)

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

    def _password(self, prompt: str) -> Deferred:
        if self._file_password is not None:
            return succeed(self._file_password)
        return self.ui.ask_password(prompt)

    def _passwords_not_asked(self, count: int = 1) -> None:
        """A command ends without its ``count`` password prompts: tell the ui, whose script may
        carry the answers (``Console.passwords_not_asked``).  Nothing with ``--password-file``."""
        skip = getattr(self.ui, "passwords_not_asked", None)
        if self._file_password is None and skip is not None:
            skip(count)

    def _send(
        self,
        ftype: str,
        to: str,
        payload: dict[str, Any],
        *,
        key: RSAPrivateKey | None = None,
        from_: str | None = None,
        sign: bool = True,
    ) -> Deferred:
        """Queue a frame, transport-signed on the workers by ``key`` (default: ours) when ``sign``."""
        if self._sender is None:
            raise NotConnected(f"not connected to {self.server_url}")
        key = key or self._key
        from_ = from_ or self.user_id or "*"
        ts = self._now_ms()
        if sign and key is not None:
            frame = self._workers.run(_signed_frame, key, ftype, from_, to, ts, payload)
        else:
            frame = succeed(wire.encode_frame(ftype, from_, to, ts, payload, ""))
        self._sender.send(frame)
        return frame

    def _expect(
        self,
        frame_type: str,
        ref: str,
        *,
        match: Callable[[wire.Envelope], bool] | None = None,
        timeout: float | None = None,
    ) -> Deferred:
        """A Deferred for the next ``frame_type`` answering request ``ref`` (or its ERROR)."""
        waiter = _Waiter(frame_type, ref, Deferred(), match)
        waiter.timer = self._clock.callLater(
            self._reply_timeout if timeout is None else timeout, self._waiter_timeout, waiter
        )
        self._waiters.append(waiter)
        return waiter.deferred

    def _settle(self, waiter: _Waiter, result: object, *, error: bool = False) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if waiter.timer is not None and waiter.timer.active():
            waiter.timer.cancel()
        if error:
            waiter.deferred.errback(result)
        else:
            waiter.deferred.callback(result)

    def _waiter_timeout(self, waiter: _Waiter) -> None:
        waiter.timer = None
        self._settle(waiter, RequestFailed(f"no answer to {waiter.ref} from the server"), error=True)

    def _same_link(self, generation: int) -> None:
        """After waiting on a thread: fail if the link changed meanwhile (nonces are per link)."""
        if generation != self._generation:
            raise NotConnected(f"the connection to {self.server_url} changed during the login")

    def _fail_waiters(self, error: Exception) -> None:
        for waiter in list(self._waiters):
            self._settle(waiter, error, error=True)

    def _changed(self) -> None:
        """Wake the commands waiting for the connection or the login (see :meth:`_wait_until`)."""
        waiters, self._change_waiters = self._change_waiters, []
        for waiter, timer in waiters:
            if timer.active():
                timer.cancel()
            if not waiter.called:
                waiter.callback(None)

    async def _wait_until(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until ``condition()``: a command typed (or piped) before the
        connection is up, or while reconnecting, runs once it is rather than failing at once."""
        deadline = self._clock.seconds() + timeout
        while not condition():
            remaining = deadline - self._clock.seconds()
            if remaining <= 0 or self._shut_down:
                return False
            waiter: Deferred = Deferred()
            timer = self._clock.callLater(remaining, lambda w=waiter: w.called or w.callback(None))
            self._change_waiters.append((waiter, timer))
            await waiter
        return True

    async def _require_online(self) -> bool:
        if not self.logged_in and self._want_online:
            await self._wait_until(lambda: self.logged_in or not self._want_online, self._reply_timeout)
        if self.logged_in:
            return True
        if self._want_online:
            self.show(
                f"[ERROR] not connected to {self.server_url} right now (reconnecting); try again shortly"
            )
        else:
            self.show("[ERROR] not logged in: use /register or /login <user_uuid>")
        return False

    # ------------------------------------------------------- connection events

    def connection_made(self, link: Any) -> None:
        """A WebSocket to the server is open."""
        self._link = link
        self._generation += 1
        self._sender = OrderedSender(link.send, "server")
        self.logged_in = False
        self.show(f"[CONNECTED] {self.server_url}")
        self._changed()
        if self._want_online and self._key is not None and not self._auth_busy:
            Deferred.fromCoroutine(self._relogin()).addErrback(self._internal_error)

    def connection_lost(self, reason: str) -> None:
        """The WebSocket closed (the connection layer reports the reconnection delay separately)."""
        if self._sender is not None:
            self._sender.close()
        self._link = None
        self._generation += 1
        self._sender = None
        self.logged_in = False
        self.presence.clear()
        self.public_version = None  # a fresh snapshot comes after the next hello
        self.public_members.clear()
        self._fail_waiters(NotConnected(f"the connection to {self.server_url} was lost ({reason})"))
        self.files.connection_lost(reason)

    def reconnect_scheduled(self, delay: float, reason: str, was_connected: bool) -> None:
        """Report a dropped connection or a failed attempt, and when the next one starts.

        Before the first login nothing is lost when the link drops: servers close links
        that stay unidentified (ours after 30 s) and the client quietly redials, so an
        idle prompt isn't flooded with ``[DISCONNECTED]`` lines.
        """
        if was_connected and not self._want_online:
            _log.debug(
                "Idle connection to {url} closed ({reason}); redialling", url=self.server_url, reason=reason
            )
            return
        if was_connected:
            self.show(
                f"[DISCONNECTED] lost the connection to {self.server_url} ({printable(reason)}); "
                f"reconnecting in {delay:.1f} s"
            )
        else:
            self.show(
                f"[DISCONNECTED] cannot connect to {self.server_url} ({printable(reason)}); "
                f"retrying in {delay:.1f} s"
            )

    def frame_rejected(self, error: wire.FrameError) -> None:
        """The server sent something that is not a valid frame: logged and dropped."""
        self._count("bad_frames")
        _log.warn(
            "Dropped a malformed frame from the server: {code} {detail}", code=error.code, detail=error.detail
        )

    def frame_received(self, envelope: wire.Envelope) -> None:
        """Dispatch one frame from the server; never raises."""
        try:
            handler = self._handlers.get(envelope.type)
            if handler is None:
                self._count("ignored." + envelope.type)
                _log.debug("Ignored a {type} frame from the server", type=envelope.type)
                return
            handler(self, envelope)
        except Exception:
            self._count("handler_errors")
            _log.failure("Failed handling a {type} frame", type=envelope.type)

    def shutdown(self) -> None:
        """Cancel every timer (before the reactor stops, or at the end of a test)."""
        self._shut_down = True
        self._changed()
        self._fail_waiters(NotConnected("the client is shutting down"))
        for partial in self._partials.values():
            if partial.timer is not None and partial.timer.active():
                partial.timer.cancel()
        self._partials.clear()
        self.files.shutdown()

    # --------------------------------------------------------- server frames

    def _signed_by_server(self, envelope: wire.Envelope) -> bool | None:
        """True/False: the frame does/doesn't verify with the server's key; None: no key known yet."""
        if self._server_key is None:
            return None
        if self.server_id is not None and envelope.from_ != self.server_id:
            return False
        return crypto.verify_payload(self._server_key, envelope.payload, envelope.sig)

    def _find_waiter(self, envelope: wire.Envelope) -> _Waiter | None:
        for waiter in self._waiters:
            if waiter.frame_type == envelope.type and (waiter.match is None or waiter.match(envelope)):
                return waiter
        return None

    def _on_reply(self, envelope: wire.Envelope) -> None:
        waiter = self._find_waiter(envelope)
        hello_ack = envelope.type == "ACK" and envelope.payload.get("msg_ref") == "USER_HELLO"
        # The hello ACK names the server key itself; _accept_server_key checks it against the pin.
        if not hello_ack and self._signed_by_server(envelope) is False:
            self._count("bad_server_sig")
            _log.warn("A {type} frame does not verify with the server key", type=envelope.type)
            if waiter is not None:
                if not self.logged_in:
                    self._pinned_key_warning(envelope.type)
                self._settle(
                    waiter,
                    RequestFailed(
                        f"the server's {envelope.type} is not signed by the key pinned for {self.server_url}"
                    ),
                    error=True,
                )
            else:
                self.show(f"[WARNING] ignored a {envelope.type} frame with an invalid server signature")
            return
        if waiter is None:
            self._count("unexpected." + envelope.type)
            _log.debug("Unexpected {type} frame from the server", type=envelope.type)
            return
        self._settle(waiter, envelope)

    def _pinned_key_warning(self, frame_type: str) -> None:
        fp = crypto.fingerprint(self._server_key) if self._server_key is not None else "?"
        self.show(
            f"[WARNING] !!! {frame_type} IS NOT SIGNED BY THE KEY PINNED FOR SERVER {self.server_url} "
            f"[{fp}] !!!\n"
            f"  The server key may have changed, or someone is intercepting your connection.\n"
            f"  If the operator really replaced the server key, remove {self.server_url}\n"
            f"  from {self.pins.path}"
        )

    def _on_error(self, envelope: wire.Envelope) -> None:
        payload = envelope.payload
        code = payload.get("code") if isinstance(payload.get("code"), str) else "ERROR"
        detail = payload.get("detail") if isinstance(payload.get("detail"), str) else ""
        ref = payload.get("msg_ref")
        if self._signed_by_server(envelope) is False:
            self._count("bad_server_sig")
            self.show(
                f"[WARNING] ignored an ERROR frame with an invalid server signature ({printable(code)})"
            )
            return
        is_file_error = isinstance(ref, str) and ref.startswith("FILE_")
        if is_file_error and self.files.error_received(code, detail, payload):
            return
        recipient = payload.get("user_id")
        if ref == "MSG_DIRECT" and isinstance(recipient, str) and recipient:
            self._dm_failed(recipient.lower(), payload.get("ts"), code, detail)
            return
        waiter = None
        if isinstance(ref, str):
            waiter = next((w for w in self._waiters if w.ref == ref), None)
        elif self._waiters:
            waiter = self._waiters[0]
        if waiter is not None:
            self._settle(waiter, ServerError(code, detail), error=True)
            return
        self.show(f"[ERROR] {printable(code[:64])}: {printable(detail[:1024])}")

    def _dm_failed(self, recipient: str, ts: object, code: str, detail: str) -> None:
        """The server could not deliver a DM of ours: say which one, once per message."""
        what = f"DM to {printable(recipient[:64])}"
        message = self.sent_dms.find(recipient, ts)
        if message is not None:
            if message.reported:
                self._count("dm_failures_repeated")
                return  # another part of a message already reported
            message.reported = True
            sent = time.strftime("%H:%M:%S", time.localtime(message.sent_at))
            what += f' ("{message.preview}", sent {sent})'
        self._count("dm_failures")
        self.show(f"[FAILED] {what} was not delivered: {printable(code[:64])}: {printable(detail[:1024])}")

    def _on_advertise(self, envelope: wire.Envelope) -> None:
        if self._signed_by_server(envelope) is False and envelope.from_ == self.server_id:
            self._count("bad_server_sig")
            return
        payload = envelope.payload
        user_id = payload.get("user_id")
        if not wire.is_uuid(user_id) or user_id == self.user_id:
            return
        server_id = payload.get("server_id")
        self.presence[user_id] = server_id if isinstance(server_id, str) else envelope.from_
        pubkey = payload.get("pubkey")
        if not isinstance(pubkey, str):
            meta = payload.get("meta")
            pubkey = meta.get("pubkey") if isinstance(meta, dict) else None
        if isinstance(pubkey, str):
            self._saw_key(user_id, pubkey)

    def _on_remove(self, envelope: wire.Envelope) -> None:
        if self._signed_by_server(envelope) is False and envelope.from_ == self.server_id:
            return
        user_id = envelope.payload.get("user_id")
        server_id = envelope.payload.get("server_id")
        if isinstance(user_id, str) and (server_id is None or self.presence.get(user_id) == server_id):
            self.presence.pop(user_id, None)

    def _on_user_list(self, envelope: wire.Envelope) -> None:
        if self._signed_by_server(envelope) is False:
            return
        users = envelope.payload.get("users")
        if not isinstance(users, list):
            return
        for item in users[:10000]:
            if isinstance(item, dict):
                user_id = item.get("user_id")
                if wire.is_uuid(user_id) and user_id != self.user_id:
                    self.presence.setdefault(user_id, str(item.get("server_id", "")))
                    if isinstance(item.get("pubkey"), str):
                        self._saw_key(user_id, item["pubkey"])
            elif wire.is_uuid(item) and item != self.user_id:
                self.presence.setdefault(item, "")

    def _saw_key(self, user_id: str, pubkey: str) -> bool:
        """Remember the key the network shows for ``user_id``; warn once if it differs from the pin."""
        try:
            check = self.pins.check_user(user_id, pubkey)
        except crypto.BadKey as e:
            _log.info("Ignored an unusable key for {user_id}: {detail}", user_id=user_id, detail=e.detail)
            return False
        self._seen_keys[user_id] = pubkey
        if check.status == CHANGED and (user_id, check.fingerprint) not in self._warned_keys:
            self._warned_keys.add((user_id, check.fingerprint))
            self._key_changed_warning(user_id, check.pinned_fingerprint, check.fingerprint)
        return True

    def _key_changed_warning(self, user_id: str, pinned: str | None, new: str) -> None:
        self.show(
            f"[WARNING] !!! THE KEY OF {user_id} HAS CHANGED !!!\n"
            f"  pinned [{pinned}], now offered [{new}].\n"
            f"  Someone may be impersonating this user. Messages signed by the new key are rejected and\n"
            f"  /tell refuses to encrypt to it. If you have verified the new fingerprint with them,\n"
            f"  run /trust {user_id}"
        )

    _handlers: dict[str, Callable[[ClientSession, wire.Envelope], None]] = {}

    # ------------------------------------------------------------ /register

    def register(self) -> Deferred:
        """``/register``: new id and key, sealed with a password, registered, then logged in."""
        return Deferred.fromCoroutine(self._register()).addErrback(self._internal_error)

    async def _register(self) -> None:
        if self._want_online:
            self.show(f"[REGISTER FAILED] already logged in as {self.user_id}; /quit first")
            return self._passwords_not_asked(2)
        if self._auth_busy:
            self.show("[REGISTER FAILED] a login is already in progress")
            return self._passwords_not_asked(2)
        if not await self._wait_until(lambda: self._sender is not None, self._reply_timeout):
            self.show(f"[REGISTER FAILED] not connected to {self.server_url}; try again later")
            return self._passwords_not_asked(2)
        self._auth_busy = True
        keygen = self._workers.run(self._key_factory)
        try:
            user_id = wire.new_uuid4()
            self.show(f"Your new user id: {user_id}  (keep it: /login needs it)")
            try:
                first = await self._password("Password: ")
                second = await self._password("Repeat password: ")
            except Exception as e:
                self.show(f"[REGISTER FAILED] no password given ({e})")
                return
            if first != second:
                self.show("[REGISTER FAILED] the passwords do not match")
                return
            if len(first) < MIN_PASSWORD_CHARS:
                self.show(
                    f"[REGISTER FAILED] the password must have at least {MIN_PASSWORD_CHARS} characters"
                )
                return
            self.show("Generating your key and sealing it with your password...")
            key = await keygen
            privkey_store, verifier = await self._workers.run(_seal, key, first, user_id, self._scrypt_params)
            del first, second
            payload = {
                "user_id": user_id,
                "pubkey": crypto.encode_public_key(key),
                "privkey_store": privkey_store,
                "pake_password": verifier,
            }
            acked = self._expect(
                "ACK", "USER_REGISTER", match=lambda e: e.payload.get("msg_ref") == "USER_REGISTER"
            )
            self._send("USER_REGISTER", self.server_id or "*", payload, key=key, from_=user_id)
            try:
                await acked
            except (ServerError, RequestFailed) as e:
                self.show(f"[REGISTER FAILED] {printable(str(e))}")
                return
            _log.info("Registered user {user_id}", user_id=user_id)
            self.show(f"[REGISTER SUCCESS] {user_id}")
            await self._login_with_key(user_id, key, None, None)
        finally:
            keygen.addErrback(lambda failure: None)
            self._auth_busy = False

    # --------------------------------------------------------------- /login

    def login(self, user_id: str) -> Deferred:
        """``/login <user_uuid>``: SRP with the password, open the key store, hello with a proof."""
        return Deferred.fromCoroutine(self._login(user_id)).addErrback(self._internal_error)

    async def _login(self, user_id: str) -> None:
        if self._want_online and user_id == self.user_id and await self._still_logged_in():
            return
        if self._want_online:
            self.show(f"[ERROR] already logged in as {self.user_id}; /quit first to log in as another user")
            return self._passwords_not_asked()
        if self._auth_busy:
            self.show("[LOGIN FAILED] a login is already in progress")
            return self._passwords_not_asked()
        if not await self._wait_until(lambda: self._sender is not None, self._reply_timeout):
            self.show(f"[LOGIN FAILED] not connected to {self.server_url}; try again later")
            return self._passwords_not_asked()
        self._auth_busy = True
        try:
            try:
                password = await self._password("Password: ")
            except Exception as e:
                self.show(f"[LOGIN FAILED] no password given ({e})")
                return
            try:
                key, nonce, server_id = await self._srp_login(user_id, password)
            except (ServerError, RequestFailed, keystore.KeystoreError, wire.FrameError) as e:
                self.show(f"[LOGIN FAILED] {printable(str(e))}")
                return
            finally:
                del password
            await self._login_with_key(user_id, key, nonce, server_id)
        finally:
            self._auth_busy = False

    async def _still_logged_in(self) -> bool:
        """``/login`` of the user we are logged in as (``/register`` then ``/login``, as the
        integration guide has it): no password, just ``[LOGIN SUCCESS]`` once the session is
        online (after a reconnect's automatic login, if one is under way).  False (nothing
        shown) if that automatic login gave up meanwhile: then this is an ordinary login."""
        if not self.logged_in:
            await self._wait_until(lambda: self.logged_in or not self._want_online, self._reply_timeout)
        if not self._want_online:
            return False
        if self.logged_in:
            self.show(f"[LOGIN SUCCESS] {self.user_id}")
        else:
            self.show(
                f"[LOGIN FAILED] not connected to {self.server_url} right now (reconnecting); "
                "try again shortly"
            )
        self._passwords_not_asked()
        return True

    async def _srp_login(self, user_id: str, password: str) -> tuple[RSAPrivateKey, str, str]:
        try:
            srp = await self._workers.run(keystore.SrpClient, user_id, password)
        except keystore.LoginError as e:
            raise RequestFailed(str(e)) from None
        challenge_d = self._expect("USER_LOGIN_CHALLENGE", "USER_LOGIN_START")
        self._send(
            "USER_LOGIN_START",
            self.server_id or "*",
            {"user_id": user_id, "A": srp.start()},
            from_=user_id,
            sign=False,
        )
        challenge = await challenge_d
        if challenge.payload.get("user_id", user_id) != user_id:
            raise RequestFailed("the server's challenge is for another user")
        generation = self._generation
        try:
            m1 = await self._workers.run(srp.process_challenge, challenge.payload)
        except keystore.LoginError as e:
            raise RequestFailed(f"the server's challenge is invalid ({e})") from None
        self._same_link(generation)
        ok_d = self._expect("USER_LOGIN_OK", "USER_LOGIN_PROOF")
        self._send(
            "USER_LOGIN_PROOF",
            challenge.from_ if wire.is_uuid(challenge.from_) else "*",
            {"user_id": user_id, "M1": m1},
            from_=user_id,
            sign=False,
        )
        ok = await ok_d
        if not srp.verify_server(ok.payload.get("M2")):
            self._count("bad_m2")
            if self._link is not None:
                self._link.close(1000, "server proof M2 is wrong")
            raise RequestFailed(
                "the server could not prove it knows your password verifier (M2 mismatch): "
                "it may be an impostor; disconnected"
            )
        blob = wire.require_str(ok.payload, "privkey_store", max_len=64 * 1024)
        nonce = wire.require_str(ok.payload, "nonce", max_len=256)
        try:
            key = await self._workers.run(keystore.open_private_key, blob, password)
        except keystore.WrongPassword:
            raise RequestFailed("your key store does not open with this password") from None
        except keystore.CorruptKeystore as e:
            raise RequestFailed(f"the server sent a corrupt key store ({e})") from None
        self._same_link(generation)
        return key, nonce, ok.from_

    async def _login_with_key(
        self, user_id: str, key: RSAPrivateKey, nonce: str | None, server_id: str | None
    ) -> bool:
        try:
            await self._hello(user_id, key, nonce, server_id)
        except (ServerError, RequestFailed, keystore.KeystoreError, wire.FrameError) as e:
            self.show(f"[LOGIN FAILED] {printable(str(e))}")
            return False
        _log.info("Logged in as {user_id}", user_id=user_id)
        self.show(f"[LOGIN SUCCESS] {user_id}")
        return True

    async def _hello(
        self, user_id: str, key: RSAPrivateKey, nonce: str | None, server_id: str | None
    ) -> None:
        """USER_HELLO_CHALLENGE (unless a nonce is at hand) → USER_HELLO with proof → ACK."""
        if nonce is None:
            nonce_d = self._expect("USER_HELLO_NONCE", "USER_HELLO_CHALLENGE")
            self._send("USER_HELLO_CHALLENGE", self.server_id or "*", {}, key=key, from_=user_id)
            try:
                answer = await nonce_d
            except ServerError as e:
                if e.code != "UNKNOWN_TYPE":
                    raise
                answer = None  # a server without our extensions: plain hello, TOFU (EXTENSIONS §6.3)
            if answer is not None:
                nonce = wire.require_str(answer.payload, "nonce", max_len=256)
                server_id = answer.payload.get("server_id")
                if not wire.is_uuid(server_id):
                    server_id = answer.from_
        pub = crypto.encode_public_key(key)
        payload: dict[str, Any] = {"client": CLIENT_NAME, "pubkey": pub, "enc_pubkey": pub}
        if nonce is not None:
            preimage = keystore.hello_proof_preimage(nonce, user_id, server_id or "")
            payload["nonce"] = nonce
            generation = self._generation
            payload["proof"] = await self._workers.run(crypto.pss_sign, key, preimage)
            self._same_link(generation)
        acked = self._expect("ACK", "USER_HELLO", match=lambda e: e.payload.get("msg_ref") == "USER_HELLO")
        self._send("USER_HELLO", server_id or self.server_id or "*", payload, key=key, from_=user_id)
        ack = await acked
        self._accept_server_key(ack)
        self.user_id, self._key, self._pub = user_id, key, pub
        self.logged_in = True
        self._want_online = True
        self._relogin_failures = 0
        self._changed()

    def _accept_server_key(self, ack: wire.Envelope) -> None:
        """Check the hello ACK (self-signed by ``server_pub``) and pin that key per server URL."""
        server_id = ack.payload.get("server_id", ack.from_)
        server_pub = ack.payload.get("server_pub")
        if not wire.is_uuid(server_id) or not isinstance(server_pub, str):
            raise RequestFailed("the server's hello ACK lacks a valid server_id or server_pub")
        try:
            key = crypto.load_public_key(server_pub)
        except crypto.BadKey as e:
            raise RequestFailed(f"the server's key is unusable ({e.detail})") from None
        if not crypto.verify_payload(key, ack.payload, ack.sig):
            raise RequestFailed("the server's hello ACK is not signed by the key it names")
        check = self.pins.check_server(self.server_url, server_pub)
        if check.status == CHANGED:
            self._want_online = False
            self._changed()
            self.show(
                f"[WARNING] !!! THE KEY OF SERVER {self.server_url} HAS CHANGED !!!\n"
                f"  pinned [{check.pinned_fingerprint}], now [{check.fingerprint}].\n"
                f"  Someone may be intercepting your connection. Refusing to continue. If the operator\n"
                f"  really replaced the server key, remove {self.server_url} from {self.pins.path}"
            )
            if self._link is not None:
                self._link.close(1000, "server key changed")
            raise RequestFailed("the server key changed (see the warning above)")
        if check.status == NEW or self.pins.server(self.server_url)[0] != server_id:
            fp = self.pins.pin_server(self.server_url, server_id, server_pub)
            if check.status == NEW:
                self.show(f"[KEY] pinned the key of server {self.server_url} [{fp}] (first use)")
        self.server_id = server_id
        self._server_key = key

    async def _relogin(self) -> None:
        """After a reconnect: hello again with the key held in memory (no password needed)."""
        user_id, key = self.user_id, self._key
        if user_id is None or key is None:
            return
        self._auth_busy = True
        try:
            while True:
                generation = self._generation
                try:
                    await self._hello(user_id, key, None, None)
                    break
                except NotConnected:
                    # The link went away; if a new one opened meanwhile (its connection_made
                    # saw us busy), log in on it now, else its connection_made will start us.
                    if self._generation == generation or self._sender is None or not self._want_online:
                        return
        except (ServerError, RequestFailed, keystore.KeystoreError, wire.FrameError) as e:
            self._relogin_failures += 1
            if not self._want_online:  # e.g. the server key changed: already reported
                return
            if self._relogin_failures >= MAX_RELOGIN_FAILURES:
                self._want_online = False
                self._changed()
                self.show(
                    f"[ERROR] could not log in again as {user_id} ({printable(str(e))}); "
                    f"giving up: use /login {user_id}"
                )
                return
            self.show(f"[ERROR] could not log in again as {user_id} ({printable(str(e))}); will retry")
            if self._link is not None:
                self._link.close(1000, "login after reconnect failed; retrying")
            return
        finally:
            self._auth_busy = False
        _log.info("Logged in again as {user_id} after reconnecting", user_id=user_id)
        self.show(f"[RECONNECTED] logged in again as {user_id}")

    # ---------------------------------------------------------------- /list

    def list_users(self) -> Deferred:
        """``/list``: LIST_REQUEST, then one line per online user with a key fingerprint."""
        return Deferred.fromCoroutine(self._list()).addErrback(self._internal_error)

    async def _list(self) -> None:
        if not await self._require_online():
            return
        response = self._expect("LIST_RESPONSE", "LIST_REQUEST")
        self._send("LIST_REQUEST", self.server_id or "*", {})
        try:
            envelope = await response
            users = envelope.payload.get("online_users", envelope.payload.get("users"))
            if not isinstance(users, list):
                raise RequestFailed("the server's LIST_RESPONSE has no user list")
            online = {u.lower() for u in users[:100000] if wire.is_uuid(u)}
        except ServerError as e:
            if e.code != "UNKNOWN_TYPE":
                self.show(f"[ERROR] {printable(str(e))}")
                return
            online = set(self.presence)  # a server without LIST_REQUEST: our own view from gossip
        except RequestFailed as e:
            self.show(f"[ERROR] /list failed: {printable(str(e))}")
            return
        online.add(self.user_id)
        unknown = [u for u in sorted(online) if u != self.user_id and self._known_key(u) is None]
        if unknown and self.logged_in:
            await DeferredList([self._fetch_key(u) for u in unknown[:MAX_LIST_LOOKUPS]], consumeErrors=True)
        lines = [f"Online users ({len(online)}):"]
        for user_id in sorted(online):
            lines.append(self._list_line(user_id))
        self.show("\n".join(lines))

    def _known_key(self, user_id: str) -> str | None:
        if user_id == self.user_id:
            return self._pub
        return self._seen_keys.get(user_id) or self.pins.user_key(user_id)

    def _list_line(self, user_id: str) -> str:
        if user_id == self.user_id:
            return f"* {user_id}  [{crypto.fingerprint(self._key)}] (you)"
        key = self._known_key(user_id)
        if key is None:
            return f"  {user_id}  [key unknown]"
        check = self.pins.check_user(user_id, key)
        if check.status == CHANGED:
            return f"  {user_id}  [{check.fingerprint}] KEY CHANGED (pinned [{check.pinned_fingerprint}])"
        return f"  {user_id}  [{check.fingerprint}]"

    async def _fetch_key(self, user_id: str) -> str | None:
        """PUBKEY_REQUEST → the key the server knows for ``user_id`` (remembered), or None."""
        answer = self._expect(
            "PUBKEY_RESPONSE",
            "PUBKEY_REQUEST",
            match=lambda e: e.payload.get("user_id") == user_id,
            timeout=self._pubkey_timeout,
        )
        self._send("PUBKEY_REQUEST", self.server_id or "*", {"user_id": user_id})
        try:
            envelope = await answer
        except ServerError as e:
            if e.code not in ("USER_NOT_FOUND", "UNKNOWN_TYPE"):
                raise
            return None
        pubkey = envelope.payload.get("pubkey")
        if isinstance(pubkey, str) and self._saw_key(user_id, pubkey):
            return pubkey
        return None

    # ---------------------------------------------------------------- /tell

    def tell(self, user_id: str, text: str) -> Deferred:
        """``/tell <uuid> <text>``: encrypt to the pinned key, sign, send (split if long)."""
        return Deferred.fromCoroutine(self._tell(user_id, text)).addErrback(self._internal_error)

    async def _tell(self, user_id: str, text: str) -> None:
        if not await self._require_online():
            return
        try:
            plaintexts = encode_dm_parts(text)
        except ValueError as e:
            self.show(f"[ERROR] message not sent: {e}")
            return
        try:
            key_text = await self._recipient_key(user_id)
        except (ServerError, RequestFailed) as e:
            self.show(f"[ERROR] message not sent: {printable(str(e))}")
            return
        if key_text is None:
            self.show(f"[ERROR] message not sent: no key known for {user_id} (is the user online?)")
            return
        check = self.pins.check_user(user_id, key_text)
        if check.status == CHANGED:
            self._key_changed_warning(user_id, check.pinned_fingerprint, check.fingerprint)
            self.show(f"[ERROR] message not sent: the key of {user_id} changed")
            return
        if check.status == NEW and user_id != self.user_id:
            self.pins.pin_user(user_id, key_text)
            self.show(f"[KEY] pinned the key of {user_id} [{check.fingerprint}] (first contact)")
        if not self.logged_in or self._sender is None:
            self.show("[ERROR] message not sent: the connection was lost")
            return
        recipient_key = crypto.load_public_key(key_text)
        frames, failures = [], []
        sent = self.sent_dms.add(user_id, text)
        for plain in plaintexts:
            ts = self._now_ms()
            self.sent_dms.add_part(sent, ts)
            frame = self._workers.run(
                _dm_frame, self._key, recipient_key, self._pub, self.user_id, user_id, ts, plain
            )
            frame.addErrback(lambda failure: failures.append(failure) or failure)
            self._sender.send(frame)  # the sender consumes the result: watch failures above
            frames.append(frame)
        await DeferredList(frames, consumeErrors=True)
        if failures:
            self.show("[ERROR] message not sent: it could not be encrypted or signed")
            return
        self._count("dm_sent")
        suffix = f" ({len(plaintexts)} parts)" if len(plaintexts) > 1 else ""
        self.show(f"DM to {user_id}{suffix}: {printable(text)}")

    async def _recipient_key(self, user_id: str) -> str | None:
        if user_id == self.user_id:
            return self._pub
        key = self._seen_keys.get(user_id)
        if key is None:
            key = await self._fetch_key(user_id)
        if key is None:
            key = self.pins.user_key(user_id)
        return key

    # ------------------------------------------------------ /all, /members

    def send_all(self, text: str) -> Deferred:
        """``/all <text>``: one MSG_PUBLIC_CHANNEL per public-channel member, each encrypted to that
        member and content-signed (split like DMs when long); the RSA work runs on the workers."""
        return Deferred.fromCoroutine(self._send_all(text)).addErrback(self._internal_error)

    async def _send_all(self, text: str) -> None:
        if not await self._require_online():
            return
        try:
            plaintexts = encode_dm_parts(text)
        except ValueError as e:
            self.show(f"[ERROR] message not sent: {e}")
            return
        # Right after the login the membership snapshot may still be on its way.
        await self._wait_until(
            lambda: self.public_version is not None or not self.logged_in, self._pubkey_timeout
        )
        if self.public_version is None:
            self.show("[ERROR] message not sent: the server has not told us the public channel's members")
            return
        recipients, newly_pinned = [], 0
        for member, key_text in sorted(self.public_members.items()):
            if member == self.user_id:
                continue
            try:
                check = self.pins.check_user(member, key_text)
            except crypto.BadKey:
                continue
            if check.status == CHANGED:
                if (member, check.fingerprint) not in self._warned_keys:
                    self._warned_keys.add((member, check.fingerprint))
                    self._key_changed_warning(member, check.pinned_fingerprint, check.fingerprint)
                self.show(f"[WARNING] /all skips {member}: its key changed")
                continue
            if check.status == NEW:
                self.pins.pin_user(member, key_text)
                newly_pinned += 1
            recipients.append((member, key_text))
        if newly_pinned:
            self.show(f"[KEY] pinned the keys of {newly_pinned} public channel members (first contact)")
        if not recipients:
            self.show("[public] nobody else is in the public channel: message not sent")
            return
        if not self.logged_in or self._sender is None:
            self.show("[ERROR] message not sent: the connection was lost")
            return
        frames, failures = [], []
        for plain in plaintexts:
            ts = self._now_ms()
            for member, key_text in recipients:
                frame = self._workers.run(
                    _public_frame, self._key, key_text, self._pub, self.user_id, member, ts, plain
                )
                frame.addErrback(lambda failure: failures.append(failure) or failure)
                self._sender.send(frame)
                frames.append(frame)
        await DeferredList(frames, consumeErrors=True)
        if failures:
            self.show(
                f"[ERROR] /all: {len(failures)} of {len(frames)} frames could not be encrypted or signed"
            )
        self._count("public_sent")
        suffix = f", {len(plaintexts)} parts each" if len(plaintexts) > 1 else ""
        self.show(f"[public] sent to {len(recipients)} members{suffix}: {printable(text)}")

    def members(self) -> None:
        """``/members``: the public channel's members as the server last told us, with fingerprints."""
        if self.public_version is None:
            self.show("[public] the membership is not known yet (it arrives after the login)")
            return
        lines = [f"Public channel, version {self.public_version} ({len(self.public_members)} members):"]
        for member in sorted(self.public_members):
            lines.append(self._list_line(member))
        share = self.public_key_share
        if share is not None:
            lines.append(f"Group key: version {share['version']}, made by server {share['creator']}")
        self.show("\n".join(lines))

    def _on_public_updated(self, envelope: wire.Envelope) -> None:
        """The server's membership push: a snapshot (``reset``) or the changes of one version."""
        if self._signed_by_server(envelope) is not True:
            self._count("bad_server_sig")
            _log.warn("Ignored a PUBLIC_CHANNEL_UPDATED frame not signed by the server key")
            return
        payload = envelope.payload
        version, members, removed = payload.get("version"), payload.get("members"), payload.get("removed", [])
        if type(version) is not int or not isinstance(members, list) or not isinstance(removed, list):
            self._count("bad_public_update")
            _log.warn("Ignored a malformed PUBLIC_CHANNEL_UPDATED frame")
            return
        if payload.get("reset") is True:
            self.public_members.clear()
        for item in members[:MAX_PUBLIC_MEMBERS]:
            if not isinstance(item, dict):
                continue
            member, key_text = item.get("user_id"), item.get("pubkey")
            if not wire.is_uuid(member) or not isinstance(key_text, str):
                continue
            if member == self.user_id or self._saw_key(member, key_text):
                self.public_members[member] = key_text
        for member in removed[:MAX_PUBLIC_MEMBERS]:
            if isinstance(member, str):
                self.public_members.pop(member, None)
        self.public_version = version
        self._changed()

    def _on_public_key_share(self, envelope: wire.Envelope) -> None:
        """Our share of the group key, content-signed by the server that made it."""
        payload = envelope.payload
        shares, creator_pub, content_sig = (payload.get(n) for n in ("shares", "creator_pub", "content_sig"))
        creator = payload.get("creator")

        def reject(reason: str) -> None:
            self._count("key_share_rejected")
            _log.warn("Rejected a PUBLIC_CHANNEL_KEY_SHARE: {reason}", reason=reason)

        if self._signed_by_server(envelope) is not True:
            return reject("invalid server signature")
        if not (isinstance(shares, list) and isinstance(creator_pub, str) and isinstance(content_sig, str)):
            return reject("malformed")
        try:
            creator_key = crypto.load_public_key(creator_pub)
        except crypto.BadKey as e:
            return reject(f"unusable creator key ({e.detail})")
        if creator == self.server_id and crypto.encode_public_key(creator_key) != crypto.encode_public_key(
            self._server_key
        ):
            return reject("creator_pub is not our server's key")
        if not crypto.verify_content_sig(
            creator_key, crypto.keyshare_preimage(shares, creator_pub), content_sig
        ):
            return reject("invalid content_sig")
        for share in shares:
            if isinstance(share, dict) and share.get("member") == self.user_id:
                wrapped = next(
                    (
                        share[n]
                        for n in ("wrapped_public_channel_key", "wrapped", "wrapped_key")
                        if n in share
                    ),
                    None,
                )
                if isinstance(wrapped, str):
                    self.public_key_share = {
                        "version": payload.get("version"),
                        "creator": creator if isinstance(creator, str) else envelope.from_,
                        "wrapped": wrapped,
                    }
                    self._count("key_shares")
                    return None
        return reject("no share for us")

    def _on_public_message(self, envelope: wire.Envelope) -> None:
        """One member's copy of an /all message: checked like a DM, shown once."""
        self._receive_message(envelope, public=True)

    # --------------------------------------------------------------- /trust

    def trust(self, user_id: str) -> Deferred:
        """``/trust <uuid>``: pin the key the network now shows for ``user_id`` (after a change)."""
        return Deferred.fromCoroutine(self._trust(user_id)).addErrback(self._internal_error)

    async def _trust(self, user_id: str) -> None:
        key = self._seen_keys.get(user_id)
        if key is None and self.logged_in:
            try:
                key = await self._fetch_key(user_id)
            except (ServerError, RequestFailed):
                key = None
        if key is None:
            self.show(f"[ERROR] no key of {user_id} seen yet: nothing to trust")
            return
        check = self.pins.check_user(user_id, key)
        if check.status != CHANGED:
            if check.status == NEW:
                self.pins.pin_user(user_id, key)
            self.show(f"The key of {user_id} [{check.fingerprint}] is trusted.")
            return
        self.pins.pin_user(user_id, key)
        self._warned_keys.discard((user_id, check.fingerprint))
        self.show(f"[KEY] now trusting {user_id} [{check.fingerprint}] (was [{check.pinned_fingerprint}])")

    # ---------------------------------------------------------------- /file

    def send_file(self, user_id: str, path: str) -> Deferred:
        """``/file <uuid> <path>``: stream a file to ``user_id`` (client/files.py); fires when done."""
        return Deferred.fromCoroutine(self.files.send(user_id, path)).addErrback(self._internal_error)

    def _on_file_frame(self, envelope: wire.Envelope) -> None:
        self.files.frame_received(envelope)

    # ---------------------------------------------------------------- /quit

    def quit(self) -> Any:
        """``/quit``: close the connection cleanly and stop (the app's ``quit_hook``)."""
        self.show("Bye.")
        if self.quit_hook is not None:
            return self.quit_hook()
        return None

    # ------------------------------------------------------------ incoming DMs

    def _on_user_deliver(self, envelope: wire.Envelope) -> None:
        self._receive_message(envelope, public=False)

    def _receive_message(self, envelope: wire.Envelope, public: bool) -> None:
        """Check a DM (``USER_DELIVER``) or a public-channel copy end to end, then queue its
        decryption (off the reactor, shown in arrival order).

        In order: logged in, the server's signature, addressed to us, a sender id and the three
        fields, the content signature by ``sender_pub`` (the DM or the public preimage), and that
        key against the one pinned for the sender.  A public copy seen before is dropped quietly
        (a relay's repeat).  Anything else is a ``[WARNING] rejected ...`` line.
        """
        what = "public message" if public else "DM"
        payload = envelope.payload
        sender = payload.get("sender")
        claimed = sender if wire.is_uuid(sender) else "an unnamed sender"

        def reject(reason: str) -> None:
            self._count("public_rejected" if public else "dm_rejected")
            _log.info(
                "Rejected a {what} claiming to be from {sender}: {reason}",
                what=what,
                sender=claimed,
                reason=reason,
            )
            self.show(
                f"[WARNING] rejected {what} claiming to be from {printable(str(claimed)[:64])}: {reason}"
            )

        if not self.logged_in or self._key is None:
            return reject("received before login")
        if self._signed_by_server(envelope) is not True:
            return reject("invalid server signature")
        if envelope.to != self.user_id:
            return reject("not addressed to you")
        if not wire.is_uuid(sender):
            return reject("no valid sender id")
        ciphertext, content_sig, sender_pub = (
            payload.get(n) for n in ("ciphertext", "content_sig", "sender_pub")
        )
        if not all(isinstance(v, str) and v for v in (ciphertext, content_sig, sender_pub)):
            return reject("malformed (ciphertext, content_sig or sender_pub missing)")
        if len(ciphertext) > _MAX_CIPHERTEXT_CHARS:
            return reject("ciphertext too long")
        if public and (sender, content_sig) in self._public_seen:
            self._count("public_duplicates")
            return None  # the same frame again (a relay's repeat): shown once already
        try:
            sender_key = crypto.load_public_key(sender_pub)
        except crypto.BadKey as e:
            return reject(f"unusable sender key ({e.detail})")
        if public:
            signed = crypto.verify_public_content_sig(
                sender_key, ciphertext, sender, envelope.ts, content_sig
            )
        else:
            signed = crypto.verify_dm_content_sig(
                sender_key, ciphertext, sender, envelope.to, envelope.ts, content_sig
            )
        if not signed:
            return reject("invalid signature")
        check = self.pins.check_user(sender, sender_pub)
        self._seen_keys[sender] = sender_pub
        if check.status == CHANGED:
            if (sender, check.fingerprint) not in self._warned_keys:
                self._warned_keys.add((sender, check.fingerprint))
                self._key_changed_warning(sender, check.pinned_fingerprint, check.fingerprint)
            return reject("signed by a key different from the one pinned for this user")
        if check.status == NEW and sender != self.user_id:
            self.pins.pin_user(sender, sender_pub)
            self.show(f"[KEY] pinned the key of {sender} [{check.fingerprint}] (first contact)")
        if public:
            self._public_seen.append((sender, content_sig))
        key = self._key

        def decrypt(_: object) -> Deferred:
            done = self._workers.run(crypto.oaep_decrypt, key, ciphertext)
            done.addCallbacks(
                self._decrypted,
                self._undecryptable,
                callbackArgs=(sender, public),
                errbackArgs=(sender, public),
            )
            return done.addErrback(self._internal_error)

        self._inbox.addCallback(decrypt)
        return None

    def _undecryptable(self, failure: Any, sender: str, public: bool = False) -> None:
        self._count("public_rejected" if public else "dm_rejected")
        reason = (
            "it does not decrypt with your key" if failure.check(crypto.DecryptError) else "internal error"
        )
        if not failure.check(crypto.DecryptError):
            _log.failure("Decrypting a DM failed", failure)
        what = "public message" if public else "DM"
        self.show(f"[WARNING] rejected {what} claiming to be from {sender}: {reason}")

    def _show_message(self, sender: str, text: str, public: bool) -> None:
        if public:
            self._count("public_received")
            self.show(f"[public] {sender}: {printable(text)}")
        else:
            self._count("dm_received")
            self.show(f"DM from {sender}: {printable(text)}")

    def _decrypted(self, plaintext: bytes, sender: str, public: bool = False) -> None:
        text = plaintext.decode("utf-8", "replace")
        match = PART_RE.match(text)
        if match is None:
            self._show_message(sender, text, public)
            return
        index, count, msg_id = int(match.group(1)), int(match.group(2)), match.group(3)
        self._add_part(sender, msg_id, index, count, text[match.end() :], public)

    def _add_part(
        self, sender: str, msg_id: str, index: int, count: int, piece: str, public: bool = False
    ) -> None:
        slot = (sender, f"public:{msg_id}" if public else msg_id)  # /all and DM parts never mix
        what = "public message" if public else "DM"
        if not (1 <= index <= count <= MAX_PARTS):
            self.show(f"[WARNING] dropped a {what} part from {sender}: bad part header {index}/{count}")
            return
        if slot in self._completed:
            return  # a duplicate of a message already shown
        partial = self._partials.get(slot)
        if partial is None:
            self._make_room(sender)
            partial = _Partial(sender, msg_id, count, public=public)
            partial.timer = self._clock.callLater(self._reassembly_timeout, self._partial_expired, slot)
            self._partials[slot] = partial
        elif partial.count != count:
            self.show(
                f"[WARNING] dropped a {what} part from {sender}: it claims {count} parts, not {partial.count}"
            )
            return
        partial.parts.setdefault(index, piece)
        if len(partial.parts) < count:
            return
        del self._partials[slot]
        if partial.timer is not None and partial.timer.active():
            partial.timer.cancel()
        self._completed.append(slot)
        text = "".join(partial.parts[i] for i in range(1, count + 1))
        self._show_message(sender, text, public)

    def _make_room(self, sender: str) -> None:
        mine = [slot for slot in self._partials if slot[0] == sender]
        if len(mine) >= MAX_PENDING_PER_SENDER:
            self._drop_partial(mine[0], "too many incomplete messages from this sender")
        if len(self._partials) >= MAX_PENDING_TOTAL:
            self._drop_partial(next(iter(self._partials)), "too many incomplete messages")

    def _partial_expired(self, slot: tuple[str, str]) -> None:
        partial = self._partials.get(slot)
        if partial is not None:
            partial.timer = None
            self._drop_partial(slot, f"the rest did not arrive within {self._reassembly_timeout:g} s")

    def _drop_partial(self, slot: tuple[str, str], why: str) -> None:
        partial = self._partials.pop(slot)
        if partial.timer is not None and partial.timer.active():
            partial.timer.cancel()
        missing = [str(i) for i in range(1, partial.count + 1) if i not in partial.parts]
        self._count("public_incomplete" if partial.public else "dm_incomplete")
        what = "public message" if partial.public else "DM"
        self.show(
            f"[WARNING] incomplete {what} from {partial.sender}: "
            f"{len(partial.parts)} of {partial.count} parts arrived (missing {', '.join(missing)}); "
            f"{why}; message dropped"
        )

    # ---------------------------------------------------------------- misc

    def _internal_error(self, failure: Any) -> None:
        _log.failure("Client command failed", failure)
        self.show(f"[ERROR] internal error: {printable(str(failure.value))}")


ClientSession._handlers = {
    "ACK": ClientSession._on_reply,
    "USER_LOGIN_CHALLENGE": ClientSession._on_reply,
    "USER_LOGIN_OK": ClientSession._on_reply,
    "USER_HELLO_NONCE": ClientSession._on_reply,
    "LIST_RESPONSE": ClientSession._on_reply,
    "PUBKEY_RESPONSE": ClientSession._on_reply,
    "ERROR": ClientSession._on_error,
    "USER_DELIVER": ClientSession._on_user_deliver,
    "MSG_PUBLIC_CHANNEL": ClientSession._on_public_message,
    "PUBLIC_CHANNEL_UPDATED": ClientSession._on_public_updated,
    "PUBLIC_CHANNEL_KEY_SHARE": ClientSession._on_public_key_share,
    "USER_ADVERTISE": ClientSession._on_advertise,
    "USER_REMOVE": ClientSession._on_remove,
    "USER_LIST": ClientSession._on_user_list,
    "FILE_START": ClientSession._on_file_frame,
    "FILE_CHUNK": ClientSession._on_file_frame,
    "FILE_END": ClientSession._on_file_frame,
}
