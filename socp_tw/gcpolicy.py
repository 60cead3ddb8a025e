"""Keep CPython's full garbage collections short while the server holds many users.

Why: a full (generation 2) collection walks every tracked object.  With 10,000 connected
users that is ~1.5 million objects and a 100-210 ms pause of the reactor thread, several
times during a connect storm (the heap grows by a quarter between them): other users' DMs
wait behind it (docs/BENCHMARKS.md, "Connect storm").

How: :class:`CollectorPolicy` moves what survived each full collection into the permanent
generation (``gc.freeze()``): the next full collection walks only what was made since, a
quarter of the heap or less.  Frozen objects are still freed when their last reference
goes (reference counting); only garbage *cycles* among them wait, until a thaw
(``gc.unfreeze()`` then one ``gc.collect()``, logged with its pause).  A thaw comes
``thaw_interval`` seconds after the first freeze at the latest, and within one
``check_interval`` once the local users dropped below three quarters of the most seen at
freezes (a mass disconnect: their connections' memory comes back then).  So: one long
pause per ``thaw_interval`` (default 10 min) or per mass departure, short ones otherwise.
``thaw_interval`` 0 turns the policy off (plain CPython).
"""

from __future__ import annotations

import gc as _gc
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.task import LoopingCall

from socp_tw.logs import get_logger
from socp_tw.timers import repeating, stop_repeating

__all__ = ["DEFAULT_THAW_INTERVAL", "CollectorPolicy"]

DEFAULT_THAW_INTERVAL = 600.0  # seconds objects stay frozen at most
CHECK_INTERVAL = 5.0  # seconds between looks at the number of local users
DEPARTED_SHARE = 0.25  # this share of the users at the last freeze gone: thaw

_log = get_logger("socp_tw.memory")


class CollectorPolicy(Service):
    """Freeze the survivors of every full collection; thaw on a mass departure or when due.

    ``local_users`` says how many users are connected here (``IPresence.counts()[0]``);
    ``gc`` and ``clock`` (which must offer ``callFromThread``: a collection may run on any
    thread) are injectable for tests.  ``counters``: ``freezes``, ``thaws``.
    """

    name = "gc-policy"

    def __init__(
        self,
        local_users: Callable[[], int],
        clock: Any = None,
        thaw_interval: float = DEFAULT_THAW_INTERVAL,
        check_interval: float = CHECK_INTERVAL,
        gc: Any = _gc,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self._local_users = local_users
        self._clock = clock
        self.thaw_interval = thaw_interval
        self.check_interval = check_interval
        self._gc = gc
        self._first_frozen: float | None = None  # clock time of the first freeze since a thaw
        self._users_at_freeze = 0
        self._freeze_asked = False
        self._thawing = False
        self._loop: LoopingCall | None = None
        self.counters: Counter[str] = Counter()

    def startService(self) -> None:
        super().startService()
        if self.thaw_interval > 0:
            self._gc.callbacks.append(self._collected)
            self._loop = repeating(self._clock, self.check_interval, self.check)

    def stopService(self) -> None:
        super().stopService()
        stop_repeating(self._loop)
        self._loop = None
        if self._collected in self._gc.callbacks:
            self._gc.callbacks.remove(self._collected)
        if self._first_frozen is not None:
            self._gc.unfreeze()
            self._first_frozen = None

    def _collected(self, phase: str, info: dict) -> None:
        """``gc.callbacks``: after a full collection (on whatever thread), freeze in the reactor."""
        if phase == "stop" and info.get("generation") == 2 and not self._freeze_asked and not self._thawing:
            self._freeze_asked = True
            self._clock.callFromThread(self._freeze)

    def _freeze(self) -> None:
        self._freeze_asked = False
        if not self.running:
            return
        self._gc.freeze()
        self.counters["freezes"] += 1
        # The most users seen at a freeze since the thaw: a freeze after a departure keeps it.
        self._users_at_freeze = max(self._users_at_freeze, self._local_users())
        if self._first_frozen is None:
            self._first_frozen = self._clock.seconds()

    def check(self) -> bool:
        """Thaw if it is due (see the module docstring); True if it did."""
        if self._first_frozen is None:
            return False
        users = self._local_users()
        departed = users < self._users_at_freeze * (1 - DEPARTED_SHARE)
        due = self._clock.seconds() - self._first_frozen >= self.thaw_interval
        if not (departed or due):
            return False
        frozen = self._gc.get_freeze_count()
        started = time.perf_counter()
        self._thawing = True  # the collection below is not followed by a freeze of its own
        try:
            self._gc.unfreeze()
            found = self._gc.collect()
        finally:
            self._thawing = False
        self._first_frozen = None
        self.counters["thaws"] += 1
        users_before, self._users_at_freeze = self._users_at_freeze, 0
        _log.info(
            "Garbage collector: thawed {frozen} objects ({why}) and collected {found} in {ms} ms",
            frozen=frozen,
            why=f"{users_before - users} of {users_before} users left" if departed else "due",
            found=found,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return True
