"""The status line (services/status.py): periodic and on every mesh or presence change."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from socp_tw.services.presence import Presence
from socp_tw.services.status import StatusReporter
from socp_tw.test.services.mesh.support import (
    ALICE,
    HERE,
    S1,
    S2,
    USER,
)
from socp_tw.testing import FakeLink, FakePeerLinks


class StatusTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.clock = Clock()
        self.peers = FakePeerLinks()
        self.presence = Presence(HERE)
        self.status = StatusReporter(self.peers, self.presence, interval=30, clock=self.clock)
        self.status.startService()
        self.addCleanup(self.status.stopService)

    def status_lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events if formatEvent(e).startswith("Status: ")]

    def test_periodic_and_on_change(self) -> None:
        self.clock.advance(30)
        self.assertEqual(
            self.status_lines(),
            [
                "Status: Known servers: (none) | users local=0 total=0 | links=0"
                " | rejected: server frames=0, server links=0"
            ],
        )
        self.presence.user_online_local(USER, "k", {}, FakeLink())
        self.presence.user_online_remote(ALICE, S1, "k", {})
        self.peers.counters["verify_failed"] = 2
        self.peers.counters["refused.INVALID_SIG"] = 3
        self.peers.link(S2)
        self.peers.link(S1)  # two changes in one turn: one line
        self.clock.advance(0)
        self.assertEqual(
            self.status_lines()[-1],
            f"Status: Known servers: {S1} {S2} | users local=1 total=2 | links=2"
            " | rejected: server frames=2, server links=3",
        )
        self.assertEqual(len(self.status_lines()), 2)
        self.clock.advance(30)
        self.assertEqual(len(self.status_lines()), 3)

    def test_stopped_reporter_is_silent(self) -> None:
        self.status.stopService()
        self.peers.link(S1)
        self.clock.advance(60)
        self.assertEqual(self.status_lines(), [])
