"""A bounded thread pool for the RSA private-key work that must stay off the reactor.

RSA-4096 signing and decryption cost ~5 ms each; done on the reactor thread they
would stall every connection.  The pool is sized to the machine's cores because the
work is CPU-bound (``cryptography`` releases the GIL while OpenSSL computes).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from socp_tw.interfaces import IWorkers

T = TypeVar("T")


@implementer(IWorkers)
class ThreadPoolWorkers(Service):
    """Run callables on a private, bounded :class:`ThreadPool`."""

    name = "workers"

    def __init__(self, size: int | None = None, reactor: IReactorFromThreads | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._reactor = reactor
        self.size = max(1, size or os.cpu_count() or 1)
        self._pool = ThreadPool(minthreads=0, maxthreads=self.size, name="socp-crypto")

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """Call ``f(*args, **kwargs)`` on the pool; the Deferred fires on the reactor thread."""
        return deferToThreadPool(self._reactor, self._pool, f, *args, **kwargs)

    def startService(self) -> None:
        super().startService()
        self._pool.start()

    def stopService(self) -> None:
        super().stopService()
        self._pool.stop()
