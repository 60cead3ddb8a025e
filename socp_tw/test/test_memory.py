"""Memory per idle connection (issue 8): the trimmer after bursts, and what a link keeps.

* :class:`MemoryTrimmer` calls ``malloc_trim(0)`` only after the RSS grew by its
  threshold, at most once per interval, and is harmless where there is no
  ``malloc_trim`` (or it fails).
* A listening link drops Autobahn's kept HTTP handshake data once it is open, and
  works as before.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from socp_tw import memory
from socp_tw.interfaces import ISigner
from socp_tw.memory import MemoryTrimmer, load_malloc_trim, rss_bytes
from socp_tw.protocols.websocket import _HANDSHAKE_DATA
from socp_tw.services.hub import Hub
from socp_tw.test.servers import open_server_link
from socp_tw.testing import NeverSigner


class _FakeProcess:
    """An RSS that the test sets, and a malloc_trim that brings it down to ``live``."""

    def __init__(self, rss: int, live: int) -> None:
        self.rss = rss
        self.live = live
        self.trims: list[int] = []

    def read_rss(self) -> int:
        return self.rss

    def trim(self, pad: int) -> int:
        self.trims.append(pad)
        self.rss = self.live
        return 1


MIB = 2**20


class MemoryTrimmerTests(SynchronousTestCase):
    def trimmer(self, process: _FakeProcess, **options) -> tuple[MemoryTrimmer, Clock]:
        clock = Clock()
        trimmer = MemoryTrimmer(clock=clock, trim=process.trim, rss=process.read_rss, **options)
        trimmer.startService()
        self.addCleanup(trimmer.stopService)
        return trimmer, clock

    def test_trims_after_growth_at_most_once_per_interval(self) -> None:
        process = _FakeProcess(rss=50 * MIB, live=50 * MIB)
        trimmer, clock = self.trimmer(process, interval=5.0, threshold=4 * MIB)
        process.rss = 53 * MIB  # below the threshold: left alone
        clock.advance(5)
        self.assertEqual(process.trims, [])
        process.rss, process.live = 120 * MIB, 60 * MIB  # a burst: 60 MiB kept after it
        clock.advance(4.9)
        self.assertEqual(process.trims, [])  # not before the interval is over
        clock.advance(0.1)
        self.assertEqual(process.trims, [0])
        self.assertEqual(process.rss, 60 * MIB)
        self.assertEqual(trimmer.counters["released_bytes"], 60 * MIB)
        clock.advance(5)  # no more growth: once more, for what was freed since
        self.assertEqual(process.trims, [0, 0])
        for _ in range(3):  # idle afterwards: no more trims
            clock.advance(5)
        self.assertEqual(process.trims, [0, 0])
        self.assertEqual(trimmer.counters["checks"], 6)
        process.rss, process.live = 70 * MIB, 64 * MIB  # growth counted from the last trim
        clock.advance(5)
        self.assertEqual(process.trims, [0, 0, 0])

    def test_what_a_burst_frees_after_the_last_trim_is_trimmed_when_it_ends(self) -> None:
        process = _FakeProcess(rss=50 * MIB, live=50 * MIB)
        trimmer, clock = self.trimmer(process, interval=5.0, threshold=4 * MIB)
        process.rss, process.live = 120 * MIB, 110 * MIB  # mid-burst: its transients still live
        clock.advance(5)
        self.assertEqual(process.rss, 110 * MIB)
        process.live = 60 * MIB  # the burst ends and frees them: the RSS does not grow
        clock.advance(5)
        self.assertEqual(process.trims, [0, 0])
        self.assertEqual(process.rss, 60 * MIB)
        clock.advance(5)
        self.assertEqual(process.trims, [0, 0])
        self.assertEqual(trimmer.counters["released_bytes"], 60 * MIB)

    def test_rss_that_shrank_by_itself_is_the_new_baseline(self) -> None:
        process = _FakeProcess(rss=80 * MIB, live=45 * MIB)
        _, clock = self.trimmer(process, interval=1.0, threshold=4 * MIB)
        process.rss = 40 * MIB
        clock.advance(1)
        self.assertEqual(process.trims, [])
        process.rss = 45 * MIB  # 5 MiB above the new baseline, 35 MiB below the first one
        clock.advance(1)
        self.assertEqual(process.trims, [0])

    def test_harmless_without_malloc_trim(self) -> None:
        clock = Clock()
        trimmer = MemoryTrimmer(clock=clock, trim=None, rss=lambda: 100 * MIB)
        self.assertFalse(trimmer.available)
        trimmer.startService()
        self.assertEqual(clock.getDelayedCalls(), [])  # no timer at all
        self.assertFalse(trimmer.check())
        trimmer.stopService()

    def test_harmless_without_an_rss(self) -> None:
        process = _FakeProcess(rss=0, live=0)
        trimmer = MemoryTrimmer(clock=Clock(), trim=process.trim, rss=lambda: None)
        self.assertFalse(trimmer.available)
        trimmer.startService()
        self.assertFalse(trimmer.check())
        trimmer.stopService()
        self.assertEqual(process.trims, [])

    def test_a_failing_trim_turns_trimming_off(self) -> None:
        calls = []

        def broken(pad: int) -> int:
            calls.append(pad)
            raise OSError("no")

        rss = [10 * MIB]
        clock = Clock()
        trimmer = MemoryTrimmer(clock=clock, interval=1.0, threshold=MIB, trim=broken, rss=lambda: rss[0])
        trimmer.startService()
        self.addCleanup(trimmer.stopService)
        rss[0] = 50 * MIB
        clock.advance(1)
        clock.advance(1)
        self.assertEqual(calls, [0])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)

    def test_stopping_stops_the_checks(self) -> None:
        process = _FakeProcess(rss=10 * MIB, live=10 * MIB)
        trimmer, clock = self.trimmer(process, interval=1.0)
        trimmer.stopService()
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_bad_settings_refused(self) -> None:
        for options in ({"interval": 0}, {"interval": -1}, {"threshold": -1}):
            with self.assertRaises(ValueError):
                MemoryTrimmer(clock=Clock(), trim=None, **options)

    def test_the_real_malloc_trim_is_harmless(self) -> None:
        trim = load_malloc_trim()
        if trim is None:
            raise self.skipTest("no glibc malloc_trim here")
        self.assertIn(trim(0), (0, 1))
        self.assertGreater(rss_bytes(), 0)

    def test_no_libc_malloc_trim_means_none(self) -> None:
        class NoTrim:
            def __getattr__(self, name):
                raise AttributeError(name)

        self.patch(memory.ctypes, "CDLL", lambda name: NoTrim())
        self.assertIsNone(load_malloc_trim())
        self.patch(memory.ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError("no libc")))
        self.assertIsNone(load_malloc_trim())


@implementer(ISigner)
class HandshakeDataTests(SynchronousTestCase):
    def test_open_link_keeps_no_handshake_data(self) -> None:
        hub = Hub(NeverSigner(), clock=Clock())
        protocol, transport = open_server_link(self, hub)
        self.assertIn("http_headers", _HANDSHAKE_DATA)
        for name in _HANDSHAKE_DATA:
            self.assertIsNone(getattr(protocol, name, None), name)
        self.assertIn("54321", protocol.peer)  # what onConnect took from the request stays
        transport.clear()
        protocol.send(b'{"n":1}')  # the open link still works both ways
        self.assertEqual(transport.value(), b"\x81\x07" + b'{"n":1}')
        received = []
        self.patch(hub, "frame_rejected", lambda link, error: received.append(error.code))
        protocol.dataReceived(b"\x81\x82\x00\x00\x00\x00{}")  # a masked text frame (zero mask): "{}"
        self.assertEqual(len(received), 1)
