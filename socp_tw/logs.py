"""Logging for socp-tw: one filtered observer for our namespaces, and a JSON observer.

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
    jsonFileLogObserver,
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
    """Observer factory for ``twistd --logger=socp_tw.logs.json_stdout``: one JSON event per line."""
    return jsonFileLogObserver(stream if stream is not None else sys.stdout)
