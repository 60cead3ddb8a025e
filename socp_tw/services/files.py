"""The server's side of file transfer (PROTOCOL.md §6, docs/FILES.md): policy and pacing.

:class:`FileRelay` handles ``FILE_START`` / ``FILE_CHUNK`` / ``FILE_END`` on authenticated
user links (through :meth:`UserSide.register_user_frame`), on the *sender's* server, where a
transfer enters the network.  It never decrypts; it checks, paces and routes:

- **limits**: ``size`` at most ``max_file_bytes`` (``FILE_TOO_LARGE``); at most
  ``max_transfers_per_user`` open transfers per user (``RATE_LIMITED``); chunk indexes below
  the file's chunk count and no more chunks than that (``BAD_FIELD``); a chunk or end for no
  open transfer gets ``FILE_UNKNOWN``.  Every ERROR names the ``file_id``.
- **content**: each frame's ``content_sig`` is checked (``INVALID_SIG``) before it is routed.
- **rate**: a token bucket per user (``frame_rate`` frames/s, ``frame_burst``).  A user going
  faster is slowed down, not refused: its frame waits, the link's later frames wait behind
  it, and the user side stops reading the connection (TCP pushes back on the client).
- **bounded frames per transfer**: a link's frames are handled one at a time, in order.  A
  file frame is verified on the worker pool, which is FIFO, so its check runs only once the
  previous frame's signing job (queued by the router) has started: at most ``workers.size + 1``
  frames of a transfer wait for a signature.  Before routing, the relay waits while the next
  hop (the recipient's link, or the link to its server) has more than ``max_send_buffer``
  bytes not yet taken by the kernel.  So a slow path slows the sender down instead of
  filling the server's memory.
- **timeouts**: a transfer with no frame for ``idle_timeout`` seconds is dropped and its
  sender gets ``ERROR TIMEOUT``; a sender that goes offline loses its open transfers.

The recipient's server needs no state: the router checks and delivers each frame as it
comes from the mesh, in order.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import deferLater
from zope.interface import implementer

from socp_tw import crypto, wire
from socp_tw.content import extract_fields, verify_user_content
from socp_tw.interfaces import (
    ILink,
    IPeerLinks,
    IPresence,
    IPresenceObserver,
    IRouter,
    IWorkers,
    UserNotFound,
)
from socp_tw.limits import DEFAULT_LIMITS, Limits, RateLimiter
from socp_tw.logs import get_logger

__all__ = [
    "CHUNK_BYTES",
    "FILE_FRAMES",
    "FileRelay",
    "chunk_count",
    "send_backlog",
]

FILE_FRAMES = ("FILE_START", "FILE_CHUNK", "FILE_END")

#: Plaintext bytes per chunk: one RSA-4096 OAEP-SHA256 block (PROTOCOL.md §2).
CHUNK_BYTES = crypto.OAEP_MAX_PLAINTEXT

FILE_FRAME_RATE = 500.0  # file frames per second per user, sustained (~218 KiB/s of file)
FILE_FRAME_BURST = 1000.0
MAX_SEND_BUFFER = 256 * 1024  # bytes queued on the next hop before file frames wait
PRESSURE_POLL = 0.02  # seconds between looks at a full next hop
MAX_SENDER_PUB = 16384


def chunk_count(size: int) -> int:
    """How many chunks carry a file of ``size`` bytes (0 for an empty file)."""
    return math.ceil(size / CHUNK_BYTES)


def send_backlog(link: Any) -> int:
    """Bytes sent to ``link`` that its transport has not yet handed to the kernel.

    Counts the ready frames its sender holds back (``queued_bytes``) and reads Twisted's
    ``FileDescriptor`` buffers (``dataBuffer``, ``_tempDataLen``), looking through a TLS
    wrapper; 0 when the link has no such transport (fakes, unknown transports).
    """
    total = int(getattr(link, "queued_bytes", 0) or 0)  # ready frames its sender holds back
    transport = getattr(link, "transport", None)
    for _ in range(4):  # link -> (TLS wrapper ->) TCP connection
        if transport is None:
            break
        buffered = getattr(transport, "dataBuffer", None)
        if isinstance(buffered, (bytes, bytearray, memoryview)):
            total += len(buffered) - int(getattr(transport, "offset", 0) or 0)
            total += int(getattr(transport, "_tempDataLen", 0) or 0)
        pending = getattr(transport, "_appSendBuffer", None)
        if isinstance(pending, list):
            total += sum(len(item) for item in pending if isinstance(item, bytes))
        transport = getattr(transport, "transport", None)
    return total


class FileTooLarge(wire.FrameError):
    """FILE_START announces more bytes than this server relays."""

    code = "FILE_TOO_LARGE"


class FileUnknown(wire.FrameError):
    """A FILE_CHUNK or FILE_END for a transfer that is not open (never started, ended or dropped)."""

    code = "FILE_UNKNOWN"


class _UserNotFound(wire.FrameError):
    code = "USER_NOT_FOUND"


class _Timeout(wire.FrameError):
    code = "TIMEOUT"


class _Dropped(Exception):
    """The transfer was dropped (timeout, sender offline) while one of its frames waited."""


@dataclass(eq=False)
class Transfer:
    """One open transfer, keyed by (sender, file_id)."""

    sender: str
    file_id: str
    recipient: str
    size: int
    chunks: int  # how many the file has
    started: float
    relayed: int = 0  # chunks routed so far
    timer: IDelayedCall | None = None


@implementer(IPresenceObserver)
class FileRelay(Service):
    """Checks, paces and routes the FILE_* frames of local senders."""

    name = "files"
    _log = get_logger("socp_tw.files")

    def __init__(
        self,
        users: Any,
        presence: IPresence,
        router: IRouter,
        workers: IWorkers,
        peers: IPeerLinks | None = None,
        *,
        clock: Any = None,
        limits: Limits = DEFAULT_LIMITS,
        max_file_bytes: int | None = None,
        frame_rate: float = FILE_FRAME_RATE,
        frame_burst: float = FILE_FRAME_BURST,
        idle_timeout: float | None = None,
        max_send_buffer: int = MAX_SEND_BUFFER,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self._users = users
        self._presence = IPresence(presence)
        self._router = IRouter(router)
        self._workers = IWorkers(workers)
        self._peers = peers
        self._clock = clock
        self.max_file_bytes = limits.max_file_bytes if max_file_bytes is None else max_file_bytes
        self.max_transfers_per_user = limits.max_transfers_per_user
        self.idle_timeout = limits.transfer_idle_timeout if idle_timeout is None else idle_timeout
        self.max_send_buffer = max_send_buffer
        self._rate = RateLimiter(frame_rate, frame_burst, clock, max_keys=limits.max_local_users)
        self._transfers: dict[tuple[str, str], Transfer] = {}
        self.counters: Counter[str] = Counter()
        for kind in FILE_FRAMES:
            users.register_user_frame(kind, self._handler(kind))
        self._presence.add_observer(self)

    # ------------------------------------------------------------ public

    def transfers_of(self, sender: str) -> list[Transfer]:
        """The open transfers of ``sender``."""
        return [t for t in self._transfers.values() if t.sender == sender]

    def __len__(self) -> int:
        return len(self._transfers)

    def stopService(self) -> None:
        super().stopService()
        for transfer in list(self._transfers.values()):
            self._forget(transfer)

    # ------------------------------------------------------------ IPresenceObserver

    def user_online(self, entry: Any) -> None:
        """Nothing to do: transfers start with FILE_START."""

    def user_offline(self, entry: Any) -> None:
        """A sender that leaves loses its open transfers (the recipient's client times them out)."""
        if not entry.local:
            return
        self._rate.forget(entry.user_id)
        for transfer in self.transfers_of(entry.user_id):
            self.counters["dropped.sender_offline"] += 1
            self._log.info(
                "File {file_id} {sender} -> {recipient} dropped: the sender went offline",
                file_id=transfer.file_id,
                sender=transfer.sender,
                recipient=transfer.recipient,
            )
            self._forget(transfer)

    # ------------------------------------------------------------ handling

    def _handler(self, kind: str):
        def handle(link: ILink, sender: str, envelope: wire.Envelope) -> Deferred | None:
            d = Deferred.fromCoroutine(self._handle(kind, link, sender, envelope))
            return None if d.called else d

        return handle

    async def _handle(self, kind: str, link: ILink, sender: str, envelope: wire.Envelope) -> None:
        raw_id = envelope.payload.get("file_id")
        file_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= 128 else None
        self.counters["frames." + kind] += 1
        try:
            if kind == "FILE_START":
                await self._start(sender, envelope)
            elif kind == "FILE_CHUNK":
                await self._chunk(sender, envelope)
            else:
                await self._end(sender, envelope)
        except _Dropped:
            self.counters["late_frames"] += 1
        except wire.FrameError as error:  # BadKey and ContentError included
            self.counters["errors." + error.code] += 1
            if error.code in ("FILE_UNKNOWN", "BAD_FIELD", "INVALID_SIG", "USER_NOT_FOUND"):
                self._log.debug(
                    "{kind} {file_id} from {sender} refused: {code} {detail}",
                    kind=kind,
                    file_id=file_id,
                    sender=sender,
                    code=error.code,
                    detail=error.detail,
                )
            self._error(link, error.code, error.detail, kind, file_id)
        except Exception:
            self._log.failure(
                "Failed handling {kind} {file_id} from {sender}", kind=kind, file_id=file_id, sender=sender
            )
            self._error(link, "INTERNAL", f"the server failed handling {kind}", kind, file_id)

    def _error(self, link: ILink, code: str, detail: str, kind: str, file_id: str | None) -> None:
        extra = {} if file_id is None else {"file_id": file_id}
        self._users.send_error(link, code, detail, ref=kind, **extra)

    def _recipient(self, envelope: wire.Envelope) -> str:
        if not wire.is_uuid(envelope.to):
            raise wire.BadUUID(f"{envelope.type} 'to' must be the recipient's user id", "to")
        return envelope.to

    def _sender_pub(self, sender: str, payload: dict[str, Any]) -> str:
        """The key ``sender`` authenticated with; a ``sender_pub`` in the payload must be that key."""
        own = self._users.authenticated_key(sender)
        if own is None:
            raise _Dropped()
        claimed = payload.get("sender_pub")
        if claimed is not None:
            text = wire.require_str(payload, "sender_pub", max_len=MAX_SENDER_PUB)
            if text != own:
                try:
                    same = crypto.encode_public_key(crypto.load_public_key(text)) == own
                except crypto.BadKey:
                    same = False
                if not same:
                    raise wire.InvalidSig("sender_pub is not the key you authenticated with", "sender_pub")
        return own

    async def _start(self, sender: str, envelope: wire.Envelope) -> None:
        recipient = self._recipient(envelope)
        fields = extract_fields("FILE_START", envelope.payload)
        file_id, size = fields["file_id"], fields["size"]
        if fields["mode"] != "dm":
            raise wire.BadFieldType("only mode 'dm' file transfers are relayed here", "mode")
        if size > self.max_file_bytes:
            raise FileTooLarge(
                f"file is {size} bytes; this server relays files of at most {self.max_file_bytes} bytes"
            )
        if (sender, file_id) in self._transfers:
            raise wire.BadFieldType(f"file_id {file_id} is already in progress", "file_id")
        if len(self.transfers_of(sender)) >= self.max_transfers_per_user:
            raise wire.RateLimited(
                f"at most {self.max_transfers_per_user} file transfers at once; wait for one to finish"
            )
        sender_pub = self._sender_pub(sender, envelope.payload)
        await self._throttle(sender)
        await self._room(recipient, deadline=self._clock.seconds() + self.idle_timeout)
        await self._workers.run(
            verify_user_content, "FILE_START", fields, sender, recipient, envelope.ts, sender_pub
        )
        # Re-check after waiting: the same id may have started meanwhile, or the sender left.
        if (sender, file_id) in self._transfers:
            raise wire.BadFieldType(f"file_id {file_id} is already in progress", "file_id")
        sender_pub = self._sender_pub(sender, envelope.payload)
        self._route("FILE_START", recipient, fields, envelope.ts, sender, sender_pub)
        transfer = Transfer(sender, file_id, recipient, size, chunk_count(size), self._clock.seconds())
        self._transfers[(sender, file_id)] = transfer
        self._touch(transfer)
        self.counters["started"] += 1
        self._log.info(
            "File {file_id} {sender} -> {recipient} started ({size} bytes, {chunks} chunks)",
            file_id=file_id,
            sender=sender,
            recipient=recipient,
            size=size,
            chunks=transfer.chunks,
        )

    def _open(self, sender: str, file_id: str, recipient: str) -> Transfer:
        transfer = self._transfers.get((sender, file_id))
        if transfer is None:
            raise FileUnknown(f"no transfer of file_id {file_id} is open (never started, ended or timed out)")
        if recipient != transfer.recipient:
            raise wire.BadFieldType(f"file {file_id} goes to {transfer.recipient}, not {recipient}", "to")
        return transfer

    async def _chunk(self, sender: str, envelope: wire.Envelope) -> None:
        recipient = self._recipient(envelope)
        fields = extract_fields("FILE_CHUNK", envelope.payload)
        transfer = self._open(sender, fields["file_id"], recipient)
        self._touch(transfer)
        index = fields["index"]
        if index >= transfer.chunks:
            raise wire.BadFieldType(
                f"chunk index {index} is out of range: a {transfer.size}-byte file has {transfer.chunks} "
                f"chunks (0-{transfer.chunks - 1})"
                if transfer.chunks
                else f"chunk index {index} is out of range: an empty file has no chunks",
                "index",
            )
        if transfer.relayed >= transfer.chunks:
            raise wire.BadFieldType(
                f"file {transfer.file_id} already had its {transfer.chunks} chunks", "index"
            )
        sender_pub = self._sender_pub(sender, envelope.payload)
        await self._throttle(sender, transfer)
        await self._room(recipient, transfer=transfer)
        await self._workers.run(
            verify_user_content, "FILE_CHUNK", fields, sender, recipient, envelope.ts, sender_pub
        )
        self._still_open(transfer)
        transfer.relayed += 1
        self._route("FILE_CHUNK", recipient, fields, envelope.ts, sender, sender_pub, transfer)

    async def _end(self, sender: str, envelope: wire.Envelope) -> None:
        recipient = self._recipient(envelope)
        fields = extract_fields("FILE_END", envelope.payload)
        transfer = self._open(sender, fields["file_id"], recipient)
        self._touch(transfer)
        sender_pub = self._sender_pub(sender, envelope.payload)
        await self._throttle(sender, transfer)
        await self._room(recipient, transfer=transfer)
        if "content_sig" in fields:
            await self._workers.run(
                verify_user_content, "FILE_END", fields, sender, recipient, envelope.ts, sender_pub
            )
        self._still_open(transfer)
        self._forget(transfer)
        self._route("FILE_END", recipient, fields, envelope.ts, sender, sender_pub)
        complete = transfer.relayed == transfer.chunks
        self.counters["ended" if complete else "ended_incomplete"] += 1
        elapsed = max(self._clock.seconds() - transfer.started, 1e-6)
        self._log.info(
            "File {file_id} {sender} -> {recipient} ended: {relayed} of {chunks} chunks relayed "
            "in {elapsed:.1f} s",
            file_id=transfer.file_id,
            sender=sender,
            recipient=recipient,
            relayed=transfer.relayed,
            chunks=transfer.chunks,
            elapsed=elapsed,
        )

    def _route(
        self,
        kind: str,
        recipient: str,
        fields: dict[str, Any],
        ts: int,
        sender: str,
        sender_pub: str,
        transfer: Transfer | None = None,
    ) -> None:
        try:
            self._router.route(kind, recipient, fields, ts, sender, sender_pub)
        except UserNotFound:
            if transfer is not None:
                self._forget(transfer)
            self.counters["recipient_gone"] += 1
            raise _UserNotFound(f"user {recipient} is not online; the transfer was dropped") from None
        self.counters["routed." + kind] += 1

    # ------------------------------------------------------------ pacing

    def _still_open(self, transfer: Transfer) -> None:
        if self._transfers.get((transfer.sender, transfer.file_id)) is not transfer:
            raise _Dropped()

    async def _throttle(self, sender: str, transfer: Transfer | None = None) -> None:
        """Wait until ``sender``'s bucket holds a token (the per-user rate)."""
        while not self._rate.allow(sender):
            self.counters["throttled"] += 1
            await deferLater(self._clock, max(self._rate.retry_after(sender), 0.001), lambda: None)
            if transfer is not None:
                self._still_open(transfer)

    def _next_hop(self, recipient: str) -> ILink | None:
        entry = self._presence.lookup(recipient)
        if entry is None:
            return None
        if entry.local:
            return entry.link
        link_to = getattr(self._peers, "link_to", None)
        return link_to(entry.server_id) if link_to is not None else None

    async def _room(
        self, recipient: str, transfer: Transfer | None = None, deadline: float | None = None
    ) -> None:
        """Wait while the next hop towards ``recipient`` has more than ``max_send_buffer`` bytes queued.

        A transfer's own idle timer ends the wait (the transfer is dropped); a FILE_START waits
        until ``deadline``.
        """
        while send_backlog(self._next_hop(recipient)) > self.max_send_buffer:
            self.counters["waited_for_room"] += 1
            if deadline is not None and self._clock.seconds() >= deadline:
                raise _Timeout(f"the path to {recipient} is not draining; try again later")
            await deferLater(self._clock, PRESSURE_POLL, lambda: None)
            if transfer is not None:
                self._still_open(transfer)

    # ------------------------------------------------------------ timers

    def _touch(self, transfer: Transfer) -> None:
        if transfer.timer is not None and transfer.timer.active():
            transfer.timer.reset(self.idle_timeout)
        else:
            transfer.timer = self._clock.callLater(self.idle_timeout, self._expired, transfer)

    def _forget(self, transfer: Transfer) -> None:
        if self._transfers.get((transfer.sender, transfer.file_id)) is transfer:
            del self._transfers[(transfer.sender, transfer.file_id)]
        if transfer.timer is not None and transfer.timer.active():
            transfer.timer.cancel()
        transfer.timer = None

    def _expired(self, transfer: Transfer) -> None:
        transfer.timer = None
        if self._transfers.get((transfer.sender, transfer.file_id)) is not transfer:
            return
        self._forget(transfer)
        self.counters["timed_out"] += 1
        self._log.info(
            "File {file_id} {sender} -> {recipient} timed out after {relayed} of {chunks} chunks",
            file_id=transfer.file_id,
            sender=transfer.sender,
            recipient=transfer.recipient,
            relayed=transfer.relayed,
            chunks=transfer.chunks,
        )
        link = self._presence.local_link(transfer.sender)
        if link is not None:
            self._error(
                link,
                "TIMEOUT",
                f"file transfer {transfer.file_id} to {transfer.recipient} stalled: nothing for "
                f"{self.idle_timeout:g} s after {transfer.relayed} of {transfer.chunks} chunks; dropped",
                "FILE_CHUNK",
                transfer.file_id,
            )
