"""The server's database (PROTOCOL.md §3): SQLite behind :class:`IStore`.

One SQLite file per server (``<data-dir>/socp.sqlite3``) in WAL mode, reached through
``adbapi`` with a single connection on a single thread, so writes are serialised and
the reactor never waits for the disk.

The schema lives in versioned files shipped with the package (``socp_tw/schema/
NNN_name.sql``).  :func:`migrate` applies the missing ones, each in its own
transaction that also records the new version in ``schema_version``.  It runs
**synchronously, when the store is constructed**: ``makeService`` builds the store
before the reactor runs (the same moment the server key is loaded or created), so
the schema is complete before the listener can accept anyone, and a database that
cannot be migrated stops start-up with a clear message instead of leaving a server
that listens but fails every query.  Migrating is a one-off of milliseconds; blocking
then costs nobody anything, whereas making the listener wait on a Deferred would add
a start-up state every other service has to know about.

A brand-new database is built in a temporary file (mode 0600) beside the real one
and renamed into place only once every migration succeeded, so a crash mid-way
never leaves a half-made database that looks valid.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from socp_tw import wire
from socp_tw.interfaces import IStore
from socp_tw.logs import get_logger
from socp_tw.privatefile import replacing_private

__all__ = [
    "DB_FILE",
    "MEMBER_STATE_FIELDS",
    "Migration",
    "SQLiteStore",
    "StoreError",
    "load_migrations",
    "migrate",
    "read_user_keys",
    "validate_group_state",
]

#: The database file inside ``--data-dir``.
DB_FILE = "socp.sqlite3"

#: How long a statement waits for a lock held by another connection (e.g. an operator's
#: ``sqlite3`` shell) before failing, in ms.
BUSY_TIMEOUT_MS = 5000

_MIGRATION_NAME = re.compile(r"(\d{3})_[a-z0-9_]+\.sql")
_log = get_logger("socp_tw.store")


class StoreError(Exception):
    """The database cannot be used: not ours, newer than this software, or a migration failed."""


@dataclass(frozen=True)
class Migration:
    """One schema file: applying ``sql`` to a database at ``version - 1`` makes it ``version``."""

    version: int
    name: str
    sql: str


def load_migrations(directory: Path | None = None) -> list[Migration]:
    """Read the schema files (the package's by default), sorted; versions must run 1, 2, 3 ..."""
    root = resources.files("socp_tw") / "schema" if directory is None else directory
    found = []
    for entry in root.iterdir():
        match = _MIGRATION_NAME.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise StoreError(
            f"schema files must be numbered 001, 002 ... without gaps: {[m.name for m in found]}"
        )
    return found


def _current_version(conn: sqlite3.Connection, path: Path) -> int:
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "schema_version" not in tables:
        if tables:
            raise StoreError(f"{path} is not a socp database (it has tables but no schema_version)")
        return 0
    rows = conn.execute("SELECT version FROM schema_version").fetchall()
    if len(rows) != 1 or type(rows[0][0]) is not int:
        raise StoreError(f"{path} has a damaged schema_version table")
    return rows[0][0]


def _apply(conn: sqlite3.Connection, migrations: list[Migration], current: int) -> None:
    """Apply every migration above ``current``, each atomically with its version bump."""
    for migration in migrations:
        if migration.version <= current:
            continue
        script = (
            "BEGIN IMMEDIATE;\n"
            f"{migration.sql}\n;\n"
            "DELETE FROM schema_version;\n"
            f"INSERT INTO schema_version (version) VALUES ({migration.version});\n"
            "COMMIT;\n"
        )
        try:
            conn.executescript(script)
        except sqlite3.Error as e:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"schema migration {migration.name} failed: {e}") from e
        _log.info(
            "Database schema migrated to version {version} ({name})",
            version=migration.version,
            name=migration.name,
        )


