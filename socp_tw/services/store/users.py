"""The ``users`` table: the transaction functions :class:`SQLiteStore` runs, and the start-up key read.

Each ``txn`` function runs on the store's one database thread (``runInteraction``).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

__all__ = ["add_user", "decode_meta", "get_user", "pin_remote_user", "pin_user_key", "read_user_keys"]

_USER_COLUMNS = (
    "user_id",
    "pubkey",
    "privkey_store",
    "pake_password",
    "meta",
    "version",
    "created_at",
    "home_server",
)


def decode_meta(text: str | None) -> dict[str, Any]:
    """A stored ``meta`` column as a dict; anything unreadable or not an object reads as ``{}``."""
    try:
        meta = json.loads(text or "{}")
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _user_row(row: tuple | None) -> dict[str, Any] | None:
    if row is None:
        return None
    user = dict(zip(_USER_COLUMNS, row, strict=True))
    user["meta"] = decode_meta(user["meta"])
    return user


def get_user(txn, user_id: str) -> dict[str, Any] | None:
    txn.execute(f"SELECT {', '.join(_USER_COLUMNS)} FROM users WHERE user_id = ?", (user_id,))
    return _user_row(txn.fetchone())


def add_user(txn, user_id, pubkey, privkey_store, pake_password, meta_json, now) -> bool:
    txn.execute(
        "INSERT INTO users (user_id, pubkey, privkey_store, pake_password, meta, version, created_at)"
        " VALUES (?, ?, ?, ?, ?, 1, ?) ON CONFLICT (user_id) DO NOTHING",
        (user_id, pubkey, privkey_store, pake_password, meta_json, now),
    )
    return txn.rowcount == 1


def pin_user_key(txn, user_id: str, pubkey: str, now: int) -> bool:
    txn.execute(
        "INSERT INTO users (user_id, pubkey, meta, version, created_at) VALUES (?, ?, '{}', 1, ?)"
        " ON CONFLICT (user_id) DO NOTHING",
        (user_id, pubkey, now),
    )
    if txn.rowcount == 1:
        return True
    txn.execute("SELECT pubkey, pake_password FROM users WHERE user_id = ?", (user_id,))
    stored, verifier = txn.fetchone()
    return verifier is None and stored == pubkey


def pin_remote_user(txn, user_id: str, pubkey: str, home_server: str, now: int) -> bool:
    txn.execute(
        "INSERT INTO users (user_id, pubkey, meta, version, created_at, home_server)"
        " VALUES (?, ?, '{}', 1, ?, ?) ON CONFLICT (user_id) DO NOTHING",
        (user_id, pubkey, now, home_server),
    )
    return txn.rowcount == 1


def read_user_keys(path: str | Path) -> list[tuple[str, str, str | None, bool]]:
    """Every pinned user key in the database at ``path``: (user_id, pubkey, home_server,
    registered).  Read synchronously, like :func:`migrate`, before the reactor runs, so the
    server-side key pins are complete before anyone can connect."""
    conn = sqlite3.connect(str(path))
    try:
        rows = conn.execute(
            "SELECT user_id, pubkey, home_server, pake_password IS NOT NULL FROM users"
        ).fetchall()
    finally:
        conn.close()
    return [(user_id, pubkey, home, bool(registered)) for user_id, pubkey, home, registered in rows]


def update_user_meta(txn, user_id: str, changes: dict[str, Any]) -> bool:
    txn.execute("SELECT meta FROM users WHERE user_id = ?", (user_id,))
    row = txn.fetchone()
    if row is None:
        return False
    meta = {**decode_meta(row[0]), **changes}
    meta = {k: v for k, v in meta.items() if v is not None}
    txn.execute("UPDATE users SET meta = ? WHERE user_id = ?", (json.dumps(meta, sort_keys=True), user_id))
    return True
