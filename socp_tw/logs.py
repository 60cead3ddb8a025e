"""Logging for socp-tw: one filtered observer for our namespaces, and a JSON observer.

The lines twistd writes (``--log-format text|json``) are made by :mod:`socp_tw.ops.logformat`.

Every module gets its logger from :func:`get_logger`, so ``--log-level`` can raise or
lower the level of socp-tw's own events without touching what twistd or other
libraries log.  Log events never carry secrets: no private keys, passwords or
plaintext, only ids, codes, sizes and counts.
"""

from __future__ import annotations

import sys
from typing import IO

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
)

NAMESPACE = "socp_tw"

_levels = LogLevelFilterPredicate(defaultLogLevel=LogLevel.debug)
_levels.setLogLevelForNamespace(NAMESPACE, LogLevel.info)
_observer = FilteringLogObserver(globalLogPublisher, [_levels])

LEVEL_NAMES = ("debug", "info", "warn", "error", "critical")


def get_logger(namespace: str) -> Logger:
    """A logger for ``namespace`` whose events pass the ``--log-level`` filter."""
    return Logger(namespace=namespace, observer=_observer)


def set_log_level(name: str) -> None:
    """Set the minimum level of socp-tw events (one of :data:`LEVEL_NAMES`)."""
    _levels.setLogLevelForNamespace(NAMESPACE, LogLevel.levelWithName(name))


def json_stdout(stream: IO[str] | None = None) -> ILogObserver:
    """Observer factory for ``twistd --logger=socp_tw.logs.json_stdout``: one JSON event per line.

    The same NDJSON lines as ``--log-format json`` (:mod:`socp_tw.ops.logformat`), kept for
    units that name it; Twisted's own ``jsonFileLogObserver`` starts each line with ``\\x1e``.
    """
    from socp_tw.ops.logformat import file_observer  # not at import: logs is imported everywhere

    return file_observer(stream if stream is not None else sys.stdout, "json")


class Aggregated:
    """Say when an often-repeated event should be logged: at most once per ``period`` s per key.

    ``hit(key)`` counts one event; it returns how many events of ``key`` that line stands for
    (this one and those held back since the last line), or None to stay quiet.  At most
    ``max_keys`` keys are tracked; the oldest is forgotten first.
    """

    def __init__(self, clock, period: float = 60.0, max_keys: int = 1000) -> None:
        self._clock = clock
        self.period = period
        self.max_keys = max_keys
        self._last: dict = {}  # key -> [time of the last line, events held back since]

    def hit(self, key) -> int | None:
        now = self._clock.seconds()
        entry = self._last.get(key)
        if entry is not None and now - entry[0] < self.period:
            entry[1] += 1
            return None
        held = entry[1] if entry is not None else 0
        self._last.pop(key, None)
        while len(self._last) >= self.max_keys:
            self._last.pop(next(iter(self._last)))
        self._last[key] = [now, 0]
        return held + 1