def migrate(path: str | Path, migrations: list[Migration] | None = None) -> int:
    """Bring the database at ``path`` to the newest schema, creating it if needed; return its version.

    Synchronous (plain ``sqlite3``): call it before the reactor serves anyone.
    Raises :class:`StoreError` for a database that is not ours, is newer than
    ``migrations`` know, or fails a migration (which is then rolled back).
    """
    path = Path(path)
    migrations = load_migrations() if migrations is None else migrations
    target = migrations[-1].version if migrations else 0
    if not path.exists():
        with replacing_private(path) as tmp:  # a crashed creation leaves no half database
            conn = sqlite3.connect(tmp, isolation_level=None)
            try:
                _apply(conn, migrations, 0)
            finally:
                conn.close()
        _log.info("Created database {path} at schema version {version}", path=str(path), version=target)
        return target
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open {path}: {e}") from e
    try:
        try:
            current = _current_version(conn, path)
        except sqlite3.DatabaseError as e:  # "file is not a database"
            raise StoreError(f"{path} is not a usable SQLite database: {e}") from e
        if current > target:
            raise StoreError(
                f"{path} has schema version {current}, newer than this software knows ({target});"
                " run a newer socp-tw or restore a backup"
            )
        _apply(conn, migrations, current)
    finally:
        conn.close()
    return target


def _configure(conn: sqlite3.Connection) -> None:
    """``cp_openfun``: WAL (readers never block the writer), a busy timeout, enforced foreign keys."""
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")  # durable across crashes in WAL mode, fast


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


def _decode_meta(text: str | None) -> dict[str, Any]:
    try:
        meta = json.loads(text or "{}")
    except ValueError:
        return {}
    return meta if isinstance(meta, dict) else {}


def _user_row(row: tuple | None) -> dict[str, Any] | None:
    if row is None:
        return None
    user = dict(zip(_USER_COLUMNS, row, strict=True))
    user["meta"] = _decode_meta(user["meta"])
    return user


def _get_user(txn, user_id: str) -> dict[str, Any] | None:
    txn.execute(f"SELECT {', '.join(_USER_COLUMNS)} FROM users WHERE user_id = ?", (user_id,))
    return _user_row(txn.fetchone())


def _add_user(txn, user_id, pubkey, privkey_store, pake_password, meta_json, now) -> bool:
    txn.execute(
        "INSERT INTO users (user_id, pubkey, privkey_store, pake_password, meta, version, created_at)"
        " VALUES (?, ?, ?, ?, ?, 1, ?) ON CONFLICT (user_id) DO NOTHING",
        (user_id, pubkey, privkey_store, pake_password, meta_json, now),
    )
    return txn.rowcount == 1


def _update_user_meta(txn, user_id: str, changes: dict[str, Any]) -> bool:
    txn.execute("SELECT meta FROM users WHERE user_id = ?", (user_id,))
    row = txn.fetchone()
    if row is None:
        return False
    meta = {**_decode_meta(row[0]), **changes}
    meta = {k: v for k, v in meta.items() if v is not None}
    txn.execute("UPDATE users SET meta = ? WHERE user_id = ?", (json.dumps(meta, sort_keys=True), user_id))
    return True


def _pin_user_key(txn, user_id: str, pubkey: str, now: int) -> bool:
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


def _pin_remote_user(txn, user_id: str, pubkey: str, home_server: str, now: int) -> bool:
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


def _load_group(txn, group_id: str) -> dict[str, Any] | None:
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
        "meta": _decode_meta(row[1]),
        "origins": origins,
        "states": states,
        "members": members,
    }


def _group_exists(txn, group_id: str) -> None:
    txn.execute("SELECT 1 FROM groups WHERE group_id = ?", (group_id,))
    if txn.fetchone() is None:
        raise ValueError(f"no group {group_id!r}")


def _save_group_state(txn, group_id: str, states: list[dict[str, Any]], origins: dict[str, int], now) -> int:
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


def _set_group_key(txn, group_id: str, wraps: dict[str, str], meta: dict[str, Any]) -> int:
    _group_exists(txn, group_id)
    txn.execute("SELECT meta FROM groups WHERE group_id = ?", (group_id,))
    merged = {**_decode_meta(txn.fetchone()[0]), **meta}
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


