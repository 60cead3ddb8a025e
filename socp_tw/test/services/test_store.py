"""The IStore contract, run against SQLiteStore and MemoryStore; SQLite migrations."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from socp_tw.interfaces import IStore
from socp_tw.privatefile import temp_path
from socp_tw.services.store import DB_FILE, Migration, SQLiteStore, StoreError, load_migrations, migrate
from socp_tw.testing import MemoryStore

ALICE = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
BOB = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
KEY_A = "key-a"  # the store compares key text; it does not parse keys
KEY_B = "key-b"
STORE_BLOB = "socp-keystore-v1.blob"
VERIFIER = "socp-srp6a-v1.verifier"
NOW = 1_700_000_000_000
CAROL = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
SERVER_1 = "11111111-2222-4333-8444-555555555555"
SERVER_2 = "21111111-2222-4333-8444-555555555555"


class StoreContractMixin:
    """Every IStore implementation must pass these.  ``make_store`` returns a started store."""

    def make_store(self):
        raise NotImplementedError

    def setUp(self) -> None:
        self.store = self.make_store()

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IStore, self.store))

    @inlineCallbacks
    def test_unknown_user(self):
        self.assertIsNone((yield self.store.get_user(ALICE)))

    @inlineCallbacks
    def test_add_and_get(self):
        added = yield self.store.add_user(ALICE, KEY_A, STORE_BLOB, VERIFIER, {"note": "é", "n": [1, 2]})
        self.assertIs(added, True)
        user = yield self.store.get_user(ALICE)
        self.assertEqual(
            user,
            {
                "user_id": ALICE,
                "pubkey": KEY_A,
                "privkey_store": STORE_BLOB,
                "pake_password": VERIFIER,
                "meta": {"note": "é", "n": [1, 2]},
                "version": 1,
                "created_at": NOW,
                "home_server": None,
            },
        )
        self.assertIsNone((yield self.store.get_user(BOB)))

    @inlineCallbacks
    def test_update_user_meta(self):
        """USER_SET_META's store: keys merged in, a None value removes one, no row is False."""
        yield self.store.add_user(ALICE, KEY_A, STORE_BLOB, VERIFIER, {"a": 1})
        self.assertIs((yield self.store.update_user_meta(ALICE, {"name": "alice"})), True)
        self.assertEqual((yield self.store.get_user(ALICE))["meta"], {"a": 1, "name": "alice"})
        self.assertIs((yield self.store.update_user_meta(ALICE, {"name": None})), True)
        self.assertEqual((yield self.store.get_user(ALICE))["meta"], {"a": 1})
        self.assertIs((yield self.store.update_user_meta(BOB, {"name": "bob"})), False)
        self.assertIsNone((yield self.store.get_user(BOB)))

    @inlineCallbacks
    def test_results_are_copies(self):
        yield self.store.add_user(ALICE, KEY_A, STORE_BLOB, VERIFIER, {"a": 1})
        user = yield self.store.get_user(ALICE)
        user["meta"]["a"] = 2
        user["pubkey"] = KEY_B
        again = yield self.store.get_user(ALICE)
        self.assertEqual((again["meta"], again["pubkey"]), ({"a": 1}, KEY_A))

    @inlineCallbacks
    def test_add_existing_refused(self):
        yield self.store.add_user(ALICE, KEY_A, STORE_BLOB, VERIFIER, {})
        self.assertIs((yield self.store.add_user(ALICE, KEY_B, "x", "y", {})), False)
        self.assertEqual((yield self.store.get_user(ALICE))["pubkey"], KEY_A)

    @inlineCallbacks
    def test_ids_are_case_insensitive(self):
        yield self.store.add_user(ALICE, KEY_A, STORE_BLOB, VERIFIER, {})
        self.assertIs((yield self.store.add_user(ALICE.upper(), KEY_B, "x", "y", {})), False)
        self.assertIs((yield self.store.pin_user_key(ALICE.upper(), KEY_B)), False)
        user = yield self.store.get_user(ALICE.upper())
        self.assertEqual(user["user_id"], ALICE)

    @inlineCallbacks
    def test_pin_first_use(self):
        self.assertIs((yield self.store.pin_user_key(BOB, KEY_B)), True)
        user = yield self.store.get_user(BOB)
        self.assertEqual((user["pubkey"], user["privkey_store"], user["pake_password"]), (KEY_B, None, None))
        self.assertEqual(user["meta"], {})
        self.assertIs((yield self.store.pin_user_key(BOB, KEY_B)), True)
        self.assertIs((yield self.store.pin_user_key(BOB, KEY_A)), False)
        self.assertEqual((yield self.store.get_user(BOB))["pubkey"], KEY_B)

    @inlineCallbacks
    def test_pin_registered_refused(self):
        yield self.store.add_user(ALICE, KEY_A, STORE_BLOB, VERIFIER, {})
        self.assertIs((yield self.store.pin_user_key(ALICE, KEY_A)), False)
        self.assertEqual((yield self.store.get_user(ALICE))["pake_password"], VERIFIER)

    @inlineCallbacks
    def test_register_pinned_refused(self):
        yield self.store.pin_user_key(BOB, KEY_B)
        self.assertIs((yield self.store.add_user(BOB, KEY_B, STORE_BLOB, VERIFIER, {})), False)
        self.assertIsNone((yield self.store.get_user(BOB))["pake_password"])

    @inlineCallbacks
    def test_bad_arguments_fail(self):
        for args in ((ALICE, KEY_A, None, VERIFIER, {}), ("", KEY_A, STORE_BLOB, VERIFIER, {})):
            with self.assertRaises(ValueError):
                yield self.store.add_user(*args)
        with self.assertRaises(ValueError):
            yield self.store.pin_user_key(ALICE, "")
        self.assertIsNone((yield self.store.get_user(ALICE)))

    # -- groups (the public channel's replicated state, docs/PUBLIC-CHANNEL.md)

    @inlineCallbacks
    def test_public_group_exists(self):
        group = yield self.store.load_group("public")
        self.assertEqual(
            group,
            {
                "group_id": "public",
                "creator_id": "system",
                "version": 0,
                "meta": {},
                "origins": {},
                "states": [],
                "members": {},
            },
        )

    @inlineCallbacks
    def test_unknown_group(self):
        self.assertIsNone((yield self.store.load_group("nope")))
        with self.assertRaises(ValueError):
            yield self.store.save_group_state("nope", [member_state(ALICE)], {SERVER_1: 1})
        with self.assertRaises(ValueError):
            yield self.store.set_group_key("nope", {}, {})

    @inlineCallbacks
    def test_group_state_round_trip(self):
        states = [member_state(BOB, seq=2, lamport=2), member_state(ALICE)]
        version = yield self.store.save_group_state("public", states, {SERVER_1: 2})
        self.assertEqual(version, 2)
        group = yield self.store.load_group("public")
        self.assertEqual(group["version"], 2)
        self.assertEqual(group["origins"], {SERVER_1: 2})
        self.assertEqual(group["states"], sorted(states, key=lambda s: s["member_id"]))
        self.assertEqual(group["members"], {ALICE: None, BOB: None})
        # Bob leaves (an event of another server): he stays as a state, no longer a member.
        left = member_state(BOB, present=False, origin=SERVER_2, seq=1, lamport=3)
        self.assertEqual((yield self.store.save_group_state("public", [left], {SERVER_2: 1})), 3)
        group = yield self.store.load_group("public")
        self.assertEqual(group["members"], {ALICE: None})
        self.assertEqual([s for s in group["states"] if s["member_id"] == BOB], [left])
        self.assertEqual(group["origins"], {SERVER_1: 2, SERVER_2: 1})

    @inlineCallbacks
    def test_counters_never_lowered(self):
        yield self.store.save_group_state("public", [], {SERVER_1: 5})
        self.assertEqual((yield self.store.save_group_state("public", [], {SERVER_1: 3, SERVER_2: 1})), 6)
        self.assertEqual((yield self.store.load_group("public"))["origins"], {SERVER_1: 5, SERVER_2: 1})

    @inlineCallbacks
    def test_malformed_state_refused(self):
        good = member_state(ALICE)
        bad_states = [
            {k: v for k, v in good.items() if k != "host_id"},
            {**good, "extra": 1},
            {**good, "present": 1},
            {**good, "lamport": 0},
            {**good, "seq": True},
            {**good, "member_id": ""},
            {**good, "pubkey": 5},
        ]
        for bad in bad_states:
            with self.assertRaises(ValueError):
                yield self.store.save_group_state("public", [good, bad], {SERVER_1: 1})
        for origins in ({SERVER_1: -1}, {"": 1}, {SERVER_1: 1.5}):
            with self.assertRaises(ValueError):
                yield self.store.save_group_state("public", [good], origins)
        group = yield self.store.load_group("public")
        self.assertEqual((group["version"], group["states"], group["members"]), (0, [], {}))

    @inlineCallbacks
    def test_group_key(self):
        yield self.store.save_group_state(
            "public", [member_state(ALICE), member_state(BOB, seq=2)], {SERVER_1: 2}
        )
        given = yield self.store.set_group_key(
            "public", {ALICE: "wrapped-a", CAROL: "wrapped-c"}, {"key_version": 2}
        )
        self.assertEqual(given, 1)
        group = yield self.store.load_group("public")
        self.assertEqual(group["members"], {ALICE: "wrapped-a", BOB: None})
        self.assertEqual(group["meta"], {"key_version": 2})
        # A new key replaces the old one for everybody; meta entries merge.
        yield self.store.set_group_key("public", {BOB: "wrapped-b"}, {"key_creator": SERVER_1})
        group = yield self.store.load_group("public")
        self.assertEqual(group["members"], {ALICE: None, BOB: "wrapped-b"})
        self.assertEqual(group["meta"], {"key_version": 2, "key_creator": SERVER_1})
        for wraps, meta in (({ALICE: ""}, {}), ({ALICE: 1}, {}), ({}, {"x": object()}), ([], {})):
            with self.assertRaises(ValueError):
                yield self.store.set_group_key("public", wraps, meta)

    @inlineCallbacks
    def test_rejoin_has_no_key(self):
        yield self.store.save_group_state("public", [member_state(ALICE)], {SERVER_1: 1})
        yield self.store.set_group_key("public", {ALICE: "old"}, {})
        yield self.store.save_group_state(
            "public", [member_state(ALICE, present=False, seq=2, lamport=2)], {}
        )
        yield self.store.save_group_state("public", [member_state(ALICE, seq=3, lamport=3)], {SERVER_1: 3})
        group = yield self.store.load_group("public")
        self.assertEqual((group["members"], group["version"]), ({ALICE: None}, 3))
        # A present state for a current member keeps its key.
        yield self.store.set_group_key("public", {ALICE: "new"}, {})
        yield self.store.save_group_state("public", [member_state(ALICE, seq=4, lamport=4)], {SERVER_1: 4})
        self.assertEqual((yield self.store.load_group("public"))["members"], {ALICE: "new"})


