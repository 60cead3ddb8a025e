"""CollectorPolicy: freeze after each full collection, thaw on a mass departure or when due."""

from __future__ import annotations

import gc
import weakref

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from socp_tw.gcpolicy import CollectorPolicy


class FakeGC:
    """The parts of ``gc`` the policy uses, recorded."""

    def __init__(self) -> None:
        self.callbacks: list = []
        self.frozen = 0
        self.calls: list[str] = []

    def freeze(self) -> None:
        self.calls.append("freeze")
        self.frozen += 100

    def unfreeze(self) -> None:
        self.calls.append("unfreeze")
        self.frozen = 0

    def get_freeze_count(self) -> int:
        return self.frozen

    def collect(self) -> int:
        self.calls.append("collect")
        for callback in list(self.callbacks):  # as gc does: a full collection's callbacks
            callback("start", {"generation": 2})
            callback("stop", {"generation": 2, "collected": 7})
        return 7

    def full_collection(self, generation: int = 2) -> None:
        for callback in list(self.callbacks):
            callback("stop", {"generation": generation, "collected": 0})


class ThreadClock(Clock):
    def callFromThread(self, f, *args) -> None:
        self.callLater(0, f, *args)


class CollectorPolicyTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.gc, self.clock, self.users = FakeGC(), ThreadClock(), 1000
        self.policy = CollectorPolicy(lambda: self.users, self.clock, thaw_interval=600, gc=self.gc)
        self.policy.startService()
        self.addCleanup(self.policy.stopService)

    def test_survivors_of_a_full_collection_are_frozen_in_the_reactor(self) -> None:
        self.gc.full_collection(generation=1)
        self.gc.full_collection()
        self.assertEqual(self.gc.calls, [])  # not inside the collection
        self.clock.advance(0)
        self.assertEqual(self.gc.calls, ["freeze"])
        self.assertEqual(self.policy.counters["freezes"], 1)

    def test_a_mass_departure_thaws_and_collects_once(self) -> None:
        self.gc.full_collection()
        self.clock.advance(0)
        self.users = 800  # a fifth gone: not yet
        self.clock.advance(5)
        self.assertEqual(self.gc.calls, ["freeze"])
        self.users = 700
        self.clock.advance(5)
        self.assertEqual(self.gc.calls, ["freeze", "unfreeze", "collect"])
        self.clock.advance(0)
        self.assertEqual(self.gc.calls, ["freeze", "unfreeze", "collect"])  # its own collection: no freeze
        self.assertEqual(self.policy.counters["thaws"], 1)
        self.clock.advance(5)
        self.assertEqual(self.policy.counters["thaws"], 1)  # nothing frozen: nothing to thaw
        self.gc.full_collection()
        self.clock.advance(0)
        self.assertEqual(self.gc.calls[-1], "freeze")  # the next natural one freezes again

    def test_a_thaw_comes_when_due(self) -> None:
        self.gc.full_collection()
        self.clock.advance(0)
        self.clock.advance(595)
        self.assertNotIn("unfreeze", self.gc.calls)
        self.clock.advance(5)
        self.assertEqual(self.gc.calls[-2:], ["unfreeze", "collect"])

    def test_stopping_unfreezes_and_unhooks(self) -> None:
        self.gc.full_collection()
        self.clock.advance(0)
        self.policy.stopService()
        self.assertEqual(self.gc.calls[-1], "unfreeze")
        self.assertEqual(self.gc.callbacks, [])
        self.policy.startService()  # for the cleanup

    def test_the_real_gc_collects_a_frozen_cycle_after_a_thaw(self) -> None:
        """With CPython's gc: a cycle frozen by the policy is not collected until the thaw."""
        policy = CollectorPolicy(lambda: self.users, self.clock, thaw_interval=600)
        self.users = 1000
        policy.startService()
        self.addCleanup(policy.stopService)

        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a
        probe = weakref.ref(a)
        gc.collect()  # a natural-like full collection: the policy asks for a freeze
        self.clock.advance(0)
        self.assertGreater(gc.get_freeze_count(), 0)
        del a, b
        gc.collect()
        self.assertIsNotNone(probe())  # frozen: the cycle waits
        self.users = 10
        self.clock.advance(5)
        self.assertIsNone(probe())
