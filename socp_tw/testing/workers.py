"""A synchronous :class:`IWorkers`: work runs at once on the calling thread."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from socp_tw.interfaces import IWorkers

__all__ = ["SynchronousWorkers"]


@implementer(IWorkers)
class SynchronousWorkers:
    """Run work at once on the calling thread: deterministic tests, no threads."""

    size = 1

    def __init__(self) -> None:
        self.calls = 0

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        self.calls += 1
        try:
            return succeed(f(*args, **kwargs))
        except Exception:
            return fail()
