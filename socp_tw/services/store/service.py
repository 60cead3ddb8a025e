""":class:`SQLiteStore`: :class:`IStore` on one SQLite file through ``adbapi``, one connection, one thread."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail
from zope.interface import implementer

from socp_tw import wire
from socp_tw.interfaces import IStore
from socp_tw.logs import get_logger
from socp_tw.services.store import groups, users
from socp_tw.services.store.groups import check_wraps, validate_group_state
from socp_tw.services.store.migrations import BUSY_TIMEOUT_MS, StoreError, migrate

__all__ = ["DB_FILE", "SQLiteStore"]

#: The database file inside ``--data-dir``.
DB_FILE = "socp.sqlite3"

_log = get_logger("socp_tw.store")


def _configure(conn: sqlite3.Connection) -> None:
    """``cp_openfun``: WAL (readers never block the writer), a busy timeout, enforced foreign keys."""
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA synchronous = NORMAL")  # durable across crashes in WAL mode, fast


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

    def update_user_meta(self, user_id: str, changes: dict[str, Any]) -> Deferred:
        """Merge ``changes`` into the user's meta (None removes a key); fires False without a row."""
        try:
            json.dumps(changes)
        except (TypeError, ValueError) as e:
            return fail(e)
        return self._run(users.update_user_meta, user_id, dict(changes))

    def run_interaction(self, interaction: Callable[..., Any], *args: Any) -> Deferred:
        """Run ``interaction(txn, *args)`` on the store's one database thread, in one transaction:
        for a service that keeps its own tables in this database (services/holding/)."""
        return self._run(interaction, *args)

    def _run(self, interaction, *args) -> Deferred:
        if self._pool is None:
            return fail(StoreError("the store is not running"))
        return self._pool.runInteraction(interaction, *args)

    # IStore

    def get_user(self, user_id: str) -> Deferred:
        return self._run(users.get_user, user_id)

    def add_user(
        self, user_id: str, pubkey: str, privkey_store: str, pake_password: str, meta: dict[str, Any]
    ) -> Deferred:
        if not all(isinstance(v, str) and v for v in (user_id, pubkey, privkey_store, pake_password)):
            return fail(ValueError("add_user needs non-empty strings for id, key, key store and verifier"))
        meta_json = json.dumps(meta or {}, sort_keys=True)
        return self._run(
            users.add_user, user_id, pubkey, privkey_store, pake_password, meta_json, self._now_ms()
        )

    def pin_user_key(self, user_id: str, pubkey: str) -> Deferred:
        if not all(isinstance(v, str) and v for v in (user_id, pubkey)):
            return fail(ValueError("pin_user_key needs a non-empty id and key"))
        return self._run(users.pin_user_key, user_id, pubkey, self._now_ms())

    def pin_remote_user(self, user_id: str, pubkey: str, home_server: str) -> Deferred:
        if not all(isinstance(v, str) and v for v in (user_id, pubkey, home_server)):
            return fail(ValueError("pin_remote_user needs a non-empty id, key and home server"))
        return self._run(users.pin_remote_user, user_id, pubkey, home_server, self._now_ms())

    def load_group(self, group_id: str) -> Deferred:
        return self._run(groups.load_group, group_id)

    def save_group_state(
        self, group_id: str, states: list[dict[str, Any]], origins: dict[str, int]
    ) -> Deferred:
        try:
            validate_group_state(states, origins)
        except ValueError:
            return fail()
        states = [dict(state) for state in states]
        return self._run(groups.save_group_state, group_id, states, dict(origins), self._now_ms())

    def set_group_key(self, group_id: str, wraps: dict[str, str], meta: dict[str, Any]) -> Deferred:
        try:
            check_wraps(wraps, meta)
            json.dumps(meta)
        except (TypeError, ValueError) as e:
            return fail(ValueError(f"set_group_key: {e}"))
        return self._run(groups.set_group_key, group_id, dict(wraps), dict(meta))
