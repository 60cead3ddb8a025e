"""Sending a file (``/file <uuid> <path>``): hash it, then stream encrypted, signed chunks with a
bounded window, paused while the WebSocket's send buffer is full; the server's errors about it."""

from __future__ import annotations

import hashlib
import os
import stat
from collections import deque
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from zope.interface import implementer

from socp_tw import crypto, wire
from socp_tw.client.files.base import MAX_RECENT, TransfersBase
from socp_tw.client.files.jobs import FileChanged, chunk_count, chunk_frame, end_frame, hash_file, start_frame
from socp_tw.client.files.progress import Progress, display_name
from socp_tw.client.files.receive import MAX_NAME_CHARS
from socp_tw.client.pins import CHANGED, NEW
from socp_tw.client.text import printable
from socp_tw.logs import get_logger

_log = get_logger("socp_tw.client.files")


@implementer(IPushProducer)
@dataclass(eq=False)
class Outgoing:
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


class Sending(TransfersBase):
    """``/file``: one outgoing transfer at a time, per command."""

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
            sha256 = await self._workers.run(hash_file, fd, size)
        except (OSError, FileChanged) as e:
            self._show(f"[FILE] sending {shown} failed: cannot read it ({e})")
            return
        if not session.logged_in or session._sender is None:
            self._show(f"[FILE] sending {shown} failed: the connection was lost")
            return
        out = Outgoing(wire.new_uuid4(), name, user_id, self._clock, self.stall_timeout)
        self._outgoing[out.file_id] = out
        transport = getattr(session._link, "transport", None)
        producing = self._register_producer(transport, out)
        progress = Progress(session.ui, self._clock, f"[FILE] sending {shown}", size)
        sent = 0
        try:
            key, me = session._key, session.user_id
            start = self._workers.run(
                start_frame, key, out.file_id, name, size, sha256, me, user_id, session._now_ms()
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

    def _register_producer(self, transport: Any, out: Outgoing) -> bool:
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
        out: Outgoing,
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
                    chunk_frame, key, recipient_key, fd, size, next_index, file_id, me, to, session._now_ms()
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
        self, out: Outgoing, sent: int, size: int, shown: str, progress: Progress
    ) -> None:
        session = self._session
        if session._sender is not None and session.logged_in:
            end = self._workers.run(
                end_frame, session._key, out.file_id, sent, session.user_id, out.recipient, session._now_ms()
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

    def error_received(self, code: str, detail: str, payload: dict[str, Any]) -> bool:
        """An ERROR whose ``msg_ref`` is a FILE_* type: fail the transfer it names; True if handled."""
        file_id = payload.get("file_id")
        user_id = payload.get("user_id")
        reason = f"{code}: {detail}"
        targets: list[Outgoing] = []
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


def _fire_frame(result: tuple[bytes, bytes], frame: Deferred) -> tuple[bytes, bytes]:
    frame.callback(result[0])
    return result


def _fail_frame(failure: Any, frame: Deferred) -> Any:
    """The chunk could not be made: its place in the send queue is skipped (a frame of None is
    not written); the sending loop reports the failure itself."""
    frame.callback(None)
    return failure
