"""File transfer in ``socp-client``: ``/file <uuid> <path>`` and incoming files (docs/FILES.md).

Sending streams the file: a first pass hashes it (SHA-256, on the worker pool), then each
chunk of at most 446 bytes is read at its offset (``os.pread``), RSA-OAEP encrypted to the
recipient and content-signed on the worker pool, with a bounded window of chunks in
flight.  The WebSocket's transport tells us when its send buffer is full (we register as its
streaming producer): no new chunk is made until it drains, so the client never buffers more
than the transport's 64 KiB plus the window.  On a terminal one progress line updates in
place.

Receiving checks every frame (server signature, addressed to us, content_sig by the key
pinned for the sender), decrypts on the worker pool and writes each chunk at its offset in
``.partial_<file_id>`` (created ``O_EXCL``, mode 0600, in the download directory).  Chunks
may arrive in any order; duplicates are ignored.  At ``FILE_END`` the count, size and
SHA-256 are checked, and only then is the file linked to ``received_<file_id>``.  A failed or
stalled transfer deletes its partial file and is reported.  The sender's file name is only
ever displayed (escaped), never used as a path.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from zope.interface import implementer

from socp_tw import crypto, wire
from socp_tw.client.console import one_line, printable
from socp_tw.client.pins import CHANGED, NEW
from socp_tw.content import file_end_preimage
from socp_tw.logs import get_logger

_log = get_logger("socp_tw.client.files")

CHUNK_BYTES = crypto.OAEP_MAX_PLAINTEXT
STALL_TIMEOUT = 60.0  # seconds without progress before a transfer (either way) is given up
PROGRESS_INTERVAL = 0.2  # at most 5 progress updates a second
HASH_BLOCK = 1024 * 1024
MAX_NAME_CHARS = 1024
MAX_RECEIVE_BYTES = 4 * 1024**3  # the largest incoming file we agree to assemble
MAX_INCOMING = 16  # incoming transfers at once
MAX_INCOMING_PER_SENDER = 4
MAX_DECRYPTS_IN_FLIGHT = 1024  # chunks queued for decryption before we stop reading the socket
MAX_RECENT = 32  # finished transfers remembered (late errors, late chunks)
_MAX_CIPHERTEXT_CHARS = 1024
_MAX_SIG_CHARS = 2048
_MAX_KEY_CHARS = 16384

SAFE_FILE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


def chunk_count(size: int) -> int:
    """How many chunks carry ``size`` bytes (0 for an empty file)."""
    return -(-size // CHUNK_BYTES)


def display_name(name: str) -> str:
    """A sender-chosen file name made safe to print (escaped, at most 200 characters)."""
    return one_line(name, 200)


class FileChanged(Exception):
    """The file being sent changed size or content during the transfer."""


class ChunkRejected(Exception):
    """An incoming chunk failed a check; ``str`` says which."""


# ------------------------------------------------------------------ worker-pool functions


def _hash_file(fd: int, size: int) -> str:
    """SHA-256 (hex) of the first ``size`` bytes of ``fd``, streamed; FileChanged if it is shorter."""
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        block = os.pread(fd, min(HASH_BLOCK, size - offset), offset)
        if not block:
            raise FileChanged(f"the file is shorter than {size} bytes")
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()


def _signed(key: Any, ftype: str, from_: str, to: str, ts: int, payload: dict[str, Any]) -> bytes:
    return wire.encode_frame(ftype, from_, to, ts, payload, crypto.sign_payload(key, payload))


def _start_frame(
    key: Any, file_id: str, name: str, size: int, sha256: str, from_: str, to: str, ts: int
) -> bytes:
    content_sig = crypto.sign_content(
        key, crypto.file_start_preimage(file_id, name, size, sha256, from_, to, ts)
    )
    payload = {
        "file_id": file_id,
        "name": name,
        "size": size,
        "sha256": sha256,
        "mode": "dm",
        "content_sig": content_sig,
    }
    return _signed(key, "FILE_START", from_, to, ts, payload)


def _chunk_frame(
    key: Any, recipient_key: Any, fd: int, size: int, index: int, file_id: str, from_: str, to: str, ts: int
) -> tuple[bytes, bytes]:
    """Read, encrypt and content-sign chunk ``index``; return (frame, plaintext).

    No transport signature: the content_sig covers every field of the payload, and a user
    frame on an authenticated link may carry ``sig: ""`` (PROTOCOL.md §1), which halves the
    sender's RSA work.
    """
    offset = index * CHUNK_BYTES
    want = min(CHUNK_BYTES, size - offset)
    plain = os.pread(fd, want, offset)
    if len(plain) != want:
        raise FileChanged(f"the file is shorter than {size} bytes")
    ciphertext = crypto.oaep_encrypt(recipient_key, plain)
    content_sig = crypto.sign_content(
        key, crypto.file_chunk_preimage(ciphertext, file_id, index, from_, to, ts)
    )
    payload = {"file_id": file_id, "index": index, "ciphertext": ciphertext, "content_sig": content_sig}
    return wire.encode_frame("FILE_CHUNK", from_, to, ts, payload, ""), plain


def _end_frame(key: Any, file_id: str, chunks: int, from_: str, to: str, ts: int) -> bytes:
    content_sig = crypto.sign_content(key, file_end_preimage(file_id, chunks, from_, to, ts))
    return _signed(
        key, "FILE_END", from_, to, ts, {"file_id": file_id, "chunks": chunks, "content_sig": content_sig}
    )


def _receive_chunk(
    server_key: Any,
    payload: dict[str, Any],
    sig: str,
    sender_key: Any,
    own_key: Any,
    sender: str,
    recipient: str,
    ts: int,
    fd: int,
    index: int,
    expected: int,
) -> int:
    """Verify (server sig, content_sig), decrypt and write chunk ``index``; return its length."""
    if not crypto.verify_payload(server_key, payload, sig):
        raise ChunkRejected("invalid server signature")
    ciphertext, file_id = payload["ciphertext"], payload["file_id"]
    preimage = crypto.file_chunk_preimage(ciphertext, file_id, index, sender, recipient, ts)
    if not crypto.verify_content_sig(sender_key, preimage, payload["content_sig"]):
        raise ChunkRejected("invalid signature")
    try:
        plain = crypto.oaep_decrypt(own_key, ciphertext)
    except crypto.DecryptError:
        raise ChunkRejected("it does not decrypt with your key") from None
    if len(plain) != expected:
        raise ChunkRejected(f"it carries {len(plain)} bytes where {expected} were expected")
    os.pwrite(fd, plain, index * CHUNK_BYTES)
    return len(plain)


def _complete_file(fd: int, temp_path: str, final_path: str, size: int, sha256: str) -> None:
    """Check the assembled file's size and SHA-256, then give it its final name (never overwriting)."""
    os.fsync(fd)
    if os.fstat(fd).st_size != size:
        raise ChunkRejected(f"the assembled file has {os.fstat(fd).st_size} bytes, not {size}")
    if _hash_file(fd, size) != sha256.lower():
        raise ChunkRejected("sha256 mismatch: the assembled file is not the file announced")
    try:
        os.link(temp_path, final_path)
    except FileExistsError:
        raise ChunkRejected(f"{final_path} already exists") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(final_path):  # no hard links here: check, then rename
            raise ChunkRejected(f"{final_path} already exists") from None
        os.rename(temp_path, final_path)
        return
    os.unlink(temp_path)


