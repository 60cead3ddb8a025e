"""Resource limits: token buckets, strike counters, bounded TTL caches, the ``ts`` window, and every default.

Pure building blocks with an injected clock (anything with ``.seconds()``: the
reactor, or ``task.Clock`` in tests). Nothing here grows without bound: every
per-key table is an LRU with a maximum size, so memory stays flat under a flood of
distinct keys (connections, users, peers, message ids).

How the services use them:

- :class:`RateLimiter` per connection and per user (the hub): a frame that finds its
  bucket empty is answered ``ERROR RATE_LIMITED`` and costs a strike; per server link
  (the mesh): the link is read slower until its bucket refills (nothing is dropped);
- :class:`Strikes`: when a connection collects ``limit`` strikes within ``window``
  seconds it is closed;
- :class:`BoundedTTLCache` as ``seen_ids`` and for any other cache or pending table;
- :func:`check_ts_window` refuses user content whose ``ts`` is too far from now;
- :class:`Limits` holds every number and its default in one place.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, fields
from typing import Any, Protocol

from socp_tw import wire

__all__ = [
    "DEFAULT_LIMITS",
    "BoundedTTLCache",
    "Clock",
    "Limits",
    "RateLimiter",
    "StaleTimestamp",
    "Strikes",
    "TokenBucket",
    "check_ts_window",
]

_MISSING: Any = object()


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


# -- bounded caches -----------------------------------------------------------------------------------


class BoundedTTLCache:
    """An insertion-ordered dict (or set) holding at most ``max_entries`` entries for at most ``max_age`` s.

    Entries expire oldest first, by age and by size, in O(1) amortised per
    operation: age is checked from the oldest end only, which is exact as long as
    the clock does not step backwards (if it does, entries merely live a little
    longer; the size bound still holds). :meth:`add` is the ``seen_ids`` test: it
    records a key and says whether it was new; a repeat does not refresh the entry,
    so a replay loop cannot keep an id alive. :meth:`put` replaces and refreshes.
    """

    def __init__(self, max_entries: int, max_age: float, clock: Clock) -> None:
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries!r}")
        if not max_age > 0:
            raise ValueError(f"max_age must be positive, not {max_age!r}")
        self.max_entries = max_entries
        self.max_age = float(max_age)
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()

    def _expire(self) -> float:
        now = self._clock.seconds()
        entries = self._entries
        while entries:
            stamp = next(iter(entries.values()))[0]
            if now - stamp < self.max_age:
                break
            entries.popitem(last=False)
        return now

    def _fresh(self, key: Hashable, now: float) -> tuple[float, Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry[0] >= self.max_age:  # possible only after the clock stepped back
            del self._entries[key]
            return None
        return entry

    def _insert(self, key: Hashable, value: Any, now: float) -> None:
        self._entries[key] = (now, value)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def add(self, key: Hashable) -> bool:
        """Record ``key``; True if it was new, False if it is already present and fresh."""
        now = self._expire()
        if self._fresh(key, now) is not None:
            return False
        self._insert(key, None, now)
        return True

    def put(self, key: Hashable, value: Any) -> None:
        """Set ``key`` to ``value``; the entry becomes the newest (its age restarts)."""
        now = self._expire()
        self._entries.pop(key, None)
        self._insert(key, value, now)

    def get(self, key: Hashable, default: Any = None) -> Any:
        """The value of a fresh ``key``, else ``default``."""
        entry = self._fresh(key, self._expire())
        return default if entry is None else entry[1]

    def pop(self, key: Hashable, default: Any = _MISSING) -> Any:
        """Remove ``key`` and return its value; ``default`` (or KeyError) if absent or expired."""
        entry = self._fresh(key, self._expire())
        if entry is None:
            if default is _MISSING:
                raise KeyError(key)
            return default
        del self._entries[key]
        return entry[1]

    def discard(self, key: Hashable) -> None:
        """Remove ``key`` if present."""
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __contains__(self, key: Any) -> bool:
        return self._fresh(key, self._expire()) is not None

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    def __iter__(self) -> Iterator[Hashable]:
        """Fresh keys, oldest first (a snapshot: safe to mutate the cache while iterating)."""
        self._expire()
        return iter(list(self._entries))


# -- replay window ------------------------------------------------------------------------------------


class StaleTimestamp(wire.BadTimestamp):
    """User content whose ``ts`` is too far from the server's clock (a replay or a broken clock)."""

    code = "BAD_TS"


def _seconds_text(ms: int) -> str:
    return f"{ms / 1000:g} s" if ms < 600_000 else f"{ms / 60_000:.1f} min"


def check_ts_window(ts_ms: int, now_ms: int, window_ms: int = 300_000) -> None:
    """Raise :class:`StaleTimestamp` unless ``now_ms - window_ms <= ts_ms <= now_ms + window_ms``.

    Both edges are accepted. The detail says how far off the timestamp is and in
    which direction, so an honest client with a bad clock can tell.
    """
    if isinstance(ts_ms, bool) or not isinstance(ts_ms, int):
        raise wire.BadTimestamp("ts must be integer milliseconds", "ts")
    offset = ts_ms - now_ms
    if abs(offset) <= window_ms:
        return
    direction = "ahead of" if offset > 0 else "behind"
    off, window = _seconds_text(abs(offset)), _seconds_text(window_ms)
    raise StaleTimestamp(f"ts is {off} {direction} server time; the window is ±{window}", "ts")


