"""Interoperation with other SOCP servers (docs/INTEROP.md), mesh side: one transcript per row.

The frames are the ones issue 15 observed from other implementations, made with test keys.
"""

from __future__ import annotations

import json

from socp_tw import crypto
from socp_tw.test.services.mesh.support import S1, S2, USER, TwoLinksTestCase, user_pub


class KeyInMetaOnlyTests(TwoLinksTestCase):
    """Row 1: USER_ADVERTISE {user_id, server_id, meta: {pubkey}} and {user_id, server_id, meta: {}}."""

    def pem_key(self, index: int = 6) -> str:
        return crypto.encode_public_key(crypto.load_public_key(user_pub(index)), pem=True)

    def test_key_only_in_meta_is_taken_and_pinned(self) -> None:
        payload = {"user_id": USER, "server_id": S1, "meta": {"pubkey": self.pem_key()}}
        data = self.frame("USER_ADVERTISE", S1, payload)
        self.receive(self.l1, data)
        entry = self.presence.lookup(USER)
        self.assertEqual((entry.server_id, entry.pubkey), (S1, self.pem_key()))
        self.assertIsNotNone(self.mesh._user_keys.lookup(USER))
        self.assertEqual(self.l2.frames(), [json.loads(data)])  # relayed unchanged

    def test_key_only_in_meta_still_meets_the_pin(self) -> None:
        self.receive(self.l1, self.advertise(S1))
        other = {"user_id": USER, "server_id": S2, "meta": {"pubkey": self.pem_key(7)}}
        self.receive(self.l2, self.frame("USER_ADVERTISE", S2, other))
        self.assertEqual(self.presence.lookup(USER).server_id, S1)
        self.assertEqual(self.mesh.counters["user_key_refused"], 1)

    def test_keyless_advert_records_the_location_only(self) -> None:
        data = self.frame("USER_ADVERTISE", S1, {"user_id": USER, "server_id": S1, "meta": {}})
        self.receive(self.l1, data)
        entry = self.presence.lookup(USER)
        self.assertEqual((entry.server_id, entry.pubkey), (S1, ""))
        self.assertIsNone(self.mesh._user_keys.lookup(USER))  # nothing pinned from no key
        self.assertEqual(self.l2.frames(), [json.loads(data)])
        self.assertEqual(self.mesh.counters["gossip.advertise_keyless"], 1)
        # A keyed advert later pins as usual.
        self.receive(self.l1, self.advertise(S1))
        self.assertEqual(self.presence.lookup(USER).pubkey, user_pub())
        self.assertIsNotNone(self.mesh._user_keys.lookup(USER))

    def test_keyless_advert_never_changes_a_pinned_key(self) -> None:
        self.receive(self.l1, self.advertise(S1))
        pin = self.mesh._user_keys.lookup(USER)
        moved = {"user_id": USER, "server_id": S2, "meta": {}}
        self.receive(self.l2, self.frame("USER_ADVERTISE", S2, moved))
        entry = self.presence.lookup(USER)
        self.assertEqual((entry.server_id, entry.pubkey), (S2, user_pub()))  # the pinned key stays
        self.assertEqual(self.mesh._user_keys.lookup(USER), pin)
        # And a keyed advert with another key is still refused after it.
        changed = {"user_id": USER, "server_id": S2, "pubkey": user_pub(7)}
        self.receive(self.l2, self.frame("USER_ADVERTISE", S2, changed))
        self.assertEqual(self.presence.lookup(USER).pubkey, user_pub())
        self.assertEqual(self.mesh.counters["user_key_refused"], 1)

    def test_keyless_advert_only_from_the_hosting_server(self) -> None:
        speaks_for_s1 = {"user_id": USER, "server_id": S1, "meta": {}}
        self.receive(self.l2, self.frame("USER_ADVERTISE", S2, speaks_for_s1))
        self.assertIsNone(self.presence.lookup(USER))
        self.assertEqual(self.mesh.counters["dropped.not_hosting_server"], 1)
