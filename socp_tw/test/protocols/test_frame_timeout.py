"""A started frame must arrive in full within ``frame_timeout`` (``FastFrames``), on a Clock."""

from __future__ import annotations

from dataclasses import replace

from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial.unittest import SynchronousTestCase

from socp_tw.limits import DEFAULT_LIMITS
from socp_tw.protocols.websocket import SOCPServerProtocol
from socp_tw.services.hub import Hub
from socp_tw.test.protocols.test_frames import client_frame
from socp_tw.test.servers import open_server_link
from socp_tw.testing import NeverSigner

USER_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


class SlowPathProtocol(SOCPServerProtocol):
    """Autobahn parses everything (no fast path): the bound holds there too."""

    def processData(self) -> bool:
        return WebSocketServerProtocol.processData(self)


class SlowFrameTests(SynchronousTestCase):
    protocol_class: type = SOCPServerProtocol

    def connect(self, max_frame_bytes: int = 4096, timeout: float = 30.0):
        self.clock = Clock()
        self.hub = Hub(NeverSigner())
        limits = replace(DEFAULT_LIMITS, frame_timeout=timeout)
        protocol, self.transport = open_server_link(
            self,
            self.hub,
            self.protocol_class,
            max_frame_bytes=max_frame_bytes,
            limits=limits,
            clock=self.clock,
        )
        self.messages: list[bytes] = []
        protocol.onMessage = lambda payload, binary: self.messages.append(payload)
        self.events: list[dict] = []
        protocol._log = Logger(namespace="test", observer=self.events.append)
        # Logged in: the hub's identify and auth timeouts no longer apply.
        protocol.role, protocol.identity = "user", USER_ID
        self.protocol = protocol
        return protocol

    def drip(self, data: bytes, every: float = 1.0) -> None:
        """Send ``data`` one byte every ``every`` seconds."""
        for byte in data:
            self.protocol.dataReceived(bytes((byte,)))
            self.clock.advance(every)

    def close_code(self) -> int | None:
        written = self.transport.value()
        at = written.find(b"\x88")
        return int.from_bytes(written[at + 2 : at + 4], "big") if at >= 0 else None

    def test_one_byte_a_second_is_closed(self) -> None:
        self.connect()
        frame = client_frame(b'{"x":"' + b"y" * 100 + b'"}')
        self.drip(frame[:29])
        self.assertIsNone(self.close_code())
        self.drip(frame[29:31])
        self.assertEqual(self.close_code(), 1008)
        self.assertIn(b"frame not completed within 30 s", self.transport.value())
        self.assertEqual(self.hub.counters["closed.frame_timeout"], 1)
        [event] = [e for e in self.events if "took over" in e["log_format"]]
        self.assertEqual(event["timeout"], 30.0)
        self.assertEqual(self.messages, [])

    def test_each_frame_gets_its_own_bound(self) -> None:
        """Five frames of 20 s each, back to back (100 s in all): none is too slow."""
        self.connect()
        frames = [client_frame(b'{"n":%d,"pad":"xx"}' % n) for n in range(5)]
        for frame in frames:
            self.assertLess(len(frame), 30)
            self.drip(frame, every=20.0 / len(frame))
        self.assertEqual(len(self.messages), 5)
        self.assertIsNone(self.close_code())
        self.clock.advance(100)  # nothing started: no deadline left
        self.assertIsNone(self.close_code())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_next_frame_started_in_the_same_read_gets_a_fresh_bound(self) -> None:
        self.connect()
        first, second = client_frame(b'{"a":1}'), client_frame(b'{"b":2}')
        self.protocol.dataReceived(first[:3])
        self.clock.advance(25)
        self.protocol.dataReceived(first[3:] + second[:3])  # the first completes, the second starts
        self.clock.advance(25)
        self.assertIsNone(self.close_code())
        self.protocol.dataReceived(second[3:])
        self.assertEqual(len(self.messages), 2)
        self.clock.advance(60)
        self.assertIsNone(self.close_code())

    def test_large_frame_streamed_through_autobahn(self) -> None:
        self.connect(max_frame_bytes=200_000)
        frame = client_frame(b"z" * 100_000)  # over MAX_FAST_FRAME: Autobahn's parser streams it
        self.protocol.dataReceived(frame[:80_000])
        self.clock.advance(20)
        self.protocol.dataReceived(frame[80_000:90_000])
        self.clock.advance(9.9)
        self.assertIsNone(self.close_code())
        self.clock.advance(0.1)
        self.assertEqual(self.close_code(), 1008)

    def test_fragmented_message_bounded_as_a_whole(self) -> None:
        """The fragments each arrive whole, and a ping between them, but the message never ends."""
        self.connect()
        self.protocol.dataReceived(client_frame(b'{"part":', fin=False))
        self.clock.advance(20)
        self.protocol.dataReceived(client_frame(b"", opcode=0x9))  # a ping does not finish it
        self.clock.advance(9.9)
        self.assertIsNone(self.close_code())
        self.clock.advance(0.1)
        self.assertEqual(self.close_code(), 1008)

    def test_pending_link_too(self) -> None:
        protocol = self.connect(timeout=5.0)
        protocol.role, protocol.identity = "pending", None
        self.drip(client_frame(b'{"x":1}')[:6])
        self.assertEqual(self.close_code(), 1008)

    def test_closing_the_link_cancels_the_timer(self) -> None:
        self.connect()
        self.protocol.dataReceived(client_frame(b'{"a":1}')[:3])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.protocol.onClose(False, None, "gone")
        self.assertEqual(self.clock.getDelayedCalls(), [])


class SlowFrameSlowPathTests(SlowFrameTests):
    protocol_class = SlowPathProtocol
