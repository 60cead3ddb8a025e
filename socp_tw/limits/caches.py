"""Bounded caches: :class:`BoundedTTLCache`, the ``seen_ids`` cache and every other cache or pending table."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from typing import Any

from socp_tw.limits.rates import Clock

__all__ = ["BoundedTTLCache"]

_MISSING: Any = object()


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
