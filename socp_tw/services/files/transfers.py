"""Open file transfers on the sender's server: what each one is, its limits, its idle timer."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall

from socp_tw import crypto, wire

__all__ = [
    "CHUNK_BYTES",
    "FILE_FRAMES",
    "FileTooLarge",
    "FileUnknown",
    "Transfer",
    "Transfers",
    "chunk_count",
]

FILE_FRAMES = ("FILE_START", "FILE_CHUNK", "FILE_END")

#: Plaintext bytes per chunk: one RSA-4096 OAEP-SHA256 block (PROTOCOL.md §2).
CHUNK_BYTES = crypto.OAEP_MAX_PLAINTEXT


def chunk_count(size: int) -> int:
    """How many chunks carry a file of ``size`` bytes (0 for an empty file)."""
    return math.ceil(size / CHUNK_BYTES)


class FileTooLarge(wire.FrameError):
    """FILE_START announces more bytes than this server relays."""

    code = "FILE_TOO_LARGE"


class FileUnknown(wire.FrameError):
    """A FILE_CHUNK or FILE_END for a transfer that is not open (never started, ended or dropped)."""

    code = "FILE_UNKNOWN"


class Dropped(Exception):
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


class Transfers:
    """The open transfers, each dropped after ``idle_timeout`` seconds without a frame."""

    def __init__(self, clock: Any, idle_timeout: float, on_expired: Callable[[Transfer], None]) -> None:
        self._clock = clock
        self.idle_timeout = idle_timeout
        self._on_expired = on_expired
        self._open: dict[tuple[str, str], Transfer] = {}

    def __len__(self) -> int:
        return len(self._open)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._open

    def of(self, sender: str) -> list[Transfer]:
        """The open transfers of ``sender``."""
        return [t for t in self._open.values() if t.sender == sender]

    def all(self) -> list[Transfer]:
        return list(self._open.values())

    def add(self, transfer: Transfer) -> None:
        self._open[(transfer.sender, transfer.file_id)] = transfer
        self.touch(transfer)

    def get(self, sender: str, file_id: str, recipient: str) -> Transfer:
        """The open transfer ``file_id`` of ``sender`` to ``recipient``; ``FILE_UNKNOWN`` or ``BAD_FIELD``."""
        transfer = self._open.get((sender, file_id))
        if transfer is None:
            raise FileUnknown(f"no transfer of file_id {file_id} is open (never started, ended or timed out)")
        if recipient != transfer.recipient:
            raise wire.BadFieldType(f"file {file_id} goes to {transfer.recipient}, not {recipient}", "to")
        return transfer

    def still_open(self, transfer: Transfer) -> None:
        """Raise :class:`Dropped` if ``transfer`` was dropped while one of its frames waited."""
        if self._open.get((transfer.sender, transfer.file_id)) is not transfer:
            raise Dropped()

    def touch(self, transfer: Transfer) -> None:
        """A frame of ``transfer`` arrived: its idle timer starts again."""
        if transfer.timer is not None and transfer.timer.active():
            transfer.timer.reset(self.idle_timeout)
        else:
            transfer.timer = self._clock.callLater(self.idle_timeout, self._expired, transfer)

    def forget(self, transfer: Transfer) -> None:
        if self._open.get((transfer.sender, transfer.file_id)) is transfer:
            del self._open[(transfer.sender, transfer.file_id)]
        if transfer.timer is not None and transfer.timer.active():
            transfer.timer.cancel()
        transfer.timer = None

    def _expired(self, transfer: Transfer) -> None:
        transfer.timer = None
        if self._open.get((transfer.sender, transfer.file_id)) is not transfer:
            return
        self.forget(transfer)
        self._on_expired(transfer)
