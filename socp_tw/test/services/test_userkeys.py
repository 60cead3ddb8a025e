"""Server-side user key pins (services/userkeys.py, docs/SECURITY.md §2a): the book itself, its
store, and the user side's and the mesh's refusals of a changed key."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import crypto, wire
from socp_tw.services.store import SQLiteStore, read_user_keys
from socp_tw.services.userkeys import DIFFERS, FULL, NEW, SAME, UserKeys, key_digest
from socp_tw.test.keys import test_key, vector_key
from socp_tw.test.services.users.test_users import OTHER_SERVER, UserSideTestBase
from socp_tw.testing import MemoryStore

ALICE_KEY = crypto.encode_public_key(vector_key("alice"))
BOB_KEY = crypto.encode_public_key(vector_key("bob"))
USER = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
HOME = "6fa459ea-ee8a-4ca4-894e-db77e160355e"


class BookTests(SynchronousTestCase):
    def test_first_key_wins_in_any_encoding(self) -> None:
        store = MemoryStore()
        keys = UserKeys(store)
        self.assertEqual(keys.check(USER, ALICE_KEY), NEW)
        self.assertEqual(keys.pin_advertised(USER, ALICE_KEY, HOME), NEW)
        pem = crypto.encode_public_key(vector_key("alice"), pem=True)
        self.assertEqual(keys.pin_advertised(USER.upper(), pem, HOME), SAME)  # ids ignore case
        self.assertEqual(keys.pin_advertised(USER, BOB_KEY, HOME), DIFFERS)
        self.assertEqual(keys.check(USER, "not a key"), DIFFERS)
        pin = keys.lookup(USER)
        self.assertEqual((pin.home_server, pin.registered), (HOME, False))
        self.assertEqual(pin.fingerprint, crypto.fingerprint(ALICE_KEY))
        # Written through to the store, normalised.
        row = self.successResultOf(store.get_user(USER))
        self.assertEqual((row["pubkey"], row["home_server"], row["pake_password"]), (ALICE_KEY, HOME, None))

    def test_local_pins_override(self) -> None:
        keys = UserKeys()
        keys.pin_local(USER, ALICE_KEY, registered=True)
        pin = keys.lookup(USER)
        self.assertEqual((pin.home_server, pin.registered, pin.digest), (None, True, key_digest(ALICE_KEY)))
        self.assertEqual(keys.pin_advertised(USER, BOB_KEY, HOME), DIFFERS)

    def test_pins_from_gossip_are_bounded(self) -> None:
        keys = UserKeys(max_gossip_pins=2)
        for _ in range(2):
            self.assertEqual(keys.pin_advertised(wire.new_uuid4(), ALICE_KEY, HOME), NEW)
        self.assertEqual(keys.pin_advertised(wire.new_uuid4(), ALICE_KEY, HOME), FULL)
        keys.pin_local(wire.new_uuid4(), ALICE_KEY, registered=False)  # local pins are not bounded here
        self.assertEqual(len(keys), 3)

    def test_loaded_from_the_database_at_start(self) -> None:
        path = Path(self.mktemp())
        path.parent.mkdir(parents=True, exist_ok=True)
        SQLiteStore(path)  # migrates to the current schema
        self.assertEqual(read_user_keys(path), [])
        conn = sqlite3.connect(str(path))
        conn.execute(
            "INSERT INTO users (user_id, pubkey, created_at, home_server) VALUES (?, ?, 1, ?)",
            (USER, ALICE_KEY, HOME),
        )
        conn.execute(
            "INSERT INTO users (user_id, pubkey, privkey_store, pake_password, created_at)"
            " VALUES (?, ?, 'a', 'b', 1)",
            (OTHER_SERVER, BOB_KEY),
        )
        conn.execute("INSERT INTO users (user_id, pubkey, created_at) VALUES ('bad', 'not a key', 1)")
        conn.commit()
        conn.close()
        keys = UserKeys(rows=read_user_keys(path))
        self.assertEqual(len(keys), 2)  # the unusable row is skipped (and logged)
        self.assertEqual(keys.lookup(USER).home_server, HOME)
        self.assertTrue(keys.lookup(OTHER_SERVER).registered)


class UserSidePinTests(UserSideTestBase):
    """A user id whose key came from another server's gossip, then claimed here."""

    def setUp(self) -> None:
        super().setUp()
        self.victim_key = vector_key("alice")
        self.user_keys.pin_advertised(USER, crypto.encode_public_key(self.victim_key), HOME)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def errors_logged(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e.get("log_level") == LogLevel.error]

    def test_first_use_hello_with_another_key_is_refused_and_logged(self) -> None:
        link = self.open_link()
        frames = self.hello(link, USER, test_key(4), proof=False)
        self.assertEqual((frames[0]["type"], frames[0]["payload"]["code"]), ("ERROR", "BAD_KEY"))
        self.assertIsNone(self.presence.lookup(USER))
        [line] = self.errors_logged()
        self.assertIn(f"REFUSED changed key for user {USER}", line)
        self.assertIn(f"home server {HOME}", line)
        self.hello(self.open_link(), USER, test_key(4), proof=False)
        self.assertEqual(len(self.errors_logged()), 1)  # once a minute per user
        self.assertEqual(self.users.counters["user_key_refused"], 2)

    def test_the_same_key_needs_a_proof(self) -> None:
        frames = self.hello(self.open_link(), USER, self.victim_key, proof=False)
        self.assertEqual(frames[0]["payload"]["code"], "AUTH_FAILED")
        self.assertIn(HOME, frames[0]["payload"]["detail"])
        frames = self.hello(self.open_link(), USER, self.victim_key, proof=True)
        self.assertEqual(frames[0]["type"], "ACK")
        self.assertTrue(self.presence.lookup(USER).local)

    def test_registration_of_an_id_of_another_server_is_refused(self) -> None:
        for key in (test_key(4), self.victim_key):
            answer = self.register(self.open_link(), USER, key)
            self.assertEqual(answer["payload"]["code"], "NAME_IN_USE")
            self.assertIn(HOME, answer["payload"]["detail"])
        self.assertIsNone(self.successResultOf(self.store.get_user(USER)))
        self.assertEqual(len(self.errors_logged()), 1)  # only the other key is an error

    def test_registration_and_first_use_pin_here(self) -> None:
        user_id = wire.new_uuid4()
        self.online(user_id, test_key(4))
        self.assertTrue(self.user_keys.lookup(user_id).registered)
        other = wire.new_uuid4()
        self.online(other, test_key(5), register=False)
        pin = self.user_keys.lookup(other)
        self.assertEqual((pin.registered, pin.home_server), (False, None))
