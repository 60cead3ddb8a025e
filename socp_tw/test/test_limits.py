"""socp_tw.limits: token buckets, strikes, bounded TTL caches, the ts window and the Limits table."""

from __future__ import annotations

import dataclasses
import inspect
import math
import re

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import content, wire
from socp_tw.limits import (
    DEFAULT_LIMITS,
    BoundedTTLCache,
    Limits,
    RateLimiter,
    StaleTimestamp,
    Strikes,
    TokenBucket,
    check_ts_window,
)


class SteppingClock:
    """A clock that can also step backwards, like a wall clock under NTP."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def seconds(self) -> float:
        return self.now


class TokenBucketTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def test_starts_full_and_empties_after_burst(self) -> None:
        bucket = TokenBucket(rate=1, burst=5, clock=self.clock)
        self.assertEqual([bucket.allow() for _ in range(6)], [True] * 5 + [False])
        self.assertFalse(bucket.allow())

    def test_refills_at_rate(self) -> None:
        bucket = TokenBucket(rate=2, burst=2, clock=self.clock)
        self.assertTrue(bucket.allow(2))
        self.clock.advance(0.25)
        self.assertFalse(bucket.allow())  # half a token
        self.clock.advance(0.25)
        self.assertTrue(bucket.allow())
        self.assertFalse(bucket.allow())
        self.clock.advance(0.5)
        self.assertTrue(bucket.allow())

    def test_refill_is_capped_at_burst(self) -> None:
        bucket = TokenBucket(rate=10, burst=3, clock=self.clock)
        for _ in range(3):
            bucket.allow()
        self.clock.advance(3600)
        self.assertEqual(bucket.tokens, 3)
        self.assertTrue(bucket.is_full())
        self.assertEqual([bucket.allow() for _ in range(4)], [True, True, True, False])
        self.assertFalse(bucket.is_full())

    def test_cost(self) -> None:
        bucket = TokenBucket(rate=1, burst=5, clock=self.clock)
        self.assertTrue(bucket.allow(3))
        self.assertFalse(bucket.allow(3))  # a refusal spends nothing ...
        self.assertTrue(bucket.allow(2))  # ... so the 2 left are still there
        self.assertTrue(bucket.allow(0))
        self.assertFalse(bucket.allow(0.5))

    def test_cost_above_burst_never_passes(self) -> None:
        bucket = TokenBucket(rate=100, burst=5, clock=self.clock)
        self.clock.advance(1000)
        self.assertFalse(bucket.allow(6))
        self.assertEqual(bucket.retry_after(6), math.inf)
        self.assertTrue(bucket.allow(5))

    def test_retry_after(self) -> None:
        bucket = TokenBucket(rate=4, burst=2, clock=self.clock)
        self.assertEqual(bucket.retry_after(), 0)
        bucket.allow(2)
        self.assertAlmostEqual(bucket.retry_after(), 0.25)
        self.assertAlmostEqual(bucket.retry_after(2), 0.5)
        self.clock.advance(0.25)
        self.assertEqual(bucket.retry_after(), 0)

    def test_clock_stepping_back_adds_nothing(self) -> None:
        clock = SteppingClock()
        bucket = TokenBucket(rate=1, burst=2, clock=clock)
        bucket.allow(2)
        clock.now -= 500
        self.assertFalse(bucket.allow())
        self.assertEqual(bucket.tokens, 0)
        clock.now += 1  # refills from the new reading, not from the old one
        self.assertTrue(bucket.allow())

    def test_bad_arguments(self) -> None:
        for rate, burst in [(0, 1), (-1, 1), (math.nan, 1), (math.inf, 1), (1, 0), (1, -2), (1, math.inf)]:
            self.assertRaises(ValueError, TokenBucket, rate, burst, self.clock)
        self.assertRaises(ValueError, TokenBucket(1, 1, self.clock).allow, -1)


class RateLimiterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def test_keys_are_independent(self) -> None:
        limiter = RateLimiter(rate=1, burst=2, clock=self.clock)
        self.assertEqual([limiter.allow("a") for _ in range(3)], [True, True, False])
        self.assertTrue(limiter.allow("b"))
        self.assertFalse(limiter.allow("a"))
        self.assertGreater(limiter.retry_after("a"), 0)
        self.assertEqual(limiter.retry_after("never-seen"), 0)
        self.clock.advance(1)
        self.assertTrue(limiter.allow("a"))

    def test_least_recently_used_key_is_evicted(self) -> None:
        limiter = RateLimiter(rate=1, burst=1, clock=self.clock, max_keys=3)
        for key in "abc":
            self.assertTrue(limiter.allow(key))
        self.assertFalse(limiter.allow("a"))  # a is now the most recently used
        self.assertTrue(limiter.allow("d"))  # evicts b, the least recently used
        self.assertEqual(len(limiter), 3)
        self.assertNotIn("b", limiter)
        self.assertIn("a", limiter)
        self.assertFalse(limiter.allow("a"))  # a's debt was kept
        self.assertFalse(limiter.allow("c"))

    def test_memory_stays_bounded_under_a_flood_of_keys(self) -> None:
        limiter = RateLimiter(rate=1, burst=1, clock=self.clock, max_keys=1000)
        for i in range(100_000):
            limiter.allow(("10.0.0.1", i))
            if i % 1000 == 0:
                self.clock.advance(0.001)
        self.assertEqual(len(limiter), 1000)
        self.assertIn(("10.0.0.1", 99_999), limiter)
        self.assertNotIn(("10.0.0.1", 0), limiter)

    def test_forget_and_prune(self) -> None:
        limiter = RateLimiter(rate=1, burst=2, clock=self.clock)
        limiter.allow("idle")
        self.clock.advance(10)
        limiter.allow("busy", 2)
        limiter.allow("quiet")
        self.assertEqual(limiter.prune(), 1)  # "idle" refilled; "busy" is not full and stops the sweep
        self.assertEqual(len(limiter), 2)
        self.assertNotIn("idle", limiter)
        limiter.forget("busy")
        limiter.forget("never-seen")
        self.assertTrue(limiter.allow("busy", 2))  # a fresh bucket
        self.clock.advance(10)
        self.assertEqual(limiter.prune(), 2)
        self.assertEqual(len(limiter), 0)

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, RateLimiter, 0, 1, self.clock)
        self.assertRaises(ValueError, RateLimiter, 1, 1, self.clock, max_keys=0)


class StrikesTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def test_limit_within_window_cuts_off(self) -> None:
        strikes = Strikes(limit=3, window=10, clock=self.clock)
        self.assertFalse(strikes.strike("conn"))
        self.clock.advance(1)
        self.assertFalse(strikes.strike("conn"))
        self.assertFalse(strikes.strike("other"))
        self.clock.advance(1)
        self.assertTrue(strikes.strike("conn"))
        self.assertTrue(strikes.strike("conn"))  # stays cut off while over the limit
        self.assertEqual(strikes.count("other"), 1)

    def test_old_strikes_expire(self) -> None:
        strikes = Strikes(limit=3, window=10, clock=self.clock)
        strikes.strike("k")  # t=0
        self.clock.advance(5)
        strikes.strike("k")  # t=5
        self.clock.advance(5)
        self.assertFalse(strikes.strike("k"))  # t=10: the t=0 strike is exactly window old, gone
        self.assertEqual(strikes.count("k"), 2)
        self.clock.advance(1)
        self.assertTrue(strikes.strike("k"))  # t=11: 5, 10, 11
        self.clock.advance(100)
        self.assertEqual(strikes.count("k"), 0)
        self.assertEqual(len(strikes), 0)  # a key with no live strike is dropped

    def test_steady_trickle_below_limit_never_cuts_off(self) -> None:
        strikes = Strikes(limit=3, window=10, clock=self.clock)
        for _ in range(100):
            self.assertFalse(strikes.strike("k"))
            self.clock.advance(5.01)

    def test_limit_one(self) -> None:
        self.assertTrue(Strikes(limit=1, window=1, clock=self.clock).strike("k"))

    def test_clear(self) -> None:
        strikes = Strikes(limit=2, window=10, clock=self.clock)
        strikes.strike("k")
        strikes.clear("k")
        strikes.clear("never-seen")
        self.assertFalse(strikes.strike("k"))

    def test_bounded(self) -> None:
        strikes = Strikes(limit=5, window=60, clock=self.clock, max_keys=100)
        for i in range(10_000):
            strikes.strike(i)
        self.assertEqual(len(strikes), 100)
        for _ in range(1000):
            strikes.strike("hot")
        self.assertLessEqual(len(strikes._strikes["hot"]), 5)  # timestamps per key are bounded too

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, Strikes, 0, 1, self.clock)
        self.assertRaises(ValueError, Strikes, 1, 0, self.clock)
        self.assertRaises(ValueError, Strikes, 1, 1, self.clock, max_keys=0)


class BoundedTTLCacheTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()

    def test_add_is_seen_ids(self) -> None:
        seen = BoundedTTLCache(max_entries=10, max_age=60, clock=self.clock)
        self.assertTrue(seen.add("id1"))
        self.assertFalse(seen.add("id1"))
        self.assertTrue(seen.add("id2"))
        self.assertIn("id1", seen)
        self.assertNotIn("id3", seen)
        self.assertEqual(len(seen), 2)

    def test_repeat_does_not_refresh(self) -> None:
        seen = BoundedTTLCache(max_entries=10, max_age=60, clock=self.clock)
        seen.add("id")
        for _ in range(5):
            self.clock.advance(11)
            self.assertFalse(seen.add("id"))
        self.clock.advance(5)  # 60 s after the first add
        self.assertNotIn("id", seen)
        self.assertTrue(seen.add("id"))

    def test_age_eviction_oldest_first(self) -> None:
        cache = BoundedTTLCache(max_entries=10, max_age=10, clock=self.clock)
        cache.add("a")
        self.clock.advance(5)
        cache.add("b")
        self.clock.advance(4.75)
        self.assertEqual(list(cache), ["a", "b"])
        self.clock.advance(0.25)
        self.assertEqual(list(cache), ["b"])
        self.assertEqual(len(cache), 1)
        self.clock.advance(5)
        self.assertEqual(len(cache), 0)

    def test_size_eviction_oldest_first(self) -> None:
        cache = BoundedTTLCache(max_entries=3, max_age=60, clock=self.clock)
        for key in "abcd":
            self.assertTrue(cache.add(key))
        self.assertEqual(list(cache), ["b", "c", "d"])
        self.assertTrue(cache.add("a"))  # evicted, so new again
        self.assertEqual(list(cache), ["c", "d", "a"])

    def test_memory_stays_bounded_under_a_flood(self) -> None:
        seen = BoundedTTLCache(max_entries=1000, max_age=600, clock=self.clock)
        for i in range(100_000):
            seen.add(i)
        self.assertEqual(len(seen), 1000)
        self.assertEqual(len(seen._entries), 1000)
        self.assertIn(99_999, seen)
        self.assertNotIn(0, seen)

    def test_put_get_pop(self) -> None:
        cache = BoundedTTLCache(max_entries=2, max_age=60, clock=self.clock)
        cache.put("a", 1)
        cache.put("b", 2)
        self.assertEqual(cache.get("a"), 1)
        self.assertIsNone(cache.get("zz"))
        self.assertEqual(cache.get("zz", "dflt"), "dflt")
        cache.put("a", 3)  # replaces and becomes the newest
        cache.put("c", 4)  # evicts b
        self.assertEqual(list(cache), ["a", "c"])
        self.assertEqual(cache.get("a"), 3)
        self.assertEqual(cache.pop("a"), 3)
        self.assertNotIn("a", cache)
        self.assertEqual(cache.pop("a", None), None)
        self.assertRaises(KeyError, cache.pop, "a")
        cache.discard("c")
        cache.discard("c")
        self.assertEqual(len(cache), 0)

    def test_put_refreshes_age(self) -> None:
        cache = BoundedTTLCache(max_entries=10, max_age=10, clock=self.clock)
        cache.put("k", "old")
        self.clock.advance(8)
        cache.put("k", "new")
        self.clock.advance(8)
        self.assertEqual(cache.get("k"), "new")

    def test_expired_entries_are_gone_for_every_accessor(self) -> None:
        cache = BoundedTTLCache(max_entries=10, max_age=10, clock=self.clock)
        cache.put("k", "v")
        self.clock.advance(10)
        self.assertNotIn("k", cache)
        cache.put("k", "v")
        self.clock.advance(10)
        self.assertIsNone(cache.get("k"))
        cache.put("k", "v")
        self.clock.advance(10)
        self.assertRaises(KeyError, cache.pop, "k")

    def test_clock_stepping_back(self) -> None:
        clock = SteppingClock()
        cache = BoundedTTLCache(max_entries=3, max_age=10, clock=clock)
        cache.add("a")
        clock.now -= 100
        cache.add("b")  # older stamp behind a newer one: order no longer by age
        clock.now += 105  # a is 5 s old, b is 105 s old
        self.assertNotIn("b", cache)  # still refused when looked up directly
        self.assertIn("a", cache)
        for key in "cdef":
            cache.add(key)
        self.assertLessEqual(len(cache), 3)  # the size bound holds regardless

    def test_clear(self) -> None:
        cache = BoundedTTLCache(max_entries=10, max_age=10, clock=self.clock)
        cache.add("a")
        cache.clear()
        self.assertEqual(len(cache), 0)

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, BoundedTTLCache, 0, 10, self.clock)
        self.assertRaises(ValueError, BoundedTTLCache, 10, 0, self.clock)


class TimestampWindowTests(SynchronousTestCase):
    NOW = 1_700_000_000_000

    def test_edges_are_accepted(self) -> None:
        for ts in (self.NOW, self.NOW - 300_000, self.NOW + 300_000):
            check_ts_window(ts, self.NOW)
        check_ts_window(self.NOW + 5000, self.NOW, window_ms=5000)

    def test_beyond_the_edges_is_refused(self) -> None:
        for ts, direction in [(self.NOW - 300_001, "behind"), (self.NOW + 300_001, "ahead of")]:
            with self.assertRaises(StaleTimestamp) as caught:
                check_ts_window(ts, self.NOW)
            error = caught.exception
            self.assertIsInstance(error, wire.BadTimestamp)
            self.assertIsInstance(error, wire.FrameError)
            self.assertEqual(error.code, "BAD_TS")
            self.assertEqual(error.field, "ts")
            self.assertIn(direction, error.detail)
            self.assertIn("300 s", error.detail)

    def test_detail_says_how_far(self) -> None:
        with self.assertRaises(StaleTimestamp) as caught:
            check_ts_window(self.NOW - 3_600_000, self.NOW)
        self.assertIn("60.0 min behind", caught.exception.detail)
        with self.assertRaises(StaleTimestamp) as caught:
            check_ts_window(self.NOW + 301_500, self.NOW)
        self.assertIn("301.5 s ahead of", caught.exception.detail)
        with self.assertRaises(StaleTimestamp) as caught:
            check_ts_window(self.NOW + 2, self.NOW, window_ms=1)
        self.assertIn("window is ±0.001 s", caught.exception.detail)

    def test_replayed_old_frame(self) -> None:
        self.assertRaises(StaleTimestamp, check_ts_window, 0, self.NOW)

    def test_non_integer_ts(self) -> None:
        for bad in (True, 1.5, "1700000000000", None):
            with self.assertRaises(wire.BadTimestamp) as caught:
                check_ts_window(bad, self.NOW)  # type: ignore[arg-type]
            self.assertNotIsInstance(caught.exception, StaleTimestamp)


class LimitsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        limits = Limits()
        self.assertEqual(limits, DEFAULT_LIMITS)
        self.assertEqual(limits.max_frame_bytes, 262144)
        self.assertEqual(limits.max_frame_bytes, wire.MAX_FRAME_BYTES)
        self.assertEqual((limits.conn_rate, limits.conn_burst), (50, 200))
        self.assertEqual((limits.user_rate, limits.user_burst), (20, 200))
        self.assertEqual(limits.peer_rate, 2000)
        self.assertEqual(limits.identify_timeout, 30)
        self.assertEqual(limits.ts_window, 300)
        self.assertEqual(limits.ts_window_ms, 300_000)
        self.assertEqual((limits.seen_ids_max, limits.seen_ids_ttl), (100_000, 600))

    def test_agrees_with_content_checks(self) -> None:
        self.assertEqual(Limits().max_ciphertext_chars, content.MAX_CIPHERTEXT_CHARS)

    def test_frozen_and_replaceable(self) -> None:
        limits = Limits()
        with self.assertRaises(dataclasses.FrozenInstanceError):
            limits.conn_rate = 1  # type: ignore[misc]
        tighter = dataclasses.replace(limits, conn_rate=5.0, ts_window=60.0)
        self.assertEqual(tighter.conn_rate, 5.0)
        self.assertEqual(tighter.ts_window_ms, 60_000)
        self.assertEqual(limits.conn_rate, 50)

    def test_every_limit_is_documented_on_its_line(self) -> None:
        source = inspect.getsource(Limits)
        names = {f.name for f in dataclasses.fields(Limits)}
        documented = set(re.findall(r"^    (\w+): [\w.| ]+ = .+  # \S.*$", source, re.MULTILINE))
        self.assertEqual(names - documented, set())

    def test_rejects_nonsense(self) -> None:
        for name in ("conn_rate", "max_frame_bytes", "identify_timeout", "seen_ids_max"):
            for bad in (0, -1, True, "10"):
                with self.assertRaises(ValueError, msg=(name, bad)) as caught:
                    Limits(**{name: bad})
                self.assertIn(name, str(caught.exception))
        self.assertRaises(ValueError, Limits, conn_burst=0.5)
        with self.assertRaises(ValueError) as caught:
            Limits(ts_window=600)  # seen_ids_ttl 600 no longer covers ±600 s
        self.assertIn("seen_ids_ttl", str(caught.exception))
        Limits(ts_window=600, seen_ids_ttl=1200)
