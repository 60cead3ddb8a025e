"""Autobahn's debug text, built only when a debug event is actually written.

``autobahn.websocket.protocol`` and ``autobahn.twisted.websocket`` compute the arguments of
their ``log.debug`` calls eagerly, even when debug logging is off: ``pprint.pformat`` of 36
configuration attributes on every new connection (~1.2 ms, a third of the server's CPU in a
connect storm), and ``hltype``/``hlval`` (a qualified name, styled) on every read, every
handshake and every close (~30 us each).  :func:`install` replaces those three names in the
two modules with :class:`LazyText` factories: the call is kept and made only if the event is
rendered (docs/BENCHMARKS.md, "Connect storm").  Every use there is a log argument; the one
other, ``Timings.__str__``, runs only with ``trackTimings`` on, which nothing here enables.
"""

from __future__ import annotations

import pprint
from collections.abc import Callable
from typing import Any

import autobahn.twisted.websocket as _autobahn_twisted
import autobahn.util as _autobahn_util
import autobahn.websocket.protocol as _autobahn_protocol

_MODULES = (_autobahn_protocol, _autobahn_twisted)
_EAGER: dict[str, Callable[..., str]] = {
    "pformat": pprint.pformat,
    "hltype": _autobahn_util.hltype,
    "hlval": _autobahn_util.hlval,
}


class LazyText:
    """``function(*args)``, computed when the text is asked for."""

    __slots__ = ("_args", "_function")

    def __init__(self, function: Callable[..., str], *args: Any) -> None:
        self._function = function
        self._args = args

    def __str__(self) -> str:
        return str(self._function(*self._args))

    __repr__ = __str__

    def __format__(self, spec: str) -> str:  # "{func}" in a log format
        return format(str(self), spec)


def _lazy(function: Callable[..., str]) -> Callable[..., LazyText]:
    def deferred(*args: Any) -> LazyText:
        return LazyText(function, *args)

    deferred.__name__ = function.__name__
    return deferred


def install() -> None:
    """Make Autobahn's eager debug formatting lazy (idempotent)."""
    for module in _MODULES:
        for name, function in _EAGER.items():
            if hasattr(module, name):
                setattr(module, name, _lazy(function))
