"""Receiving a file, after its start: chunks decrypted and written at their offsets on the
workers, ``FILE_END``, the final checks, and the cleanup of a failed or stalled transfer."""

from __future__ import annotations

import os
from typing import Any

from socp_tw import crypto, wire
from socp_tw.client.files.base import TransfersBase
from socp_tw.client.files.jobs import (
    CHUNK_BYTES,
    ChunkRejected,
    complete_file,
    discard_partial,
    receive_chunk,
)
from socp_tw.client.files.progress import display_name
from socp_tw.client.files.receive import MAX_SIG_CHARS, UNSIGNED, Incoming
from socp_tw.client.text import printable
from socp_tw.content import file_end_preimage
from socp_tw.logs import get_logger

_log = get_logger("socp_tw.client.files")

MAX_DECRYPTS_IN_FLIGHT = 1024  # chunks queued for decryption before we stop reading the socket
_MAX_CIPHERTEXT_CHARS = 1024


class Assembling(TransfersBase):
    """Chunks and FILE_END of incoming transfers, until done or failed."""

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
        for field_name, limit in (("ciphertext", _MAX_CIPHERTEXT_CHARS), ("content_sig", MAX_SIG_CHARS)):
            if field_name == "content_sig" and incoming.unsigned and field_name not in payload:
                continue  # chunks of an unsigned file carry none; a signed file's chunks must
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
            receive_chunk,
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

    def _chunk_written(self, length: int, incoming: Incoming, index: int) -> None:
        self._settled(incoming)
        if incoming.done:
            return self._release(incoming)
        incoming.state[index] = 2
        incoming.received += 1
        incoming.written_bytes += length
        self._maybe_complete(incoming)
        return None

    def _chunk_failed(self, failure: Any, incoming: Incoming, index: int) -> None:
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

    def _settled(self, incoming: Incoming) -> None:
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

    def _maybe_complete(self, incoming: Incoming) -> None:
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
            complete_file,
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

    def _completed(self, _: object, incoming: Incoming) -> None:
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
            f"({incoming.size} bytes, sha256 ok{', ' + UNSIGNED if incoming.unsigned else ''})"
        )

    def _completion_failed(self, failure: Any, incoming: Incoming) -> None:
        incoming.finishing = False
        if failure.check(ChunkRejected, OSError):
            return self._fail(incoming, failure.getErrorMessage())
        _log.failure("Completing file {file_id} failed", failure, file_id=incoming.file_id)
        return self._fail(incoming, "internal error")

    def _internal_error(self, failure: Any, incoming: Incoming) -> None:
        _log.failure("File {file_id}: internal error", failure, file_id=incoming.file_id)

    def _fail(self, incoming: Incoming, reason: str) -> None:
        if incoming.done:
            return
        self._close(incoming)
        discard_partial(incoming.temp_path)
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

    def _close(self, incoming: Incoming) -> None:
        """Forget the transfer; its descriptor is closed once no job uses it any more."""
        incoming.done = True
        self._stop_timer(incoming)
        if self._incoming.get((incoming.sender, incoming.file_id)) is incoming:
            del self._incoming[(incoming.sender, incoming.file_id)]
            self._finished_incoming.append((incoming.sender, incoming.file_id))
        self._release(incoming)

    def _release(self, incoming: Incoming) -> None:
        if incoming.in_flight or incoming.finishing or incoming.fd < 0:
            return
        fd, incoming.fd = incoming.fd, -1
        os.close(fd)

    def _touch(self, incoming: Incoming) -> None:
        if incoming.timer is not None and incoming.timer.active():
            incoming.timer.reset(self.stall_timeout)
        else:
            incoming.timer = self._clock.callLater(self.stall_timeout, self._stalled, incoming)

    def _stop_timer(self, incoming: Incoming) -> None:
        if incoming.timer is not None and incoming.timer.active():
            incoming.timer.cancel()
        incoming.timer = None

    def _stalled(self, incoming: Incoming) -> None:
        incoming.timer = None
        self._fail(
            incoming,
            f"timed out: nothing arrived for {self.stall_timeout:g} s "
            f"({incoming.received} of {incoming.chunks} chunks received)",
        )
