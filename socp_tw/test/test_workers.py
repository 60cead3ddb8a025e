"""The private thread pool that signs and decrypts off the reactor (``socp_tw.workers``)."""

from __future__ import annotations

import threading

from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from socp_tw.interfaces import IWorkers
from socp_tw.workers import ThreadPoolWorkers


class ThreadPoolWorkersTests(TestCase):
    def started(self, size: int = 2) -> ThreadPoolWorkers:
        workers = ThreadPoolWorkers(size=size, reactor=reactor)
        workers.startService()
        self.addCleanup(lambda: workers.running and workers.stopService())
        return workers

    def test_provides_iworkers_sized_to_cores_by_default(self) -> None:
        self.assertTrue(IWorkers.providedBy(ThreadPoolWorkers(reactor=reactor)))
        self.assertGreaterEqual(ThreadPoolWorkers(reactor=reactor).size, 1)
        self.assertEqual(
            ThreadPoolWorkers(size=0, reactor=reactor).size, ThreadPoolWorkers(reactor=reactor).size
        )

    async def test_runs_off_the_reactor_thread_and_answers_on_it(self) -> None:
        workers = self.started()
        seen = {}

        def job(a: int, b: int = 0) -> int:
            seen["thread"] = threading.current_thread()
            return a + b

        result = workers.run(job, 2, b=3)
        result.addCallback(lambda value: seen.setdefault("callback", threading.current_thread()) and value)
        self.assertEqual(await result, 5)
        self.assertIsNot(seen["thread"], threading.main_thread())
        self.assertTrue(seen["thread"].name.startswith("socp-crypto-"))
        self.assertIs(seen["callback"], threading.main_thread())

    async def test_an_exception_fails_the_deferred_with_it(self) -> None:
        workers = self.started()

        def broken() -> None:
            raise ValueError("bad key")

        with self.assertRaises(ValueError):
            await workers.run(broken)
        self.assertEqual(await workers.run(lambda: "still working"), "still working")

    async def test_size_threads_run_at_once(self) -> None:
        workers = self.started(size=2)
        both = threading.Barrier(2, timeout=10)
        # Each job waits for the other: they only finish if two threads run them together.
        results = await gatherResults([workers.run(both.wait), workers.run(both.wait)])
        self.assertEqual(sorted(results), [0, 1])

    async def test_calls_before_start_wait_and_run_once_started(self) -> None:
        workers = ThreadPoolWorkers(size=1, reactor=reactor)
        early = workers.run(lambda: "queued")
        self.assertFalse(early.called)
        workers.startService()
        self.addCleanup(workers.stopService)
        self.assertEqual(await early, "queued")

    async def test_stop_finishes_queued_calls_and_later_calls_wait_for_a_restart(self) -> None:
        workers = self.started(size=1)
        gate = threading.Event()
        first = workers.run(gate.wait, 10)
        second = workers.run(lambda: "second")
        gate.set()
        workers.stopService()  # waits for both: they were queued before the stop marker
        self.assertEqual(workers._threads, [])
        self.assertEqual(await gatherResults([first, second]), [True, "second"])
        late = workers.run(lambda: "after a restart")
        await deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(late.called)  # no thread runs it while stopped
        workers.startService()
        self.assertEqual(await late, "after a restart")
