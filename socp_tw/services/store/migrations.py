"""Schema migrations: the versioned ``socp_tw/schema/NNN_name.sql`` files and :func:`migrate`.

Synchronous, plain ``sqlite3``: run before the reactor serves anyone (the package
docstring, :mod:`socp_tw.services.store`, says why).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from socp_tw.logs import get_logger
from socp_tw.privatefile import replacing_private

__all__ = ["BUSY_TIMEOUT_MS", "Migration", "StoreError", "load_migrations", "migrate"]

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
