"""The per-user login failure limiter (PROTOCOL-EXTENSIONS §4.1).

Its table is a :class:`socp_tw.limits.BoundedTTLCache`: bounded in size, least
recently failed forgotten first, an entry dropped once its user has been quiet for
``forget_after`` seconds.  (Not :class:`socp_tw.limits.Strikes`: this counts
*consecutive* failures until a success or a quiet day, where a strike expires on its
own ``window`` after it happened.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from socp_tw.limits import BoundedTTLCache, Clock

__all__ = ["LoginLimiter"]


@dataclass
class _Failures:
    count: int
    locked_until: float


class LoginLimiter:
    """Consecutive failed logins per user id (ids compare case-insensitively).

    The first 3 failures are free; the f-th (f >= 4) locks the id for
    ``min(2**(f-4), 900)`` s.  A success resets the count; so do ``forget_after``
    seconds (24 h) without a failure.  The table holds at most ``max_ids`` ids
    (least recently failed forgotten first), so a flood of failures for many ids
    cannot exhaust memory.
    """

    FREE_FAILURES = 3
    MAX_LOCK = 900

    def __init__(self, clock: Clock, max_ids: int = 100_000, forget_after: float = 86400.0) -> None:
        self._clock = clock
        # The cache forgets at age >= max_age; the limiter's rule is "quiet for more than
        # forget_after": the next float up makes the two the same comparison.
        self._entries = BoundedTTLCache(max_ids, math.nextafter(forget_after, math.inf), clock)

    def __len__(self) -> int:
        """Ids with failures still remembered."""
        return len(self._entries)

    def retry_after(self, user_id: str) -> int:
        """Whole seconds (rounded up) until ``user_id`` may try again; 0 when not locked."""
        entry = self._entries.get(user_id.lower())
        now = self._clock.seconds()
        if entry is None or entry.locked_until <= now:
            return 0
        return math.ceil(entry.locked_until - now)

    def failure(self, user_id: str) -> tuple[int, int]:
        """Record a wrong proof; return (consecutive failures, seconds now locked)."""
        key = user_id.lower()
        now = self._clock.seconds()
        entry = self._entries.get(key) or _Failures(0, now)
        entry.count += 1
        lock = 0
        if entry.count > self.FREE_FAILURES:
            lock = min(2 ** min(entry.count - self.FREE_FAILURES - 1, 10), self.MAX_LOCK)
            entry.locked_until = now + lock
        self._entries.put(key, entry)  # the newest, its quiet time restarted
        return entry.count, lock

    def success(self, user_id: str) -> None:
        """A correct proof: forget the failures."""
        self._entries.discard(user_id.lower())
