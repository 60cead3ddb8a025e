"""Autobahn's debug text, built only when a debug event is actually written.

``autobahn.websocket.protocol`` formats its configuration with ``pprint.pformat`` on every
new connection (``_connectionMade``) and its transport details on every client handshake,
as arguments of ``log.debug`` -- even when debug logging is off.  At a connect storm that
is ~1.2 ms a connection, a third of the server's CPU (docs/BENCHMARKS.md "Connect storm").
:func:`install` swaps the module's ``pformat`` for :class:`LazyPformat`, which keeps the
object and formats it only if the event is rendered.  The one other caller,
``Timings.__str__``, runs only with ``trackTimings`` on, which nothing here enables.
"""

from __future__ import annotations

import pprint

import autobahn.websocket.protocol as _autobahn_protocol


class LazyPformat:
    """``pprint.pformat(obj)``, computed when the text is asked for."""

    __slots__ = ("_obj",)

    def __init__(self, obj: object, *args: object, **kwargs: object) -> None:
        self._obj = obj

    def __str__(self) -> str:
        return pprint.pformat(self._obj)

    __repr__ = __str__

    def __format__(self, spec: str) -> str:  # "{attrs}" in a log format
        return format(str(self), spec)


def install() -> None:
    """Make Autobahn's eager debug formatting lazy (idempotent)."""
    _autobahn_protocol.pformat = LazyPformat