# -- every limit in one place -------------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """Every resource limit of a server, with its default. Rates are per second.

    docs/SECURITY.md lists these; services take a ``Limits`` instead of loose numbers.
    The payload-field bounds are checked where each field is parsed (``wire``,
    ``content``, the services); test_limits checks that those constants agree with
    the values here.
    """

    # -- frames and payload fields
    max_frame_bytes: int = wire.MAX_FRAME_BYTES  # largest WebSocket message accepted (bytes)
    max_json_depth: int = wire.MAX_DEPTH  # deepest JSON nesting inside a frame
    max_ciphertext_chars: int = 1024  # one RSA-4096 OAEP block in b64u (683 chars) with slack
    max_pubkey_chars: int = 16384  # a public key as text (b64u DER or PEM)
    max_sig_chars: int = 2048  # a b64u RSA-4096 signature is 683 chars
    max_meta_bytes: int = 4096  # a user's meta object, as canonical JSON
    max_client_name_chars: int = 128  # USER_HELLO "client" string
    max_file_name_chars: int = 1024  # FILE_START name
    max_file_id_chars: int = 128  # FILE_* file_id
    max_error_detail_chars: int = 512  # detail of an ERROR we send (longer ones are cut)

    # -- per-connection limits (user links, before and after login; the hub)
    conn_rate: float = 50.0  # frames per second, sustained, per connection
    conn_burst: float = 200.0  # frames a connection may send at once (a 64-part DM, 100 key lookups)
    conn_strike_limit: int = 20  # rate-limited frames within conn_strike_window that close the link
    conn_strike_window: float = 10.0  # seconds a rate-limit strike counts
    max_fanout: int = 1024  # MSG_PUBLIC_CHANNEL frames of one message (same ts) charged as one frame
    identify_timeout: float = 30.0  # seconds a new connection has to send its identifying first frame
    auth_timeout: float = 300.0  # seconds a connection may stay unauthenticated (login in progress)
    error_rate: float = 20.0  # ERROR frames per second signed for one user connection; more are dropped
    error_burst: float = 100.0  # ERROR frames one user connection may be sent at once
    max_connections: int = 10_000  # open WebSocket connections (users + servers + pending)
    max_pending_connections: int = 1000  # connections not yet authenticated (hello/login in progress)

    # -- per-user limits
    user_rate: float = 20.0  # frames per second, sustained, per logged-in user (all their links)
    user_burst: float = 200.0  # frames a user may send at once
    max_local_users: int = 10_000  # users connected here at once (max_connections bounds it; sizes tables)

    # -- login (PROTOCOL-EXTENSIONS.md §4, §5)
    login_free_failures: int = 3  # consecutive wrong proofs before the lockout starts
    login_lockout_max: float = 900.0  # seconds; the f-th failure locks for min(2**(f-4), this)
    login_attempt_ttl: float = 60.0  # seconds an SRP attempt (USER_LOGIN_START state) stays valid
    hello_nonce_ttl: float = 60.0  # seconds a USER_HELLO nonce stays valid
    max_auth_attempts: int = 32  # registrations, login starts, nonce requests and hellos per connection
    max_login_failure_entries: int = 100_000  # user ids with a failure counter kept in memory

    # -- per-peer (server link) limits
    peer_rate: float = 2000.0  # frames per second, sustained, per server link (faster: read slower)
    peer_burst: float = 4000.0  # frames a peer may send at once
    max_peers: int = 1000  # servers remembered (pinned keys and addresses)
    max_remote_users: int = 100_000  # presence entries learnt from other servers
    max_gossip_user_pins: int = 200_000  # user keys pinned from other servers' adverts (docs/SECURITY.md)
    delivery_timeout: float = 10.0  # seconds a DM sent to another server may wait for its delivery ACK
    max_pending_deliveries: int = 100_000  # DMs sent to other servers awaiting their ACK
    max_unknown_type_replies: int = 64  # distinct unknown frame types answered per server link
    forged_limit: int = 10  # frames with bad signatures within forged_window that cut a server link
    forged_window: float = 60.0  # seconds a bad signature counts against its link

    # -- replay protection
    ts_window: float = 300.0  # seconds user content ts may differ from our clock (±)
    seen_ids_max: int = 100_000  # entries in each seen_ids cache (user content; server frames)
    seen_ids_ttl: float = 600.0  # seconds an entry stays in seen_ids (>= 2 * ts_window)

    # -- queues and buffers
    max_send_queue: int = 20_000  # frames waiting to be written to one link before it is closed
    max_send_queue_bytes: int = 32 * 1024 * 1024  # bytes buffered for one link before it is closed
    max_backlog: int = 128  # frames of one user link waiting behind a slow one (more: RATE_LIMITED)
    max_cached_adverts: int = 10_000  # USER_ADVERTISE frames replayed to a user after its hello

    # -- files
    max_file_bytes: int = 64 * 1024 * 1024  # FILE_START size
    max_transfers_per_user: int = 4  # concurrent FILE_START..FILE_END per sending user
    transfer_idle_timeout: float = 120.0  # seconds without a chunk before a transfer is dropped

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"limit {field.name} must be a positive number, not {value!r}")
        if self.conn_burst < 1 or self.user_burst < 1 or self.peer_burst < 1:
            raise ValueError("bursts must allow at least one frame")
        if self.seen_ids_ttl < 2 * self.ts_window:
            raise ValueError(
                "seen_ids_ttl must be >= 2 * ts_window, or a replayed frame can outlive its seen_ids entry"
            )

    @property
    def ts_window_ms(self) -> int:
        """:attr:`ts_window` in milliseconds, for :func:`check_ts_window`."""
        return round(self.ts_window * 1000)


#: The defaults, for code that has no configuration of its own.
DEFAULT_LIMITS = Limits()
