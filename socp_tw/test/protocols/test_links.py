"""OrderedSender: frames leave in call order even when some are still being signed."""

from __future__ import annotations

from autobahn.exception import Disconnected
from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from socp_tw.protocols.frames import frame_header
from socp_tw.transport.fanout import copies_of
from socp_tw.transport.sender import OrderedSender


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


class FlowControlTests(SynchronousTestCase):
    """The sender as the transport's push producer: ready frames wait while the transport is full."""

    def setUp(self) -> None:
        self.written: list[bytes] = []
        self.sender = OrderedSender(self.written.append, "test")

    def test_paused_sender_holds_frames_until_resumed(self) -> None:
        self.sender.pauseProducing()
        self.sender.send(b"one")
        signed: Deferred[bytes] = Deferred()
        self.sender.send(signed)
        self.sender.send(b"three")
        signed.callback(b"two")
        self.assertEqual(self.written, [])
        self.assertEqual((len(self.sender), self.sender.pending, self.sender.held_bytes), (3, 0, 11))
        self.sender.resumeProducing()
        self.assertEqual(self.written, [b"one", b"two", b"three"])
        self.assertEqual((len(self.sender), self.sender.held_bytes), (0, 0))

    def test_pause_during_a_flush_stops_it(self) -> None:
        def write(data: bytes) -> None:
            self.written.append(data)
            self.sender.pauseProducing()  # what a full transport does inside write()

        self.sender = OrderedSender(write, "test")
        first: Deferred[bytes] = Deferred()
        self.sender.send(first)
        self.sender.send(b"b")
        self.sender.send(b"c")
        first.callback(b"a")
        self.assertEqual(self.written, [b"a"])
        self.sender.resumeProducing()
        self.assertEqual(self.written, [b"a", b"b"])
        self.sender.resumeProducing()
        self.assertEqual(self.written, [b"a", b"b", b"c"])

    def test_pending_counts_frames_waiting_for_a_signature(self) -> None:
        frames = [Deferred() for _ in range(3)]
        for frame in frames:
            self.sender.send(frame)
        self.assertEqual(self.sender.pending, 3)
        frames[1].callback(b"xx")
        self.assertEqual((self.sender.pending, self.sender.held_bytes), (2, 2))
        frames[2].errback(ValueError("not signed"))
        frames[0].callback(b"y")
        self.assertEqual(self.written, [b"y", b"xx"])
        self.assertEqual((self.sender.pending, self.sender.held_bytes, len(self.sender)), (0, 0, 0))
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_idle_sender_keeps_no_queue(self) -> None:
        self.sender.pauseProducing()
        self.sender.send(b"x")
        self.sender.resumeProducing()
        self.assertIsNone(self.sender._queue)

    def test_stop_producing_closes(self) -> None:
        self.sender.pauseProducing()
        self.sender.send(b"x")
        self.sender.stopProducing()
        self.sender.resumeProducing()
        self.sender.send(b"y")
        self.assertEqual(self.written, [])
        self.assertTrue(self.sender.closed)
        self.assertEqual(self.sender.held_bytes, 0)

    def test_frame_ready_after_close_is_dropped(self) -> None:
        pending: Deferred[bytes] = Deferred()
        self.sender.send(pending)
        self.sender.close()
        pending.callback(b"late")
        self.assertEqual((self.written, self.sender.pending, self.sender.held_bytes), ([], 0, 0))


class TextFrameHeaderTests(SynchronousTestCase):
    def test_lengths(self) -> None:
        self.assertEqual(frame_header(0), b"\x81\x00")
        self.assertEqual(frame_header(125), b"\x81\x7d")
        self.assertEqual(frame_header(126), b"\x81\x7e\x00\x7e")
        self.assertEqual(frame_header(65535), b"\x81\x7e\xff\xff")
        self.assertEqual(frame_header(65536), b"\x81\x7f" + (65536).to_bytes(8, "big"))


class CopiesOfTests(SynchronousTestCase):
    """``copies_of``: one signed frame, a handle for each link it goes to."""

    def test_bytes_are_shared(self) -> None:
        frame = b'{"type":"X"}'
        copies = copies_of(frame, 3)
        self.assertEqual(len(copies), 3)
        self.assertTrue(all(copy is frame for copy in copies))

    def test_pending_frame_copies_fire_with_its_bytes(self) -> None:
        shared: Deferred = Deferred()
        first = copies_of(shared, 2)
        got = []
        for copy in first:
            copy.addCallback(got.append)
        self.assertEqual(got, [])
        shared.callback(b"signed")
        self.assertEqual(got, [b"signed", b"signed"])
        later = copies_of(shared, 1)[0]  # a user arriving afterwards
        self.assertEqual(self.successResultOf(later), b"signed")
        self.assertEqual(self.successResultOf(shared), b"signed")  # the shared chain keeps its bytes

    def test_failed_signing_fails_every_copy_and_is_consumed(self) -> None:
        shared: Deferred = Deferred()
        copies = copies_of(shared, 2)
        shared.errback(RuntimeError("signing broke"))
        for copy in copies:
            self.assertEqual(str(self.failureResultOf(copy, RuntimeError).value), "signing broke")
        self.assertIsNone(self.successResultOf(shared))
        later = copies_of(shared, 1)[0]
        self.failureResultOf(later, RuntimeError)