def _check_wraps(wraps: dict[str, str], meta: dict[str, Any]) -> None:
    if not isinstance(wraps, dict) or not isinstance(meta, dict):
        raise ValueError("wraps and meta must be dicts")
    if not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in wraps.items()):
        raise ValueError("wraps maps member ids to wrapped keys (non-empty strings)")


@implementer(IStore)
class SQLiteStore(Service):
    """:class:`IStore` on one SQLite file, one connection, one thread."""

    name = "store"

    def __init__(self, path: str | Path, reactor=None, now_ms: Callable[[], int] = wire.now_ms) -> None:
        """Migrate the database at ``path`` now (see the module docstring); connect on start."""
        self.path = Path(path)
        self.schema_version = migrate(self.path)
        self._reactor = reactor
        self._now_ms = now_ms
        self._pool: adbapi.ConnectionPool | None = None

    def startService(self) -> None:
        super().startService()
        kwargs: dict[str, Any] = {}
        if self._reactor is not None:
            kwargs["cp_reactor"] = self._reactor
        self._pool = adbapi.ConnectionPool(
            "sqlite3",
            str(self.path),
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=_configure,
            **kwargs,
        )
        _log.info(
            "Database {path} open (schema version {version})",
            path=str(self.path),
            version=self.schema_version,
        )

    def stopService(self) -> None:
        super().stopService()
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def _run(self, interaction, *args) -> Deferred:
        if self._pool is None:
            return fail(StoreError("the store is not running"))
        return self._pool.runInteraction(interaction, *args)

    # IStore

    def get_user(self, user_id: str) -> Deferred:
        return self._run(_get_user, user_id)

    def add_user(
        self, user_id: str, pubkey: str, privkey_store: str, pake_password: str, meta: dict[str, Any]
    ) -> Deferred:
        if not all(isinstance(v, str) and v for v in (user_id, pubkey, privkey_store, pake_password)):
            return fail(ValueError("add_user needs non-empty strings for id, key, key store and verifier"))
        meta_json = json.dumps(meta or {}, sort_keys=True)
        return self._run(_add_user, user_id, pubkey, privkey_store, pake_password, meta_json, self._now_ms())

    def update_user_meta(self, user_id: str, changes: dict[str, Any]) -> Deferred:
        """Merge ``changes`` into the user's meta (None removes a key); fires False without a row."""
        try:
            json.dumps(changes)
        except (TypeError, ValueError) as e:
            return fail(e)
        return self._run(_update_user_meta, user_id, dict(changes))

    def pin_user_key(self, user_id: str, pubkey: str) -> Deferred:
        if not all(isinstance(v, str) and v for v in (user_id, pubkey)):
            return fail(ValueError("pin_user_key needs a non-empty id and key"))
        return self._run(_pin_user_key, user_id, pubkey, self._now_ms())

    def pin_remote_user(self, user_id: str, pubkey: str, home_server: str) -> Deferred:
        if not all(isinstance(v, str) and v for v in (user_id, pubkey, home_server)):
            return fail(ValueError("pin_remote_user needs a non-empty id, key and home server"))
        return self._run(_pin_remote_user, user_id, pubkey, home_server, self._now_ms())

    def load_group(self, group_id: str) -> Deferred:
        return self._run(_load_group, group_id)

    def save_group_state(
        self, group_id: str, states: list[dict[str, Any]], origins: dict[str, int]
    ) -> Deferred:
        try:
            validate_group_state(states, origins)
        except ValueError:
            return fail()
        states = [dict(state) for state in states]
        return self._run(_save_group_state, group_id, states, dict(origins), self._now_ms())

    def set_group_key(self, group_id: str, wraps: dict[str, str], meta: dict[str, Any]) -> Deferred:
        try:
            _check_wraps(wraps, meta)
            json.dumps(meta)
        except (TypeError, ValueError) as e:
            return fail(ValueError(f"set_group_key: {e}"))
        return self._run(_set_group_key, group_id, dict(wraps), dict(meta))
