"""A bounded pool of threads for the RSA private-key work that must stay off the reactor.

RSA-4096 signing and decryption cost ~1.5-5 ms each; done on the reactor thread they
would stall every connection.  The pool is sized to the machine's cores because the
work is CPU-bound (``cryptography`` releases the GIL while OpenSSL computes).

It is deliberately smaller than Twisted's ``ThreadPool``: a job is one ``put`` on a C
``SimpleQueue`` that wakes one idle thread, and its result comes back with one
``callFromThread``.  A server hands every signature it makes to this pool, so the
hand-off is on the path of every message: Twisted's pool (team, coordinator, worker
objects, a ``Queue`` with its Python condition variable, a context per call) costs
~75 us of reactor time per job on a cold CPU against ~22 us here, and ~45 us more per
round trip (docs/BENCHMARKS.md, third round).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure
from zope.interface import implementer

from socp_tw.interfaces import IWorkers

T = TypeVar("T")

_STOP = object()


@implementer(IWorkers)
class ThreadPoolWorkers(Service):
    """Run callables on ``size`` private threads; results come back on the reactor thread.

    Calls made while the service is not running (before it starts, after it stopped: a
    server shutting down) wait in the queue and run when it next starts, as with
    Twisted's ``ThreadPool``; a stopping server's late signatures are simply never made.
    """

    name = "workers"

    def __init__(self, size: int | None = None, reactor: IReactorFromThreads | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._reactor = reactor
        self.size = max(1, size or os.cpu_count() or 1)
        self._jobs: SimpleQueue = SimpleQueue()
        self._threads: list[threading.Thread] = []

    def run(self, f: Callable[..., T], *args: Any, **kwargs: Any) -> Deferred[T]:
        """Call ``f(*args, **kwargs)`` on the pool; the Deferred fires on the reactor thread."""
        result: Deferred[T] = Deferred()
        self._jobs.put((result, f, args, kwargs))
        return result

    def _work(self) -> None:
        """One pool thread: run jobs until the stop marker."""
        get = self._jobs.get
        call_from_thread = self._reactor.callFromThread
        while True:
            job = get()
            if job is _STOP:
                return
            result, f, args, kwargs = job
            try:
                value = f(*args, **kwargs)
            except BaseException:
                call_from_thread(result.errback, Failure())
            else:
                call_from_thread(result.callback, value)
            job = result = f = args = kwargs = value = None  # hold nothing while idle

    def startService(self) -> None:
        super().startService()
        for index in range(self.size):
            thread = threading.Thread(target=self._work, name=f"socp-crypto-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stopService(self) -> None:
        """Let the threads finish what is queued, then wait for them."""
        super().stopService()
        for _ in self._threads:
            self._jobs.put(_STOP)
        for thread in self._threads:
            thread.join()
        self._threads = []
