"""The client's Connection: reconnect backoff, reasons reported, a clean close."""

from __future__ import annotations

from twisted.internet import task
from twisted.internet.defer import fail
from twisted.internet.error import ConnectionRefusedError
from twisted.trial.unittest import SynchronousTestCase

from socp_tw.client.connection import Connection
from socp_tw.test.client.session.fakes import URL


class ConnectionRetryTests(SynchronousTestCase):
    """Connection: our own consecutive-failure count drives the backoff; reasons are reported."""

    def test_backoff_grows_and_reports(self) -> None:
        clock = task.Clock()
        reports: list[tuple[float, str, bool]] = []

        class Recorder:
            def reconnect_scheduled(self, delay, reason, was_connected):
                reports.append((delay, reason, was_connected))

        attempts = []

        class RefusingEndpoint:
            def connect(self, factory):
                attempts.append(clock.seconds())
                return fail(ConnectionRefusedError("refused"))

        connection = Connection(
            URL, Recorder(), clock, endpoint=RefusingEndpoint(), retry_policy=lambda n: float(2**n)
        )
        connection.startService()
        for _ in range(3):
            clock.advance(reports[-1][0])
        self.assertEqual([r[0] for r in reports], [2.0, 4.0, 8.0, 16.0])
        self.assertTrue(all("refused" in r[1].lower() and r[2] is False for r in reports))
        self.assertEqual(len(attempts), 4)
        self.successResultOf(connection.stopService())
        clock.advance(100)
        self.assertEqual(len(attempts), 4)

    def test_own_failure_count_survives_tcp_connects(self) -> None:
        """A server that accepts TCP but fails the upgrade: ClientService restarts its count at 1,
        ours keeps growing until a WebSocket actually opens."""
        clock = task.Clock()
        delays: list[float] = []

        class Recorder:
            def reconnect_scheduled(self, delay, reason, was_connected):
                delays.append(delay)

            def connection_made(self, link):
                pass

        connection = Connection(URL, Recorder(), clock, endpoint=object(), retry_policy=lambda n: float(n))
        for _ in range(3):
            connection.protocol_closed(object(), False, 1006, "handshake failed")
            connection._retry_delay(1)
        self.assertEqual(delays, [1.0, 2.0, 3.0])
        connection.protocol_opened(FakeProtocol())
        connection._retry_delay(1)
        self.assertEqual(delays[-1], 1.0)

    def test_stop_closes_cleanly_with_1000(self) -> None:
        clock = task.Clock()
        lost = []

        class Recorder:
            def connection_made(self, link):
                pass

            def connection_lost(self, reason):
                lost.append(reason)

        connection = Connection(URL, Recorder(), clock, endpoint=object())
        protocol = FakeProtocol()
        connection.protocol_opened(protocol)
        stopped = connection.stopService()
        self.assertEqual(protocol.closes, [1000])
        self.assertNoResult(stopped)
        connection.protocol_closed(protocol, True, 1000, "bye")
        self.successResultOf(stopped)
        self.assertEqual(lost, ["bye"])

    def test_stop_does_not_wait_forever_for_the_close(self) -> None:
        clock = task.Clock()

        class Recorder:
            def connection_made(self, link):
                pass

        connection = Connection(URL, Recorder(), clock, endpoint=object(), close_timeout=3.0)
        connection.protocol_opened(FakeProtocol())
        stopped = connection.stopService()
        self.assertNoResult(stopped)
        clock.advance(3.0)
        self.successResultOf(stopped)


class FakeProtocol:
    """Stands in for an open ClientProtocol."""

    def __init__(self) -> None:
        from autobahn.websocket.protocol import WebSocketProtocol

        self.state = WebSocketProtocol.STATE_OPEN
        self.closes: list[int] = []

    def sendClose(self, code: int) -> None:
        self.closes.append(code)
