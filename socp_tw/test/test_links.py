"""OrderedSender: frames leave in call order even when some are still being signed."""

from __future__ import annotations

from autobahn.exception import Disconnected
from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from socp_tw.protocols.links import OrderedSender


class OrderedSenderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.written: list[bytes] = []
        self.sender = OrderedSender(self.written.append, "test")

    def test_bytes_go_straight_out(self) -> None:
        self.sender.send(b"a")
        self.assertEqual(self.written, [b"a"])
        self.assertEqual(len(self.sender), 0)

    def test_pending_frame_holds_later_ones(self) -> None:
        first: Deferred[bytes] = Deferred()
        self.sender.send(first)
        self.sender.send(b"second")
        third: Deferred[bytes] = Deferred()
        self.sender.send(third)
        third.callback(b"third")
        self.assertEqual(self.written, [])
        first.callback(b"first")
        self.assertEqual(self.written, [b"first", b"second", b"third"])

    def test_failed_frame_is_skipped_and_logged(self) -> None:
        self.sender.send(fail(ValueError("signing broke")))
        self.sender.send(b"next")
        self.assertEqual(self.written, [b"next"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_closed_drops_everything(self) -> None:
        pending: Deferred[bytes] = Deferred()
        self.sender.send(pending)
        self.sender.close()
        pending.callback(b"late")
        self.sender.send(b"later")
        late: Deferred[bytes] = Deferred()
        self.sender.send(late)
        late.errback(ValueError("ignored"))
        self.assertEqual(self.written, [])
        self.assertEqual(self.flushLoggedErrors(ValueError), [])

    def test_write_on_closing_connection_is_dropped(self) -> None:
        def closing(data: bytes) -> None:
            raise Disconnected("Attempt to send on a closed protocol")

        sender = OrderedSender(closing, "test")
        sender.send(b"x")
        self.assertTrue(sender.closed)
        sender.send(b"y")  # no exception either
