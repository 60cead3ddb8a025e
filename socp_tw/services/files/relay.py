"""The :class:`FileRelay` service: checks, paces and routes the FILE_* frames of local senders."""

from __future__ import annotations

from collections import Counter
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from zope.interface import implementer

from socp_tw import crypto, wire
from socp_tw.content import extract_fields, verify_user_content
from socp_tw.interfaces import (
    ILink,
    IPeerLinks,
    IPresence,
    IPresenceObserver,
    IRouter,
    IUserFrames,
    IWorkers,
    UserNotFound,
)
from socp_tw.limits import DEFAULT_LIMITS, Limits
from socp_tw.logs import get_logger
from socp_tw.services.files.pacing import MAX_SEND_BUFFER, Pacer
from socp_tw.services.files.transfers import (
    FILE_FRAMES,
    Dropped,
    FileTooLarge,
    Transfer,
    Transfers,
    chunk_count,
)

__all__ = ["FILE_FRAME_BURST", "FILE_FRAME_RATE", "FileRelay"]

FILE_FRAME_RATE = 500.0  # file frames per second per user, sustained (~218 KiB/s of file)
FILE_FRAME_BURST = 1000.0
MAX_SENDER_PUB = 16384


class _UserNotFound(wire.FrameError):
    code = "USER_NOT_FOUND"


@implementer(IPresenceObserver)
class FileRelay(Service):
    """Checks, paces and routes the FILE_* frames of local senders."""

    name = "files"
    _log = get_logger("socp_tw.files")

    def __init__(
        self,
        users: IUserFrames,
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
        self._users = IUserFrames(users)
        self._presence = IPresence(presence)
        self._router = IRouter(router)
        self._workers = IWorkers(workers)
        self._clock = clock
        self.max_file_bytes = limits.max_file_bytes if max_file_bytes is None else max_file_bytes
        self.max_transfers_per_user = limits.max_transfers_per_user
        self.counters: Counter[str] = Counter()
        self._transfers = Transfers(
            clock,
            limits.transfer_idle_timeout if idle_timeout is None else idle_timeout,
            self._expired,
        )
        self.pacer = Pacer(
            self._presence,
            peers,
            self._transfers,
            self.counters,
            clock,
            frame_rate=frame_rate,
            frame_burst=frame_burst,
            max_senders=limits.max_local_users,
            max_send_buffer=max_send_buffer,
        )
        for kind in FILE_FRAMES:
            self._users.register_user_frame(kind, self._handler(kind))
        self._presence.add_observer(self)

    # ------------------------------------------------------------ public

    @property
    def idle_timeout(self) -> float:
        """Seconds without a frame after which an open transfer is dropped."""
        return self._transfers.idle_timeout

    @idle_timeout.setter
    def idle_timeout(self, seconds: float) -> None:
        self._transfers.idle_timeout = seconds

    @property
    def max_send_buffer(self) -> int:
        """Bytes queued on the next hop above which file frames wait."""
        return self.pacer.max_send_buffer

    def transfers_of(self, sender: str) -> list[Transfer]:
        """The open transfers of ``sender``."""
        return self._transfers.of(sender)

    def __len__(self) -> int:
        return len(self._transfers)

    def stopService(self) -> None:
        super().stopService()
        for transfer in self._transfers.all():
            self._transfers.forget(transfer)

    # ------------------------------------------------------------ IPresenceObserver

    def user_online(self, entry: Any) -> None:
        """Nothing to do: transfers start with FILE_START."""

    def user_offline(self, entry: Any) -> None:
        """A sender that leaves loses its open transfers (the recipient's client times them out)."""
        if not entry.local:
            return
        self.pacer.rate.forget(entry.user_id)
        for transfer in self.transfers_of(entry.user_id):
            self.counters["dropped.sender_offline"] += 1
            self._log.info(
                "File {file_id} {sender} -> {recipient} dropped: the sender went offline",
                file_id=transfer.file_id,
                sender=transfer.sender,
                recipient=transfer.recipient,
            )
            self._transfers.forget(transfer)

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
        except Dropped:
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
            raise Dropped()
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
        await self.pacer.throttle(sender)
        await self.pacer.room(recipient, deadline=self._clock.seconds() + self.idle_timeout)
        await self._workers.run(
            verify_user_content, "FILE_START", fields, sender, recipient, envelope.ts, sender_pub
        )
        # Re-check after waiting: the same id may have started meanwhile, or the sender left.
        if (sender, file_id) in self._transfers:
            raise wire.BadFieldType(f"file_id {file_id} is already in progress", "file_id")
        sender_pub = self._sender_pub(sender, envelope.payload)
        self._route("FILE_START", recipient, fields, envelope.ts, sender, sender_pub)
        transfer = Transfer(sender, file_id, recipient, size, chunk_count(size), self._clock.seconds())
        self._transfers.add(transfer)
        self.counters["started"] += 1
        unsigned = "content_sig" not in fields
        if unsigned:
            self.counters["started_unsigned"] += 1
        self._log.info(
            "File {file_id} {sender} -> {recipient} started ({size} bytes, {chunks} chunks{unsigned})",
            file_id=file_id,
            sender=sender,
            recipient=recipient,
            size=size,
            chunks=transfer.chunks,
            unsigned=", unsigned: its client sends no content_sig" if unsigned else "",
        )

    async def _chunk(self, sender: str, envelope: wire.Envelope) -> None:
        recipient = self._recipient(envelope)
        fields = extract_fields("FILE_CHUNK", envelope.payload)
        transfer = self._transfers.get(sender, fields["file_id"], recipient)
        self._transfers.touch(transfer)
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
        await self.pacer.throttle(sender, transfer)
        await self.pacer.room(recipient, transfer=transfer)
        await self._workers.run(
            verify_user_content, "FILE_CHUNK", fields, sender, recipient, envelope.ts, sender_pub
        )
        self._transfers.still_open(transfer)
        transfer.relayed += 1
        self._route("FILE_CHUNK", recipient, fields, envelope.ts, sender, sender_pub, transfer)

    async def _end(self, sender: str, envelope: wire.Envelope) -> None:
        recipient = self._recipient(envelope)
        fields = extract_fields("FILE_END", envelope.payload)
        transfer = self._transfers.get(sender, fields["file_id"], recipient)
        self._transfers.touch(transfer)
        sender_pub = self._sender_pub(sender, envelope.payload)
        await self.pacer.throttle(sender, transfer)
        await self.pacer.room(recipient, transfer=transfer)
        if "content_sig" in fields:
            await self._workers.run(
                verify_user_content, "FILE_END", fields, sender, recipient, envelope.ts, sender_pub
            )
        self._transfers.still_open(transfer)
        self._transfers.forget(transfer)
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
                self._transfers.forget(transfer)
            self.counters["recipient_gone"] += 1
            raise _UserNotFound(
                f"user {recipient} is not online; files are not held for offline users, the transfer"
                " was dropped"
            ) from None
        self.counters["routed." + kind] += 1

    def _expired(self, transfer: Transfer) -> None:
        """``transfer`` had no frame for ``idle_timeout`` seconds: it is gone; tell its sender."""
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
