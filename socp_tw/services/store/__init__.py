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

The package: :mod:`~socp_tw.services.store.migrations` (schema files, :func:`migrate`),
:mod:`~socp_tw.services.store.users` and :mod:`~socp_tw.services.store.groups` (the
queries, one table family each), :mod:`~socp_tw.services.store.service`
(:class:`SQLiteStore`). Every public name is re-exported here.
"""

from socp_tw.services.store.groups import MEMBER_STATE_FIELDS, validate_group_state
from socp_tw.services.store.migrations import Migration, StoreError, load_migrations, migrate
from socp_tw.services.store.service import DB_FILE, SQLiteStore
from socp_tw.services.store.users import read_user_keys

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
