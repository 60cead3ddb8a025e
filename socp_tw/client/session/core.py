"""The state every part of a :class:`ClientSession` shares, and its requests to the server:
frames out (signed on the workers), answers awaited, ``ERROR`` frames, waiting for the link."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall

from socp_tw import crypto, wire
from socp_tw.auth.scrypt import DEFAULT_SCRYPT, ScryptParams
from socp_tw.client.files import STALL_TIMEOUT, FileTransfers
from socp_tw.client.names import Names
from socp_tw.client.pins import PinStore
from socp_tw.client.session.sent import SentDMs
from socp_tw.client.text import printable
from socp_tw.logs import get_logger
from socp_tw.transport.sender import OrderedSender

if TYPE_CHECKING:
    from socp_tw.client.session.inbox import _Partial


_log = get_logger("socp_tw.client.session")

REPLY_TIMEOUT = 30.0
PUBKEY_TIMEOUT = 10.0
REASSEMBLY_TIMEOUT = 60.0
MAX_PUBLIC_SEEN = 4096  # public-channel frames remembered to show each message once


#: Requests of our follow mode; an ERROR for one is not shown (the server then pushes presence
#: and the channel to everyone, which is what they ask for).
QUIET_REQUESTS = ("PRESENCE_FOLLOW", "PUBLIC_CHANNEL_SUBSCRIBE")


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


def signed_frame(key: RSAPrivateKey, ftype: str, from_: str, to: str, ts: int, payload: dict) -> bytes:
    """One frame, transport-signed by ``key`` (runs on the workers)."""
    return wire.encode_frame(ftype, from_, to, ts, payload, crypto.sign_payload(key, payload))


class SessionCore:
    """One user's session with one server, across reconnections: its state and plumbing."""

    _handlers: dict[str, Callable[[Any, wire.Envelope], None]] = {}

    def __init__(
        self,
        ui: Any,
        pins: PinStore,
        server_url: str,
        *,
        workers: Any,
        clock: Any,
        password: str | None = None,
        scrypt_params: ScryptParams = DEFAULT_SCRYPT,
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
        self._outage = False  # a [DISCONNECTED] line is out and no "back" line yet
        self.server_id: str | None = None
        self._server_key: RSAPublicKey | None = None
        pinned = pins.server(server_url)
        if pinned is not None:
            self.server_id, key_text = pinned
            self._server_key = crypto.load_public_key(key_text)

        self.presence: dict[str, str] = {}  # user_id -> hosting server id (from relayed gossip)
        self.names = Names(pins)  # known ids, claimed names, petnames
        self._announced: set[str] = set()  # users seen online (kept across reconnects: no replayed lines)
        self.my_name: str | None = None  # our /nick, as the server confirmed it
        self._seen_keys: dict[str, str] = {}  # user_id -> latest key the network showed us
        self._warned_keys: set[tuple[str, str]] = set()
        self._inbox: Deferred = succeed(None)  # serialises decryption so DMs show in arrival order
        self._partials: OrderedDict[tuple[str, str], _Partial] = OrderedDict()
        self._completed: deque[tuple[str, str]] = deque(maxlen=256)
        # The public channel as our server last told us (None: not told yet on this link).
        self.public_version: int | None = None
        self.public_members: dict[str, str] = {}  # member id -> key
        self.public_key_share: dict[str, Any] | None = None  # {version, creator, wrapped}
        # Our server tells us only of the users we follow and of the channel once we subscribe
        # (USER_HELLO presence: "follow", docs/MESH.md); what we asked for on this link.
        self._following: set[str] = set()
        self._public_subscribed = False
        self._public_seen: deque[tuple[str, str]] = deque(maxlen=MAX_PUBLIC_SEEN)
        self.sent_dms = SentDMs(clock)
        self.counters: dict[str, int] = {}
        self._change_waiters: list[tuple[Deferred, IDelayedCall]] = []
        self._generation = 0  # bumped on every connect and disconnect
        self._shut_down = False
        self.files = FileTransfers(self, download_dir, stall_timeout=file_stall_timeout)

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def show(self, text: str) -> None:
        self.ui.show(text)

    def show_message(self, text: str, ts: int | None = None) -> None:
        """An incoming message's line: a ui that can (the terminal) puts its time in front."""
        show = getattr(self.ui, "show_message", None)
        if show is not None:
            show(text, ts)
        else:
            self.ui.show(text)

    def _now_ms(self) -> int:
        return int(self._clock.seconds() * 1000)

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
            frame = self._workers.run(signed_frame, key, ftype, from_, to, ts, payload)
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
        if envelope.type == "ACK" and envelope.payload.get("msg_ref") == "MSG_DIRECT":
            if self._signed_by_server(envelope) is not False:
                self._dm_status(envelope.payload)
            return
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
        if ref in QUIET_REQUESTS:  # a server without our follow mode: it sends everything anyway
            self._count("refused." + ref)
            _log.debug("The server refused {ref}: {code}", ref=ref, code=code)
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

    def _internal_error(self, failure: Any) -> None:
        _log.failure("Client command failed", failure)
        self.show(f"[ERROR] internal error: {printable(str(failure.value))}")