def _discard_partial(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


# ------------------------------------------------------------------ progress


class Progress:
    """One updating line on a terminal (``ui.status``), at most 5 updates a second; nothing otherwise."""

    def __init__(self, ui: Any, clock: Any, label: str, total: int) -> None:
        self._status = getattr(ui, "status", None) if getattr(ui, "interactive", False) else None
        self._clock = clock
        self._label = label
        self._total = total
        self.started = clock.seconds()
        self._last = -1.0

    def update(self, done: int, force: bool = False) -> None:
        if self._status is None:
            return
        now = self._clock.seconds()
        if not force and now - self._last < PROGRESS_INTERVAL:
            return
        self._last = now
        self._status(self.line(done, now))

    def line(self, done: int, now: float | None = None) -> str:
        """``[FILE] sending <name>: 42% 123.4 KiB/s ETA 5s``."""
        now = self._clock.seconds() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        percent = 100 if self._total == 0 else int(done * 100 / self._total)
        rate = done / elapsed
        eta = f"{(self._total - done) / rate:.0f}s" if rate > 0 else "?"
        return f"{self._label}: {percent}% {rate / 1024:.1f} KiB/s ETA {eta}"

    def rate_kib(self, done: int) -> float:
        return done / max(self._clock.seconds() - self.started, 1e-9) / 1024


# ------------------------------------------------------------------ transfers


@implementer(IPushProducer)
@dataclass(eq=False)
class _Outgoing:
    """One file being sent; the transport's streaming producer while it is registered."""

    file_id: str
    name: str
    recipient: str
    clock: Any
    stall_timeout: float
    failure: str | None = None
    reported: bool = False  # its final line was shown
    paused: bool = False
    _waiter: Deferred | None = None
    _timer: IDelayedCall | None = None

    # IPushProducer (the WebSocket's TCP transport calls these)
    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._wake()

    def stopProducing(self) -> None:
        self.fail("the connection to the server was lost")

    def fail(self, reason: str) -> None:
        if self.failure is None:
            self.failure = reason
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if waiter is not None and not waiter.called:
            waiter.callback(None)

    def wait(self) -> Deferred:
        """Fire on resume or failure; fail the transfer if neither comes within the stall timeout."""
        self._waiter = Deferred()
        self._timer = self.clock.callLater(
            self.stall_timeout,
            self.fail,
            f"stalled: the connection accepted nothing for {self.stall_timeout:g} s",
        )
        return self._waiter


@dataclass(eq=False)
class _Incoming:
    """One file being received."""

    sender: str
    file_id: str
    name: str
    size: int
    sha256: str
    chunks: int
    sender_key: Any
    fd: int
    temp_path: str
    final_path: str
    state: bytearray  # per chunk: 0 missing, 1 being decrypted, 2 written
    received: int = 0
    written_bytes: int = 0
    in_flight: int = 0
    ended: bool = False
    sent_chunks: int | None = None  # what FILE_END says the sender sent
    finishing: bool = False
    done: bool = False
    timer: IDelayedCall | None = None


class FileTransfers:
    """The file side of one :class:`ClientSession`: ``/file`` and incoming FILE_* frames."""

    def __init__(
        self,
        session: Any,
        download_dir: str = ".",
        *,
        stall_timeout: float = STALL_TIMEOUT,
        window: int | None = None,
    ) -> None:
        self._session = session
        self.download_dir = download_dir
        self.stall_timeout = stall_timeout
        self.window = window or max(2, 2 * int(getattr(session._workers, "size", 1) or 1))
        self._outgoing: dict[str, _Outgoing] = {}
        self._recent_sent: OrderedDict[str, _Outgoing] = OrderedDict()
        self._incoming: dict[tuple[str, str], _Incoming] = {}
        self._finished_incoming: deque[tuple[str, str]] = deque(maxlen=MAX_RECENT)
        self._decrypts = 0
        self._reading_paused = False
        self.counters: dict[str, int] = {}

    # ------------------------------------------------------------ helpers

    def _count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def _show(self, text: str) -> None:
        self._session.show(text)

    @property
    def _clock(self) -> Any:
        return self._session._clock

    @property
    def _workers(self) -> Any:
        return self._session._workers

    # ------------------------------------------------------------ sending

    async def send(self, user_id: str, path: str) -> None:
        """``/file <uuid> <path>``: stream ``path`` to ``user_id``; returns when done or failed."""
        session = self._session
        name = os.path.basename(os.path.normpath(path)) if path else ""
        shown = display_name(name or path)
        if not await session._require_online():
            return
        try:
            fd = os.open(os.path.expanduser(path), os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except OSError as e:
            self._show(f"[FILE] sending {shown} failed: cannot open it ({e.strerror or e})")
            return
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self._show(f"[FILE] sending {shown} failed: not a regular file")
                return
            if not name or len(name) > MAX_NAME_CHARS:
                self._show(f"[FILE] sending {shown} failed: the file name is empty or too long")
                return
            await self._send_open_file(user_id, fd, info.st_size, name, shown)
        finally:
            os.close(fd)

    async def _recipient_key(self, user_id: str, shown: str) -> Any:
        """The recipient's key as /tell finds it (pins checked and made); None after reporting why not."""
        session = self._session
        try:
            key_text = await session._recipient_key(user_id)
        except Exception as e:  # ServerError, RequestFailed
            self._show(f"[FILE] sending {shown} failed: {printable(str(e))}")
            return None
        if key_text is None:
            self._show(f"[FILE] sending {shown} failed: no key known for {user_id} (is the user online?)")
            return None
        check = session.pins.check_user(user_id, key_text)
        if check.status == CHANGED:
            session._key_changed_warning(user_id, check.pinned_fingerprint, check.fingerprint)
            self._show(f"[FILE] sending {shown} failed: the key of {user_id} changed")
            return None
        if check.status == NEW and user_id != session.user_id:
            session.pins.pin_user(user_id, key_text)
            self._show(f"[KEY] pinned the key of {user_id} [{check.fingerprint}] (first contact)")
        return crypto.load_public_key(key_text)

    async def _send_open_file(self, user_id: str, fd: int, size: int, name: str, shown: str) -> None:
        session = self._session
        recipient_key = await self._recipient_key(user_id, shown)
        if recipient_key is None:
            return
        try:
            sha256 = await self._workers.run(_hash_file, fd, size)
        except (OSError, FileChanged) as e:
            self._show(f"[FILE] sending {shown} failed: cannot read it ({e})")
            return
        if not session.logged_in or session._sender is None:
            self._show(f"[FILE] sending {shown} failed: the connection was lost")
            return
        out = _Outgoing(wire.new_uuid4(), name, user_id, self._clock, self.stall_timeout)
        self._outgoing[out.file_id] = out
        transport = getattr(session._link, "transport", None)
        producing = self._register_producer(transport, out)
        progress = Progress(session.ui, self._clock, f"[FILE] sending {shown}", size)
        sent = 0
        try:
            key, me = session._key, session.user_id
            start = self._workers.run(
                _start_frame, key, out.file_id, name, size, sha256, me, user_id, session._now_ms()
            )
            session._sender.send(start)
            await start
            _log.info(
                "Sending file {file_id} ({size} bytes) to {recipient}",
                file_id=out.file_id,
                size=size,
                recipient=user_id,
            )
            progress.update(0, force=True)
            sent = await self._stream_chunks(out, fd, size, sha256, key, recipient_key, progress)
        except Exception as e:
            if out.failure is None:
                out.fail(str(e) or type(e).__name__)
                _log.failure("Sending file {file_id} failed", file_id=out.file_id)
        finally:
            if producing and getattr(transport, "producer", None) is out:
                transport.unregisterProducer()
            del self._outgoing[out.file_id]
            # Errors about it may still come (frames in flight): they find it here.
            self._recent_sent[out.file_id] = out
            while len(self._recent_sent) > MAX_RECENT:
                self._recent_sent.popitem(last=False)
        await self._finish_sending(out, sent, size, shown, progress)

    def _register_producer(self, transport: Any, out: _Outgoing) -> bool:
        """Become ``transport``'s streaming producer, to learn when its send buffer is full."""
        if transport is None or not hasattr(transport, "registerProducer"):
            return False
        if getattr(transport, "producer", None) is not None:
            return False  # somebody else's: rely on the window alone
        try:
            transport.registerProducer(out, True)
        except RuntimeError:
            return False
        return True

    async def _stream_chunks(
        self,
        out: _Outgoing,
        fd: int,
        size: int,
        sha256: str,
        key: Any,
        recipient_key: Any,
        progress: Progress,
    ) -> int:
        """Send every chunk in order with at most ``window`` in flight; return how many were produced."""
        session = self._session
        count = chunk_count(size)
        hasher = hashlib.sha256()
        window: deque[Deferred] = deque()
        next_index = done = produced = 0
        me, to, file_id = session.user_id, out.recipient, out.file_id
        try:
            while out.failure is None:
                if window and (len(window) >= self.window or out.paused or next_index >= count):
                    _, plain = await window.popleft()
                    produced += 1
                    hasher.update(plain)
                    done += len(plain)
                    progress.update(done)
                    continue
                if next_index >= count:
                    break
                if session._sender is None:
                    out.fail("the connection to the server was lost")
                    break
                if out.paused:
                    await out.wait()
                    continue
                job = self._workers.run(
                    _chunk_frame, key, recipient_key, fd, size, next_index, file_id, me, to, session._now_ms()
                )
                frame: Deferred = Deferred()
                job.addCallbacks(_fire_frame, _fail_frame, callbackArgs=(frame,), errbackArgs=(frame,))
                session._sender.send(frame)
                window.append(job)
                next_index += 1
        except (OSError, FileChanged) as e:
            out.fail(f"cannot read it ({e})")
        finally:
            for job in window:  # never close the file under a job still reading it
                job.addErrback(lambda failure: None)
                if await job is not None:
                    produced += 1  # its frame went out too
        if out.failure is None and hasher.hexdigest() != sha256:
            out.fail("the file changed while it was being sent")
        return produced

    async def _finish_sending(
        self, out: _Outgoing, sent: int, size: int, shown: str, progress: Progress
    ) -> None:
        session = self._session
        if session._sender is not None and session.logged_in:
            end = self._workers.run(
                _end_frame, session._key, out.file_id, sent, session.user_id, out.recipient, session._now_ms()
            )
            session._sender.send(end)
            try:
                await end
            except Exception:
                _log.failure("Could not sign FILE_END {file_id}", file_id=out.file_id)
        out.reported = True
        if out.failure is not None:
            self._count("files_send_failed")
            _log.info("Sending file {file_id} failed: {reason}", file_id=out.file_id, reason=out.failure)
            self._show(f"[FILE] sending {shown} failed: {printable(out.failure)}")
            return
        self._count("files_sent")
        _log.info(
            "Sent file {file_id} ({size} bytes) at {rate:.1f} KiB/s",
            file_id=out.file_id,
            size=size,
            rate=progress.rate_kib(size),
        )
        self._show(f"[FILE] sent {shown} to {out.recipient} ({size} bytes)")

    # ------------------------------------------------------------ errors from the server

    def error_received(self, code: str, detail: str, payload: dict[str, Any]) -> bool:
        """An ERROR whose ``msg_ref`` is a FILE_* type: fail the transfer it names; True if handled."""
        file_id = payload.get("file_id")
        user_id = payload.get("user_id")
        reason = f"{code}: {detail}"
        targets: list[_Outgoing] = []
        if isinstance(file_id, str):
            if file_id in self._outgoing:
                targets = [self._outgoing[file_id]]
        elif isinstance(user_id, str):  # a remote server's report names only the recipient
            targets = [o for o in self._outgoing.values() if o.recipient == user_id.lower()]
        elif len(self._outgoing) == 1:
            targets = list(self._outgoing.values())
        for out in targets:
            out.fail(reason)
        if targets:
            return True
        late = self._recent_sent.get(file_id) if isinstance(file_id, str) else None
        if late is None and isinstance(user_id, str):
            late = next(
                (o for o in reversed(self._recent_sent.values()) if o.recipient == user_id.lower()), None
            )
        if late is None:
            return False
        if late.failure is None:  # reported once; a failed transfer's later errors are its echoes
            late.failure = reason
            if late.reported:  # else _finish_sending reports it
                shown = display_name(late.name)
                self._show(f"[FILE] sending {shown} to {late.recipient} failed: {printable(reason)}")
        return True

    # ------------------------------------------------------------ receiving

    def frame_received(self, envelope: wire.Envelope) -> None:
        """A FILE_START, FILE_CHUNK or FILE_END from our server."""
        if envelope.type == "FILE_START":
            self._on_start(envelope)
        elif envelope.type == "FILE_CHUNK":
            self._on_chunk(envelope)
        elif envelope.type == "FILE_END":
            self._on_end(envelope)

    def _refuse(self, sender: str, file_id: str, name: str | None, reason: str) -> None:
        self._count("files_refused")
        _log.info(
            "Refused file {file_id} from {sender}: {reason}",
            file_id=file_id[:128],
            sender=sender[:64],
            reason=reason,
        )
        label = f" ({display_name(name)})" if name else ""
        shown_id, shown_sender = printable(file_id[:128]), printable(sender[:64])
        self._show(f"[FILE] transfer {shown_id}{label} from {shown_sender} failed: {reason}")

    def _on_start(self, envelope: wire.Envelope) -> None:
        session = self._session
        payload = envelope.payload
        sender = payload.get("sender") if wire.is_uuid(payload.get("sender")) else None
        raw_id = payload.get("file_id")
        file_id = raw_id if isinstance(raw_id, str) else "?"
        name = payload.get("name") if isinstance(payload.get("name"), str) else None
        claimed = sender or "an unnamed sender"
        if not session.logged_in or session._key is None:
            return self._refuse(claimed, file_id, name, "received before login")
        if session._signed_by_server(envelope) is not True:
            return self._refuse(claimed, file_id, name, "invalid server signature")
        if envelope.to != session.user_id:
            return self._refuse(claimed, file_id, name, "not addressed to you")
        if sender is None:
            return self._refuse(claimed, file_id, name, "no valid sender id")
        sender = sender.lower()
        if not SAFE_FILE_ID.fullmatch(file_id):
            return self._refuse(sender, file_id, name, "file_id must be 1-128 letters, digits, '-' or '_'")
        if (sender, file_id) in self._incoming or (sender, file_id) in self._finished_incoming:
            self._count("duplicate_start")
            return None
        problem = self._start_problem(payload, name)
        if problem is not None:
            return self._refuse(sender, file_id, name, problem)
        size, sha256 = payload["size"], payload["sha256"].lower()
        try:
            sender_key = crypto.load_public_key(payload["sender_pub"])
        except crypto.BadKey as e:
            return self._refuse(sender, file_id, name, f"unusable sender key ({e.detail})")
        preimage = crypto.file_start_preimage(
            file_id, name, payload["size"], payload["sha256"], sender, envelope.to, envelope.ts
        )
        if not crypto.verify_content_sig(sender_key, preimage, payload["content_sig"]):
            return self._refuse(sender, file_id, name, "invalid signature")
        check = session.pins.check_user(sender, payload["sender_pub"])
        session._seen_keys[sender] = payload["sender_pub"]
        if check.status == CHANGED:
            if (sender, check.fingerprint) not in session._warned_keys:
                session._warned_keys.add((sender, check.fingerprint))
                session._key_changed_warning(sender, check.pinned_fingerprint, check.fingerprint)
            return self._refuse(
                sender, file_id, name, "signed by a key different from the one pinned for this user"
            )
        mine = [t for t in self._incoming.values() if t.sender == sender]
        if len(mine) >= MAX_INCOMING_PER_SENDER or len(self._incoming) >= MAX_INCOMING:
            return self._refuse(sender, file_id, name, "too many incoming transfers at once")
        if check.status == NEW and sender != session.user_id:
            session.pins.pin_user(sender, payload["sender_pub"])
            self._show(f"[KEY] pinned the key of {sender} [{check.fingerprint}] (first contact)")
        temp_path = os.path.join(self.download_dir, f".partial_{file_id}")
        final_path = os.path.join(self.download_dir, f"received_{file_id}")
        if os.path.lexists(final_path):
            return self._refuse(sender, file_id, name, f"{final_path} already exists")
        try:
            flags = (
                os.O_RDWR
                | os.O_CREAT
                | os.O_EXCL
                | getattr(os, "O_NOFOLLOW", 0)
                | getattr(os, "O_CLOEXEC", 0)
            )
            fd = os.open(temp_path, flags, 0o600)
        except OSError as e:
            return self._refuse(sender, file_id, name, f"cannot create {temp_path} ({e.strerror or e})")
        count = chunk_count(size)
        incoming = _Incoming(
            sender,
            file_id,
            name,
            size,
            sha256,
            count,
            sender_key,
            fd,
            temp_path,
            final_path,
            bytearray(count),
        )
        self._incoming[(sender, file_id)] = incoming
        self._touch(incoming)
        self._count("files_incoming")
        _log.info(
            "Receiving file {file_id} ({size} bytes) from {sender}", file_id=file_id, size=size, sender=sender
        )
        self._show(f"[FILE] receiving {display_name(name)} ({size} bytes) from {sender}")
        return None

    def _start_problem(self, payload: dict[str, Any], name: str | None) -> str | None:
        """What is wrong with a FILE_START payload's shape, or None."""
        if name is None or not name or len(name) > MAX_NAME_CHARS:
            return "malformed (name missing or too long)"
        size = payload.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            return "malformed (size)"
        if size > MAX_RECEIVE_BYTES:
            return f"the file is {size} bytes; this client accepts at most {MAX_RECEIVE_BYTES}"
        if not isinstance(payload.get("sha256"), str) or not SHA256_HEX.fullmatch(payload["sha256"]):
            return "malformed (sha256 must be 64 hex digits)"
        mode = payload.get("mode", "dm")
        if mode != "dm":
            return f"mode {printable(str(mode)[:16])!s} is not supported (only dm)"
        for field_name, limit in (("content_sig", _MAX_SIG_CHARS), ("sender_pub", _MAX_KEY_CHARS)):
            value = payload.get(field_name)
            if not isinstance(value, str) or not value or len(value) > limit:
                return f"malformed ({field_name})"
        return None

    def _lookup(self, envelope: wire.Envelope) -> _Incoming | None:
        payload = envelope.payload
        sender, file_id = payload.get("sender"), payload.get("file_id")
        if not (wire.is_uuid(sender) and isinstance(file_id, str)):
            self._count("file_frames_malformed")
            return None
        incoming = self._incoming.get((sender.lower(), file_id))
        if incoming is None:
            self._count("file_frames_unknown")
            return None
        session = self._session
        if envelope.to != session.user_id or envelope.from_ != session.server_id:
            self._count("file_frames_misaddressed")
            return None
        return incoming

    def _on_chunk(self, envelope: wire.Envelope) -> None:
        incoming = self._lookup(envelope)
        if incoming is None or incoming.done:
            return
        payload = envelope.payload
        index = payload.get("index")
        if isinstance(index, float) and index.is_integer():
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < incoming.chunks:
            return self._fail(incoming, f"chunk index {printable(str(index)[:32])} is out of range")
        for field_name, limit in (("ciphertext", _MAX_CIPHERTEXT_CHARS), ("content_sig", _MAX_SIG_CHARS)):
            value = payload.get(field_name)
            if not isinstance(value, str) or not value or len(value) > limit:
                return self._fail(incoming, f"chunk {index} is malformed ({field_name})")
        self._touch(incoming)
        if incoming.state[index]:
            self._count("duplicate_chunks")
            return None
        session = self._session
        incoming.state[index] = 1
        incoming.in_flight += 1
        self._decrypting(+1)
        expected = min(CHUNK_BYTES, incoming.size - index * CHUNK_BYTES)
        job = self._workers.run(
            _receive_chunk,
            session._server_key,
            payload,
            envelope.sig,
            incoming.sender_key,
            session._key,
            incoming.sender,
            envelope.to,
            envelope.ts,
            incoming.fd,
            index,
            expected,
        )
        job.addCallbacks(
            self._chunk_written,
            self._chunk_failed,
            callbackArgs=(incoming, index),
            errbackArgs=(incoming, index),
        )
        job.addErrback(self._internal_error, incoming)
        return None

    def _chunk_written(self, length: int, incoming: _Incoming, index: int) -> None:
        self._settled(incoming)
        if incoming.done:
            return self._release(incoming)
        incoming.state[index] = 2
        incoming.received += 1
        incoming.written_bytes += length
        self._maybe_complete(incoming)
        return None

    def _chunk_failed(self, failure: Any, incoming: _Incoming, index: int) -> None:
        self._settled(incoming)
        if incoming.done:
            return self._release(incoming)
        if failure.check(ChunkRejected):
            return self._fail(incoming, f"chunk {index} rejected: {failure.getErrorMessage()}")
        if failure.check(OSError):
            return self._fail(incoming, f"cannot write {incoming.temp_path} ({failure.getErrorMessage()})")
        _log.failure(
            "Receiving chunk {index} of {file_id} failed", failure, index=index, file_id=incoming.file_id
        )
        return self._fail(incoming, "internal error")

    def _settled(self, incoming: _Incoming) -> None:
        incoming.in_flight -= 1
        self._decrypting(-1)

    def _decrypting(self, delta: int) -> None:
        """Count chunks queued for decryption; stop reading the socket while too many wait."""
        self._decrypts += delta
        transport = getattr(self._session._link, "transport", None)
        if not self._reading_paused and self._decrypts >= MAX_DECRYPTS_IN_FLIGHT:
            if hasattr(transport, "pauseProducing"):
                self._reading_paused = True
                transport.pauseProducing()
        elif self._reading_paused and self._decrypts <= MAX_DECRYPTS_IN_FLIGHT // 2:
            self._reading_paused = False
            if hasattr(transport, "resumeProducing"):
                transport.resumeProducing()

    def _on_end(self, envelope: wire.Envelope) -> None:
        incoming = self._lookup(envelope)
        if incoming is None or incoming.done or incoming.ended:
            return None
        if self._session._signed_by_server(envelope) is not True:
            return self._fail(incoming, "FILE_END has an invalid server signature")
        payload = envelope.payload
        chunks = payload.get("chunks")
        if isinstance(chunks, bool) or not isinstance(chunks, int) or chunks < 0:
            chunks = None
        content_sig = payload.get("content_sig")
        if content_sig is not None:  # our profile signs FILE_END; other senders may not
            valid = isinstance(content_sig, str) and chunks is not None
            if valid:
                preimage = file_end_preimage(
                    incoming.file_id, chunks, incoming.sender, envelope.to, envelope.ts
                )
                valid = crypto.verify_content_sig(incoming.sender_key, preimage, content_sig)
            if not valid:
                return self._fail(incoming, "FILE_END has an invalid signature")
        incoming.ended = True
        incoming.sent_chunks = chunks
        self._touch(incoming)
        self._maybe_complete(incoming)
        return None

    def _maybe_complete(self, incoming: _Incoming) -> None:
        if not incoming.ended or incoming.in_flight or incoming.finishing or incoming.done:
            return
        if incoming.received != incoming.chunks:
            why = f"incomplete: {incoming.received} of {incoming.chunks} chunks arrived"
            if incoming.sent_chunks is not None and incoming.sent_chunks < incoming.chunks:
                why += f" (the sender stopped after {incoming.sent_chunks})"
            return self._fail(incoming, why)
        if incoming.written_bytes != incoming.size:
            return self._fail(incoming, f"{incoming.written_bytes} bytes arrived, not {incoming.size}")
        incoming.finishing = True
        self._stop_timer(incoming)
        job = self._workers.run(
            _complete_file,
            incoming.fd,
            incoming.temp_path,
            incoming.final_path,
            incoming.size,
            incoming.sha256,
        )
        job.addCallbacks(
            self._completed, self._completion_failed, callbackArgs=(incoming,), errbackArgs=(incoming,)
        )
        job.addErrback(self._internal_error, incoming)

    def _completed(self, _: object, incoming: _Incoming) -> None:
        incoming.finishing = False
        self._close(incoming)
        self._count("files_received")
        _log.info(
            "Received file {file_id} ({size} bytes) from {sender}",
            file_id=incoming.file_id,
            size=incoming.size,
            sender=incoming.sender,
        )
        self._show(
            f"[FILE] received {display_name(incoming.name)} from {incoming.sender} -> {incoming.final_path} "
            f"({incoming.size} bytes, sha256 ok)"
        )

    def _completion_failed(self, failure: Any, incoming: _Incoming) -> None:
        incoming.finishing = False
        if failure.check(ChunkRejected, OSError):
            return self._fail(incoming, failure.getErrorMessage())
        _log.failure("Completing file {file_id} failed", failure, file_id=incoming.file_id)
        return self._fail(incoming, "internal error")

    def _internal_error(self, failure: Any, incoming: _Incoming) -> None:
        _log.failure("File {file_id}: internal error", failure, file_id=incoming.file_id)

    # ------------------------------------------------------------ failure and cleanup

    def _fail(self, incoming: _Incoming, reason: str) -> None:
        if incoming.done:
            return
        self._close(incoming)
        _discard_partial(incoming.temp_path)
        self._count("files_receive_failed")
        _log.info(
            "File {file_id} from {sender} failed: {reason}",
            file_id=incoming.file_id,
            sender=incoming.sender,
            reason=reason,
        )
        self._show(
            f"[FILE] transfer {incoming.file_id} ({display_name(incoming.name)}) from {incoming.sender} "
            f"failed: {reason}"
        )

    def _close(self, incoming: _Incoming) -> None:
        """Forget the transfer; its descriptor is closed once no job uses it any more."""
        incoming.done = True
        self._stop_timer(incoming)
        if self._incoming.get((incoming.sender, incoming.file_id)) is incoming:
            del self._incoming[(incoming.sender, incoming.file_id)]
            self._finished_incoming.append((incoming.sender, incoming.file_id))
        self._release(incoming)

    def _release(self, incoming: _Incoming) -> None:
        if incoming.in_flight or incoming.finishing or incoming.fd < 0:
            return
        fd, incoming.fd = incoming.fd, -1
        os.close(fd)

    def _touch(self, incoming: _Incoming) -> None:
        if incoming.timer is not None and incoming.timer.active():
            incoming.timer.reset(self.stall_timeout)
        else:
            incoming.timer = self._clock.callLater(self.stall_timeout, self._stalled, incoming)

    def _stop_timer(self, incoming: _Incoming) -> None:
        if incoming.timer is not None and incoming.timer.active():
            incoming.timer.cancel()
        incoming.timer = None

    def _stalled(self, incoming: _Incoming) -> None:
        incoming.timer = None
        self._fail(
            incoming,
            f"timed out: nothing arrived for {self.stall_timeout:g} s "
            f"({incoming.received} of {incoming.chunks} chunks received)",
        )

    def connection_lost(self, reason: str) -> None:
        """The WebSocket closed: outgoing transfers stop, incoming ones cannot complete."""
        for out in list(self._outgoing.values()):
            out.fail(f"the connection to the server was lost ({reason})")
        for incoming in list(self._incoming.values()):
            self._fail(incoming, "the connection to the server was lost")
        self._reading_paused = False

    def shutdown(self) -> None:
        """Stop everything (the client exits): timers cancelled, partial files deleted."""
        for out in list(self._outgoing.values()):
            out.fail("the client is shutting down")
        for incoming in list(self._incoming.values()):
            self._fail(incoming, "the client is shutting down")


def _fire_frame(result: tuple[bytes, bytes], frame: Deferred) -> tuple[bytes, bytes]:
    frame.callback(result[0])
    return result


def _fail_frame(failure: Any, frame: Deferred) -> Any:
    """The chunk could not be made: its place in the send queue is skipped (a frame of None is
    not written); the sending loop reports the failure itself."""
    frame.callback(None)
    return failure


__all__ = [
    "CHUNK_BYTES",
    "FileTransfers",
    "Progress",
    "chunk_count",
    "display_name",
]
