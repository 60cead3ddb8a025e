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

The package, one concern per module (every name is re-exported here):
:mod:`~socp_tw.limits.rates` (buckets, limiters, strikes),
:mod:`~socp_tw.limits.caches`, :mod:`~socp_tw.limits.window`,
:mod:`~socp_tw.limits.defaults` (:class:`Limits`).
"""

from socp_tw.limits.caches import BoundedTTLCache
from socp_tw.limits.defaults import DEFAULT_LIMITS, Limits
from socp_tw.limits.rates import Clock, RateLimiter, Strikes, TokenBucket
from socp_tw.limits.window import StaleTimestamp, check_ts_window

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
