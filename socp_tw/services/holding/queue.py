"""Where held DMs are kept: SQLite tables of schema 4, or memory (tests, no database).

:class:`SQLHeldQueue` runs its statements on the store's one database thread
(``SQLiteStore.run_interaction``), so they are serialised with every other write and never
block the reactor; :class:`MemoryHeldQueue` gives the same answers, already fired.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed


@dataclass(frozen=True, slots=True)
class HeldDM:
    """One held DM: everything needed to deliver it later exactly as it was sent."""

    seq: int
    recipient: str
    sender: str
    ts: int
    ref: str
    ciphertext: str
    content_sig: str
    sender_pub: str
    size: int
    held_at: int  # Unix ms

    @property
    def fields(self) -> dict[str, str]:
        return {"ciphertext": self.ciphertext, "content_sig": self.content_sig}


_COLUMNS = "seq, recipient, sender, ts, ref, ciphertext, content_sig, sender_pub, size, held_at"


def _insert(txn, dm: HeldDM) -> int | None:
    txn.execute(
        "INSERT INTO held_messages (recipient, sender, ts, ref, ciphertext, content_sig, sender_pub, size,"
        " held_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (ref) DO NOTHING",
        (
            dm.recipient,
            dm.sender,
            dm.ts,
            dm.ref,
            dm.ciphertext,
            dm.content_sig,
            dm.sender_pub,
            dm.size,
            dm.held_at,
        ),
    )
    return txn.lastrowid if txn.rowcount == 1 else None


def _for_recipient(txn, recipient: str, limit: int) -> list[HeldDM]:
    txn.execute(
        f"SELECT {_COLUMNS} FROM held_messages WHERE recipient = ? ORDER BY seq LIMIT ?", (recipient, limit)
    )
    return [HeldDM(*row) for row in txn.fetchall()]


def _remove(txn, refs: list[str]) -> int:
    txn.executemany("DELETE FROM held_messages WHERE ref = ?", [(ref,) for ref in refs])
    return txn.rowcount


def _expire(txn, before_ms: int, refs_before_ms: int) -> list[HeldDM]:
    txn.execute(f"SELECT {_COLUMNS} FROM held_messages WHERE held_at < ? ORDER BY seq", (before_ms,))
    gone = [HeldDM(*row) for row in txn.fetchall()]
    txn.execute("DELETE FROM held_messages WHERE held_at < ?", (before_ms,))
    txn.execute("DELETE FROM delivered_refs WHERE at < ?", (refs_before_ms,))
    return gone


def _claim(txn, ref: str, now_ms: int) -> bool:
    txn.execute(
        "INSERT INTO delivered_refs (ref, at) VALUES (?, ?) ON CONFLICT (ref) DO NOTHING", (ref, now_ms)
    )
    return txn.rowcount == 1


def read_held_summary(path: str | Path) -> list[tuple[str, str, int]]:
    """(recipient, sender, size) of every held DM, read synchronously at start-up (like the
    schema migration) so the bounds are right before anyone can connect."""
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute("SELECT recipient, sender, size FROM held_messages ORDER BY seq").fetchall()
    finally:
        conn.close()


class SQLHeldQueue:
    """The held DMs in the server's database."""

    def __init__(self, run_interaction: Callable[..., Deferred]) -> None:
        self._run = run_interaction

    def add(self, dm: HeldDM) -> Deferred:
        """Fire with the row's seq once written, or None if a DM with its ref is held already."""
        return self._run(_insert, dm)

    def for_recipient(self, recipient: str, limit: int) -> Deferred:
        """Fire with the oldest ``limit`` DMs held for ``recipient``, oldest first."""
        return self._run(_for_recipient, recipient, limit)

    def remove(self, refs: list[str]) -> Deferred:
        return self._run(_remove, list(refs))

    def expire(self, before_ms: int, refs_before_ms: int) -> Deferred:
        """Delete DMs held since before ``before_ms`` (fire with them) and delivered refs older
        than ``refs_before_ms``."""
        return self._run(_expire, before_ms, refs_before_ms)

    def claim_delivered(self, ref: str, now_ms: int) -> Deferred:
        """Fire True if a held DM with ``ref`` was never delivered here (and record it)."""
        return self._run(_claim, ref, now_ms)


class MemoryHeldQueue:
    """:class:`SQLHeldQueue`'s answers from memory."""

    def __init__(self) -> None:
        self.rows: list[HeldDM] = []
        self.delivered: dict[str, int] = {}
        self._seq = 0

    def add(self, dm: HeldDM) -> Deferred:
        if any(row.ref == dm.ref for row in self.rows):
            return succeed(None)
        self._seq += 1
        self.rows.append(_with_seq(dm, self._seq))
        return succeed(self._seq)

    def for_recipient(self, recipient: str, limit: int) -> Deferred:
        wanted = recipient.lower()
        return succeed([row for row in self.rows if row.recipient.lower() == wanted][:limit])

    def remove(self, refs: list[str]) -> Deferred:
        gone = set(refs)
        before = len(self.rows)
        self.rows = [row for row in self.rows if row.ref not in gone]
        return succeed(before - len(self.rows))

    def expire(self, before_ms: int, refs_before_ms: int) -> Deferred:
        gone = [row for row in self.rows if row.held_at < before_ms]
        self.rows = [row for row in self.rows if row.held_at >= before_ms]
        self.delivered = {ref: at for ref, at in self.delivered.items() if at >= refs_before_ms}
        return succeed(gone)

    def claim_delivered(self, ref: str, now_ms: int) -> Deferred:
        if ref in self.delivered:
            return succeed(False)
        self.delivered[ref] = now_ms
        return succeed(True)


def _with_seq(dm: HeldDM, seq: int) -> HeldDM:
    values: dict[str, Any] = {name: getattr(dm, name) for name in HeldDM.__slots__}
    values["seq"] = seq
    return HeldDM(**values)


__all__ = ["HeldDM", "MemoryHeldQueue", "SQLHeldQueue", "read_held_summary"]
