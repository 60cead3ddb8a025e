"""The seen_ids cache (services/mesh/seen.py): keys, bounded in age and in size."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import wire
from socp_tw.services.mesh import SeenCache
from socp_tw.test.services.mesh.support import (
    ALICE,
    S1,
    USER,
)


class SeenCacheTests(SynchronousTestCase):
    def test_key_ignores_sig_and_covers_payload(self) -> None:
        a = wire.Envelope("USER_REMOVE", S1, "*", 5, {"user_id": USER}, "sig-1")
        b = wire.Envelope("USER_REMOVE", S1, "*", 5, {"user_id": USER}, "sig-2")
        c = wire.Envelope("USER_REMOVE", S1, "*", 5, {"user_id": ALICE}, "sig-1")
        self.assertEqual(SeenCache.key(a), SeenCache.key(b))
        self.assertNotEqual(SeenCache.key(a), SeenCache.key(c))
        self.assertNotEqual(
            SeenCache.key(a), SeenCache.key(wire.Envelope("USER_REMOVE", S1, "*", 6, {"user_id": USER}))
        )

    def test_bounded_by_age(self) -> None:
        clock = Clock()
        seen = SeenCache(clock, max_size=10, max_age=600)
        seen.add(("a",))
        clock.advance(599)
        self.assertIn(("a",), seen)
        seen.add(("b",))
        clock.advance(2)
        self.assertNotIn(("a",), seen)
        self.assertIn(("b",), seen)
        self.assertEqual(len(seen), 1)

    def test_a_repeat_does_not_keep_a_key_alive(self) -> None:
        clock = Clock()
        seen = SeenCache(clock, max_size=10, max_age=600)
        seen.add(("a",))
        clock.advance(599)
        seen.add(("a",))  # a replay loop must not refresh the entry
        clock.advance(2)
        self.assertNotIn(("a",), seen)

    def test_bounded_by_size(self) -> None:
        seen = SeenCache(Clock(), max_size=3, max_age=600)
        for name in "abcd":
            seen.add((name,))
        self.assertEqual(len(seen), 3)
        self.assertNotIn(("a",), seen)
        self.assertIn(("d",), seen)
