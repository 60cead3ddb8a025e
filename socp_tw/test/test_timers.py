"""``socp_tw.timers``: the repeating calls every service starts and stops the same way."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from socp_tw.timers import repeating, stop_repeating


class RepeatingTests(SynchronousTestCase):
    def test_first_call_after_one_interval_then_every_interval(self) -> None:
        clock, calls = Clock(), []
        loop = repeating(clock, 5, calls.append, "tick")
        self.assertEqual(calls, [])
        clock.advance(5)
        clock.advance(5)
        self.assertEqual(calls, ["tick", "tick"])
        stop_repeating(loop)
        clock.advance(20)
        self.assertEqual(len(calls), 2)

    def test_now_calls_at_once(self) -> None:
        clock, calls = Clock(), []
        loop = repeating(clock, 15, calls.append, 1, now=True)
        self.assertEqual(calls, [1])
        stop_repeating(loop)

    def test_stopping_twice_or_nothing_is_harmless(self) -> None:
        loop = repeating(Clock(), 1, lambda: None)
        stop_repeating(loop)
        stop_repeating(loop)
        stop_repeating(None)
        self.assertFalse(loop.running)
