"""Give memory freed after a burst back to the operating system (glibc ``malloc_trim``).

Why: a burst of arrivals (a reconnect storm, many users logging in at once) makes
transient buffers: presence relays and membership updates to every connected user,
the new users' snapshots and key shares.  When the burst is over they are freed, but
glibc keeps the freed memory in its arenas (interleaved with objects that live on),
so the resident set size stays at the burst's high-water mark.  ``malloc_trim(0)``
hands the free pages inside the arenas back to the kernel (``madvise``): RSS drops to
what the process really holds, and memory that is needed again is simply faulted in.

How: :class:`MemoryTrimmer` looks every ``interval`` seconds at the RSS and calls
``malloc_trim(0)`` when it grew by at least ``threshold`` bytes since the last trim (or
the start), and once more at the first check after such a trim that finds no such
growth: what the burst freed after the last trim (its transients are freed when it
ends, which does not make the RSS grow) goes back too.  So: during and right after a
burst, at most once per interval, never on a frame's path; nothing while idle.
A trim of a few hundred MiB takes a few milliseconds of the reactor thread (logged).
Where there is no glibc ``malloc_trim`` (musl, macOS) or no ``/proc/self/statm``, the
service does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import time
from collections import Counter
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from socp_tw.logs import get_logger
from socp_tw.timers import repeating, stop_repeating

__all__ = ["DEFAULT_INTERVAL", "DEFAULT_THRESHOLD", "MemoryTrimmer", "load_malloc_trim", "rss_bytes"]

DEFAULT_INTERVAL = 5.0  # seconds between RSS checks (a check is one small /proc read)
DEFAULT_THRESHOLD = 4 * 1024 * 1024  # RSS growth (bytes) since the last trim that calls for one

_log = get_logger("socp_tw.memory")
_LIBC = object()  # "use glibc's malloc_trim"


def load_malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim(size_t pad) -> int``, or None where the C library has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def rss_bytes() -> int | None:
    """This process's resident set size in bytes (``/proc/self/statm``), or None if unknown."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class MemoryTrimmer(Service):
    """``malloc_trim(0)`` while and after the RSS grows by ``threshold`` bytes, at most once per ``interval``.

    ``trim`` and ``rss`` are injectable (tests); by default glibc's ``malloc_trim`` and
    :func:`rss_bytes`.  ``counters``: ``checks``, ``trims``, ``released_bytes``.
    """

    name = "memory-trim"

    def __init__(
        self,
        clock=None,
        interval: float = DEFAULT_INTERVAL,
        threshold: int = DEFAULT_THRESHOLD,
        trim: Callable[[int], int] | object | None = _LIBC,
        rss: Callable[[], int | None] = rss_bytes,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        if not interval > 0 or threshold < 0:
            raise ValueError("interval must be > 0 and threshold >= 0")
        self._clock = clock
        self.interval = interval
        self.threshold = threshold
        self._trim = load_malloc_trim() if trim is _LIBC else trim
        self._rss = rss
        self._baseline: int | None = None  # RSS right after the last trim (or at start)
        self._after_growth = False  # the last trim was for growth: trim once more when it stops
        self._loop: LoopingCall | None = None
        self.counters: Counter[str] = Counter()

    @property
    def available(self) -> bool:
        """True if this platform can trim (glibc ``malloc_trim`` and a readable RSS)."""
        return self._trim is not None and self._rss() is not None

    def startService(self) -> None:
        super().startService()
        if not self.available:
            _log.info("Memory trimming is off: no glibc malloc_trim or no /proc/self/statm here")
            return
        self._baseline = self._rss()
        self._loop = repeating(self._clock, self.interval, self.check)

    def stopService(self) -> None:
        super().stopService()
        stop_repeating(self._loop)
        self._loop = None

    def check(self) -> bool:
        """Trim if the RSS grew by ``threshold`` since the last trim, or stopped growing; True if trimmed."""
        if self._trim is None:
            return False
        rss = self._rss()
        if rss is None:
            return False
        self.counters["checks"] += 1
        if self._baseline is None:
            self._baseline = rss
            return False
        grew = rss - self._baseline >= self.threshold
        if not grew and not self._after_growth:
            self._baseline = min(self._baseline, rss)  # shrank by itself: measure growth from here
            return False
        self._after_growth = grew
        started = time.perf_counter()
        try:
            self._trim(0)
        except Exception:
            _log.failure("malloc_trim failed; memory trimming is off")
            self._trim = None
            return False
        took = time.perf_counter() - started
        after = self._rss()
        after = rss if after is None else after
        self._baseline = after
        self.counters["trims"] += 1
        self.counters["released_bytes"] += max(0, rss - after)
        _log.info(
            "Returned freed memory to the OS: RSS {before} MiB -> {after} MiB (malloc_trim, {ms} ms)",
            before=rss // 2**20,
            after=after // 2**20,
            ms=round(took * 1000, 1),
        )
        return True