def member_state(member, present=True, origin=None, seq=1, lamport=1) -> dict:
    """One member state as IStore takes it."""
    origin = origin or SERVER_1
    return {
        "member_id": member,
        "present": present,
        "lamport": lamport,
        "origin_id": origin,
        "seq": seq,
        "host_id": origin,
        "pubkey": KEY_A if present else None,
    }


class MemoryStoreTests(StoreContractMixin, TestCase):
    def make_store(self):
        return MemoryStore(now_ms=lambda: NOW)


class SQLiteStoreTests(StoreContractMixin, TestCase):
    def make_store(self):
        directory = Path(self.mktemp())
        directory.mkdir()
        store = SQLiteStore(directory / DB_FILE, now_ms=lambda: NOW)
        store.startService()
        self.addCleanup(store.stopService)
        return store

    @inlineCallbacks
    def test_persists_across_reopen(self):
        yield self.store.add_user(ALICE, KEY_A, STORE_BLOB, VERIFIER, {"x": 1})
        yield self.store.pin_user_key(BOB, KEY_B)
        self.store.stopService()
        again = SQLiteStore(self.store.path)
        again.startService()
        self.addCleanup(again.stopService)
        self.assertEqual((yield again.get_user(ALICE))["meta"], {"x": 1})
        self.assertEqual((yield again.get_user(BOB))["pubkey"], KEY_B)

    @inlineCallbacks
    def test_group_state_persists(self):
        yield self.store.save_group_state("public", [member_state(ALICE)], {SERVER_1: 7})
        yield self.store.set_group_key("public", {ALICE: "w"}, {"key_version": 7})
        self.store.stopService()
        again = SQLiteStore(self.store.path)
        again.startService()
        self.addCleanup(again.stopService)
        group = yield again.load_group("public")
        self.assertEqual(
            (group["version"], group["members"], group["meta"]), (7, {ALICE: "w"}, {"key_version": 7})
        )
        self.assertEqual(group["states"], [member_state(ALICE)])

    @inlineCallbacks
    def test_connection_settings(self):
        def pragmas(txn):
            return [
                txn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "foreign_keys", "busy_timeout")
            ]

        self.assertEqual((yield self.store._run(pragmas)), ["wal", 1, 5000])

    def test_not_running_fails(self) -> None:
        self.store.stopService()
        self.failureResultOf(self.store.get_user(ALICE), StoreError)


class MigrationTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / DB_FILE

    def query(self, sql: str) -> list[tuple]:
        conn = sqlite3.connect(self.path)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()

    def test_package_schema_files(self) -> None:
        migrations = load_migrations()
        self.assertEqual(migrations[0].name, "001_initial.sql")
        self.assertEqual([m.version for m in migrations], list(range(1, len(migrations) + 1)))

    def test_new_database(self) -> None:
        version = migrate(self.path)
        self.assertEqual(version, len(load_migrations()))
        self.assertEqual(self.query("SELECT version FROM schema_version"), [(version,)])
        tables = {row[0] for row in self.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        self.assertLessEqual({"users", "groups", "group_members", "schema_version"}, tables)
        columns = {row[1] for row in self.query("PRAGMA table_info(users)")}
        self.assertLessEqual(
            {"user_id", "pubkey", "privkey_store", "pake_password", "meta", "version"}, columns
        )
        public = self.query("SELECT group_id, creator_id, meta, version, created_at FROM groups")
        self.assertEqual(public[0][:4], ("public", "system", "{}", 0))
        self.assertGreater(public[0][4], NOW)  # Unix ms, set at creation
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), [DB_FILE])

    def test_idempotent(self) -> None:
        migrate(self.path)
        self.query("SELECT 1")
        conn = sqlite3.connect(self.path)
        conn.execute("INSERT INTO users (user_id, pubkey, created_at) VALUES ('u', 'k', 1)")
        conn.commit()
        conn.close()
        migrate(self.path)
        self.assertEqual(self.query("SELECT user_id FROM users"), [("u",)])
        self.assertEqual(len(self.query("SELECT * FROM groups")), 1)

    def test_registered_needs_both_blobs(self) -> None:
        migrate(self.path)
        conn = sqlite3.connect(self.path)
        self.addCleanup(conn.close)
        self.assertRaises(
            sqlite3.IntegrityError,
            conn.execute,
            "INSERT INTO users (user_id, pubkey, privkey_store, created_at) VALUES ('u', 'k', 'blob', 1)",
        )

    def test_later_migration_applied_in_order(self) -> None:
        base = load_migrations()
        migrate(self.path, base)
        extra = Migration(len(base) + 1, "099_extra.sql", "CREATE TABLE extra (x INTEGER);")
        self.assertEqual(migrate(self.path, [*base, extra]), len(base) + 1)
        self.assertEqual(self.query("SELECT version FROM schema_version"), [(len(base) + 1,)])
        self.assertEqual(self.query("SELECT count(*) FROM extra"), [(0,)])

    def test_failed_migration_rolls_back(self) -> None:
        base = load_migrations()
        migrate(self.path, base)
        broken = Migration(
            len(base) + 1, "099_broken.sql", "CREATE TABLE half (x INTEGER); SELECT nonsense(;"
        )
        e = self.assertRaises(StoreError, migrate, self.path, [*base, broken])
        self.assertIn("099_broken.sql", str(e))
        self.assertEqual(self.query("SELECT version FROM schema_version"), [(len(base),)])
        self.assertEqual(self.query("SELECT name FROM sqlite_master WHERE name = 'half'"), [])

    def test_failed_creation_leaves_nothing(self) -> None:
        broken = [Migration(1, "001_broken.sql", "CREATE TABLE schema_version (version INTEGER); nope;")]
        self.assertRaises(StoreError, migrate, self.path, broken)
        self.assertEqual(list(self.dir.iterdir()), [])

    def test_leftover_temp_file_replaced(self) -> None:
        temp_path(self.path).write_bytes(b"half-written garbage")
        migrate(self.path)
        self.assertEqual(sorted(p.name for p in self.dir.iterdir()), [DB_FILE])

    def test_newer_database_refused(self) -> None:
        migrate(self.path)
        conn = sqlite3.connect(self.path)
        conn.execute("UPDATE schema_version SET version = 999")
        conn.commit()
        conn.close()
        e = self.assertRaises(StoreError, migrate, self.path)
        self.assertIn("newer", str(e))

    def test_foreign_database_refused(self) -> None:
        conn = sqlite3.connect(self.path)
        conn.execute("CREATE TABLE something (x)")
        conn.commit()
        conn.close()
        e = self.assertRaises(StoreError, migrate, self.path)
        self.assertIn("not a socp database", str(e))

    def test_not_a_database_refused(self) -> None:
        self.path.write_bytes(b"this is not sqlite" * 100)
        self.assertRaises(StoreError, migrate, self.path)

    def test_schema_file_gap_refused(self) -> None:
        schema = self.dir / "schema"
        schema.mkdir()
        (schema / "001_a.sql").write_text("SELECT 1;")
        (schema / "003_c.sql").write_text("SELECT 1;")
        (schema / "README").write_text("ignored")
        self.assertRaises(StoreError, load_migrations, schema)
        (schema / "002_b.sql").write_text("SELECT 2;")
        self.assertEqual([m.version for m in load_migrations(schema)], [1, 2, 3])

    def test_store_construction_migrates(self) -> None:
        store = SQLiteStore(self.path)
        self.assertEqual(store.schema_version, len(load_migrations()))
        self.assertTrue(self.path.exists())


class ServiceGraphTests(SynchronousTestCase):
    """``twistd socp`` builds the store from ``--data-dir`` and migrates before anything listens."""

    def make(self, data: str):
        from socp_tw.tap import Options, makeService

        config = Options()
        config.parseOptions(["--bind", "ws://127.0.0.1:0", "--data-dir", data])
        return makeService(config)

    def test_database_in_data_dir(self) -> None:
        from socp_tw.test.servers import prepare_data_dir

        data = prepare_data_dir(self, 0)
        store = self.make(data).getServiceNamed("store")
        self.assertEqual(store.path, Path(data) / DB_FILE)
        self.assertTrue(store.path.is_file())  # migrated at construction, not at start
        self.assertFalse(store.running)

    def test_unusable_database_stops_startup(self) -> None:
        from socp_tw.test.servers import prepare_data_dir

        data = prepare_data_dir(self, 0)
        (Path(data) / DB_FILE).write_bytes(b"not a database at all" * 50)
        e = self.assertRaises(SystemExit, self.make, data)
        self.assertIn("socp: database:", str(e))
