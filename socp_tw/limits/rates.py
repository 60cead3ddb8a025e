"""Rate limits: token buckets, a bounded table of them, and strike counters.

- :class:`RateLimiter` per connection and per user (the hub): a frame that finds its
  bucket empty is answered ``ERROR RATE_LIMITED`` and costs a strike; per server link
  (the mesh): the link is read slower until its bucket refills (nothing is dropped);
- :class:`Strikes`: when a connection collects ``limit`` strikes within ``window``
  seconds it is closed.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable
from typing import Protocol

__all__ = ["Clock", "RateLimiter", "Strikes", "TokenBucket"]


class Clock(Protocol):
    """What the limiters need from a clock: seconds as a float (``IReactorTime.seconds``)."""

    def seconds(self) -> float: ...


# -- token buckets ------------------------------------------------------------------------------------


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` tokens per second; each action spends ``cost``.

    Starts full. A clock that steps backwards (wall-clock adjustments) refills
    nothing rather than going negative. An action costing more than ``burst`` is
    never allowed.
    """

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, clock: Clock) -> None:
        if not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number, not {rate!r}")
        if not (burst > 0 and math.isfinite(burst)):
            raise ValueError(f"burst must be a positive number, not {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._clock = clock
        self._tokens = self.burst
        self._last = clock.seconds()

    def _refill(self) -> None:
        now = self._clock.seconds()
        if now > self._last:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now

    def allow(self, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are that many; say whether the action may proceed."""
        if cost < 0:
            raise ValueError(f"cost must not be negative, not {cost!r}")
        self._refill()
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        self._refill()
        return self._tokens

    def is_full(self) -> bool:
        """True when the bucket has fully refilled: forgetting it loses nothing."""
        return self.tokens >= self.burst

    def retry_after(self, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens are available (0 if they are now; inf if never)."""
        if cost > self.burst:
            return math.inf
        return max(0.0, (cost - self.tokens) / self.rate)


class RateLimiter:
    """One :class:`TokenBucket` per key, in an LRU of at most ``max_keys`` buckets.

    The least recently used key is evicted first when a new key arrives at a full
    table. Normally that bucket has long refilled, so forgetting it is lossless;
    under a flood of more than ``max_keys`` distinct active keys the oldest key's
    debt is forgiven — bounded memory wins, and each key's own bucket still caps it.
    Call :meth:`forget` when the key's owner goes away (a closed connection).
    """

    def __init__(self, rate: float, burst: float, clock: Clock, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys!r}")
        TokenBucket(rate, burst, clock)  # validate rate/burst now, not on the first key
        self.rate = rate
        self.burst = burst
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[Hashable, TokenBucket] = OrderedDict()

    def allow(self, key: Hashable, cost: float = 1.0) -> bool:
        """Spend ``cost`` from ``key``'s bucket; False means rate limited."""
        bucket = self._buckets.get(key)
        if bucket is None:
            while len(self._buckets) >= self.max_keys:
                self._buckets.popitem(last=False)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, self._clock)
        else:
            self._buckets.move_to_end(key)
        return bucket.allow(cost)

    def retry_after(self, key: Hashable, cost: float = 1.0) -> float:
        """Seconds until ``key`` may spend ``cost`` (0 for an unknown key)."""
        bucket = self._buckets.get(key)
        return 0.0 if bucket is None else bucket.retry_after(cost)

    def forget(self, key: Hashable) -> None:
        """Drop ``key``'s bucket (its owner is gone)."""
        self._buckets.pop(key, None)

    def prune(self) -> int:
        """Drop full buckets from the least recently used end; return how many (for a periodic timer)."""
        dropped = 0
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if not bucket.is_full():
                break
            del self._buckets[key]
            dropped += 1
        return dropped

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, key: object) -> bool:
        return key in self._buckets


class Strikes:
    """Count violations per key; a key with ``limit`` strikes inside ``window`` seconds is cut off.

    A strike counts for ``window`` seconds after it happened. At most ``max_keys``
    keys are tracked (LRU), each keeping at most ``limit`` timestamps.
    """

    def __init__(self, limit: int, window: float, clock: Clock, max_keys: int = 100_000) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit!r}")
        if not window > 0:
            raise ValueError(f"window must be positive, not {window!r}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys!r}")
        self.limit = limit
        self.window = float(window)
        self.max_keys = max_keys
        self._clock = clock
        self._strikes: OrderedDict[Hashable, list[float]] = OrderedDict()

    def _live(self, key: Hashable, now: float) -> list[float]:
        times = self._strikes.get(key)
        if times is None:
            return []
        fresh = [t for t in times if now - t < self.window]
        if len(fresh) != len(times):
            if fresh:
                self._strikes[key] = fresh
            else:
                del self._strikes[key]
        return fresh

    def strike(self, key: Hashable) -> bool:
        """Record one violation by ``key``; True when it has now reached ``limit`` within the window."""
        now = self._clock.seconds()
        times = self._live(key, now)
        times.append(now)
        del times[: -self.limit]  # only the newest ``limit`` can matter
        if key not in self._strikes:
            while len(self._strikes) >= self.max_keys:
                self._strikes.popitem(last=False)
        self._strikes[key] = times
        self._strikes.move_to_end(key)
        return len(times) >= self.limit

    def count(self, key: Hashable) -> int:
        """Strikes of ``key`` still inside the window."""
        return len(self._live(key, self._clock.seconds()))

    def clear(self, key: Hashable) -> None:
        """Forget ``key``'s strikes (after a success, or when its connection closes)."""
        self._strikes.pop(key, None)

    def __len__(self) -> int:
        return len(self._strikes)
