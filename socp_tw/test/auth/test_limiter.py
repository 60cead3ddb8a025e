"""Tests for socp_tw.auth.limiter: the login failure schedule, forgetting, bounds."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from socp_tw.auth.limiter import LoginLimiter
from socp_tw.services import users


class LimiterTests(SynchronousTestCase):
    def test_schedule(self) -> None:
        clock = Clock()
        limiter = LoginLimiter(clock)
        locks = [limiter.failure("u")[1] for _ in range(16)]
        self.assertEqual(locks, [0, 0, 0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900, 900])
        self.assertEqual(limiter.retry_after("U"), 900)  # ids compare case-insensitively
        clock.advance(899.5)
        self.assertEqual(limiter.retry_after("u"), 1)
        clock.advance(0.5)
        self.assertEqual(limiter.retry_after("u"), 0)
        limiter.success("u")
        self.assertEqual(limiter.failure("u"), (1, 0))

    def test_forgets_after_quiet_day(self) -> None:
        clock = Clock()
        limiter = LoginLimiter(clock, forget_after=100)
        for _ in range(5):
            limiter.failure("u")
        clock.advance(101)
        self.assertEqual(limiter.retry_after("u"), 0)
        self.assertEqual(len(limiter), 0)
        self.assertEqual(limiter.failure("u"), (1, 0))

    def test_bounded(self) -> None:
        limiter = LoginLimiter(Clock(), max_ids=3)
        for name in "abcd":
            limiter.failure(name)
        self.assertEqual(len(limiter), 3)
        self.assertEqual(limiter.failure("a"), (1, 0))  # the oldest was forgotten

    def test_forgets_strictly_after_the_quiet_time(self) -> None:
        """Quiet for exactly ``forget_after`` s still remembers; any longer forgets."""
        clock = Clock()
        limiter = LoginLimiter(clock, forget_after=100)
        for _ in range(4):
            limiter.failure("u")
        clock.advance(100)
        self.assertEqual(limiter.failure("u"), (5, 2))
        clock.advance(100.001)
        self.assertEqual(limiter.failure("u"), (1, 0))

    def test_quiet_time_restarts_at_each_failure(self) -> None:
        clock = Clock()
        limiter = LoginLimiter(clock, forget_after=100)
        for _ in range(5):
            limiter.failure("u")
            clock.advance(60)
        self.assertEqual(limiter.failure("u"), (6, 4))

    def test_least_recently_failed_forgotten_first(self) -> None:
        clock = Clock()
        limiter = LoginLimiter(clock, max_ids=2)
        limiter.failure("a")
        limiter.failure("b")
        limiter.failure("a")  # "b" is now the least recently failed
        self.assertEqual(limiter.retry_after("b"), 0)  # a lookup does not refresh
        limiter.failure("c")
        self.assertEqual(limiter.failure("a"), (3, 0))
        self.assertEqual(limiter.failure("b"), (1, 0))

    def test_success_forgets_one_id_only(self) -> None:
        limiter = LoginLimiter(Clock())
        for _ in range(4):
            limiter.failure("a")
            limiter.failure("b")
        limiter.success("A")
        self.assertEqual(limiter.retry_after("a"), 0)
        self.assertEqual(limiter.retry_after("b"), 1)
        self.assertEqual(len(limiter), 1)

    def test_users_uses_this_limiter(self) -> None:
        self.assertIs(users.LoginLimiter, LoginLimiter)
