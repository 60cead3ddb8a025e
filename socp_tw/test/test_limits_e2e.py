"""Connection limits against a real server on 127.0.0.1 (docs/SECURITY.md §4): the identify
timeout, a flood closed after repeated rate limiting, and an honest neighbour unaffected."""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from socp_tw import crypto, wire
from socp_tw.test.keys import test_key
from socp_tw.test.servers import RunningServer, connect_raw, reactor

USER_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


class ConnectionLimitTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.server = RunningServer(self, 0, ["--identify-timeout", "1"])
        self.addCleanup(self.server.stop)

    @inlineCallbacks
    def test_silent_connection_is_closed_identified_one_stays(self):
        silent = yield connect_raw(self, self.server.url)
        talker = yield connect_raw(self, self.server.url)
        pubkey = crypto.encode_public_key(test_key(6))
        talker.send(wire.encode_frame("USER_HELLO", USER_ID, "*", wire.now_ms(), {"pubkey": pubkey}, ""))
        self.assertEqual((yield talker.messages.get())["type"], "ACK")
        code, reason = yield silent.closed
        self.assertEqual((code, reason), (1008, "no identifying frame within 1 s"))
        self.assertFalse(talker.closed.called)
        self.assertEqual(self.server.hub.counters["closed.identify_timeout"], 1)

    @inlineCallbacks
    def test_flood_is_refused_then_closed_neighbour_unaffected(self):
        flooder = yield connect_raw(self, self.server.url)
        neighbour = yield connect_raw(self, self.server.url)
        started = reactor.seconds()
        for _ in range(600):
            flooder.send(b"not json")
        code, reason = yield flooder.closed
        elapsed = reactor.seconds() - started
        self.assertEqual((code, reason), (1008, "rate limit exceeded repeatedly"))
        received = []
        while flooder.messages.pending:
            received.append((yield flooder.messages.get())["payload"]["code"])
        # 200 frames fit the burst, but only 100 ERRORs are signed (the error budget); those
        # still being signed when the link closes are dropped with it.
        self.assertLessEqual(len(received), 100)
        self.assertLessEqual(set(received), {"BAD_JSON"})
        hub = self.server.hub
        signed = sum(n for name, n in hub.counters.items() if name.startswith("errors_sent."))
        self.assertTrue(100 <= signed <= 101 + 20 * elapsed, (signed, elapsed))  # burst + refill
        self.assertEqual(hub.counters["closed.rate_limited"], 1)
        self.assertGreaterEqual(hub.counters["rate_limited"], 20)
        self.assertGreater(hub.counters["errors_suppressed"], 0)
        neighbour.send(b"not json either")
        self.assertEqual((yield neighbour.messages.get())["payload"]["code"], "BAD_JSON")
