"""The group tables (``groups``, ``group_origins``, ``group_member_state``, ``group_members``).

:func:`validate_group_state` is shared by every IStore implementation; the ``txn``
functions run on the store's one database thread (``runInteraction``).
"""

from __future__ import annotations

import json
from typing import Any

from socp_tw.services.store.users import decode_meta

__all__ = [
    "MEMBER_STATE_FIELDS",
    "check_wraps",
    "load_group",
    "save_group_state",
    "set_group_key",
    "validate_group_state",
]

#: The fields of one member state (a row of ``group_member_state``), as IStore exchanges them.
MEMBER_STATE_FIELDS = ("member_id", "present", "lamport", "origin_id", "seq", "host_id", "pubkey")

_MAX_COUNTER = 2**62  # far above any real counter, below SQLite's INTEGER limit


def _is_counter(value: object, minimum: int) -> bool:
    return type(value) is int and minimum <= value < _MAX_COUNTER


def validate_group_state(states: list[dict[str, Any]], origins: dict[str, int]) -> None:
    """Raise ``ValueError`` unless ``states`` and ``origins`` fit :meth:`IStore.save_group_state`.

    Shared by every IStore implementation so they refuse the same input.
    """
    if not isinstance(states, list) or not isinstance(origins, dict):
        raise ValueError("states must be a list and origins a dict")
    for origin, seq in origins.items():
        if not (isinstance(origin, str) and origin and _is_counter(seq, 0)):
            raise ValueError(f"bad origin counter {origin!r}: {seq!r}")
    for state in states:
        if not isinstance(state, dict) or set(state) != set(MEMBER_STATE_FIELDS):
            raise ValueError(f"a member state needs exactly the fields {MEMBER_STATE_FIELDS}")
        for name in ("member_id", "origin_id", "host_id"):
            if not (isinstance(state[name], str) and state[name]):
                raise ValueError(f"member state field {name} must be a non-empty string")
        if type(state["present"]) is not bool:
            raise ValueError("member state field present must be a bool")
        if not (_is_counter(state["lamport"], 1) and _is_counter(state["seq"], 1)):
            raise ValueError("member state lamport and seq must be integers >= 1")
        if state["pubkey"] is not None and not isinstance(state["pubkey"], str):
            raise ValueError("member state pubkey must be a string or None")


_STATE_COLUMNS = ", ".join(MEMBER_STATE_FIELDS)


def load_group(txn, group_id: str) -> dict[str, Any] | None:
    txn.execute("SELECT creator_id, meta FROM groups WHERE group_id = ?", (group_id,))
    row = txn.fetchone()
    if row is None:
        return None
    txn.execute("SELECT origin_id, seq FROM group_origins WHERE group_id = ?", (group_id,))
    origins = {origin: seq for origin, seq in txn.fetchall()}
    txn.execute(
        f"SELECT {_STATE_COLUMNS} FROM group_member_state WHERE group_id = ? ORDER BY member_id", (group_id,)
    )
    states = []
    for values in txn.fetchall():
        state = dict(zip(MEMBER_STATE_FIELDS, values, strict=True))
        state["present"] = bool(state["present"])
        states.append(state)
    txn.execute("SELECT member_id, wrapped_key FROM group_members WHERE group_id = ?", (group_id,))
    members = {member: wrapped for member, wrapped in txn.fetchall()}
    return {
        "group_id": group_id,
        "creator_id": row[0],
        "version": sum(origins.values()),
        "meta": decode_meta(row[1]),
        "origins": origins,
        "states": states,
        "members": members,
    }


def _group_exists(txn, group_id: str) -> None:
    txn.execute("SELECT 1 FROM groups WHERE group_id = ?", (group_id,))
    if txn.fetchone() is None:
        raise ValueError(f"no group {group_id!r}")


def save_group_state(txn, group_id: str, states: list[dict[str, Any]], origins: dict[str, int], now) -> int:
    _group_exists(txn, group_id)
    for origin, seq in origins.items():
        txn.execute(
            "INSERT INTO group_origins (group_id, origin_id, seq) VALUES (?, ?, ?)"
            " ON CONFLICT (group_id, origin_id) DO UPDATE SET seq = max(seq, excluded.seq)",
            (group_id, origin, seq),
        )
    for state in states:
        txn.execute(
            f"INSERT OR REPLACE INTO group_member_state (group_id, {_STATE_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (group_id, *(int(state[f]) if f == "present" else state[f] for f in MEMBER_STATE_FIELDS)),
        )
        if state["present"]:
            txn.execute(
                "INSERT INTO group_members (group_id, member_id, role, added_at) VALUES (?, ?, 'member', ?)"
                " ON CONFLICT (group_id, member_id) DO NOTHING",
                (group_id, state["member_id"], now),
            )
        else:
            txn.execute(
                "DELETE FROM group_members WHERE group_id = ? AND member_id = ?",
                (group_id, state["member_id"]),
            )
    txn.execute("SELECT coalesce(sum(seq), 0) FROM group_origins WHERE group_id = ?", (group_id,))
    version = txn.fetchone()[0]
    txn.execute("UPDATE groups SET version = ? WHERE group_id = ?", (version, group_id))
    return version


def set_group_key(txn, group_id: str, wraps: dict[str, str], meta: dict[str, Any]) -> int:
    _group_exists(txn, group_id)
    txn.execute("SELECT meta FROM groups WHERE group_id = ?", (group_id,))
    merged = {**decode_meta(txn.fetchone()[0]), **meta}
    txn.execute(
        "UPDATE groups SET meta = ? WHERE group_id = ?", (json.dumps(merged, sort_keys=True), group_id)
    )
    txn.execute("UPDATE group_members SET wrapped_key = NULL WHERE group_id = ?", (group_id,))
    updated = 0
    for member, wrapped in wraps.items():
        txn.execute(
            "UPDATE group_members SET wrapped_key = ? WHERE group_id = ? AND member_id = ?",
            (wrapped, group_id, member),
        )
        updated += txn.rowcount
    return updated


def check_wraps(wraps: dict[str, str], meta: dict[str, Any]) -> None:
    if not isinstance(wraps, dict) or not isinstance(meta, dict):
        raise ValueError("wraps and meta must be dicts")
    if not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in wraps.items()):
        raise ValueError("wraps maps member ids to wrapped keys (non-empty strings)")
