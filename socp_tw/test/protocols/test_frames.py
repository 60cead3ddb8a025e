"""The WebSocket fast path (``socp_tw.protocols.frames``) against Autobahn's own parser."""

from __future__ import annotations

import os

from autobahn.exception import Disconnected
from autobahn.twisted.websocket import WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.xormasker import create_xor_masker
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import wire
from socp_tw.logs import get_logger
from socp_tw.protocols import frames as frames_module
from socp_tw.protocols.frames import (
    frame_header,
    mask_payload,
    mask_with_integers,
    masked_text_frame,
)
from socp_tw.protocols.websocket import SOCPServerProtocol, parse_message
from socp_tw.services.hub import Hub
from socp_tw.test.servers import open_server_link
from socp_tw.testing import FakeLink, NeverSigner

MAX_FRAME = 4096  # the factories' message/frame bound in these tests


def client_frame(
    payload: bytes, opcode: int = 0x1, fin: bool = True, masked: bool = True, rsv: int = 0
) -> bytes:
    """A frame as a client sends it (masked unless told otherwise)."""
    mask = os.urandom(4) if masked else None
    head = bytearray(frame_header(len(payload), opcode, mask))
    if not fin:
        head[0] &= 0x7F
    head[0] |= rsv << 4
    return bytes(head) + (mask_payload(payload, mask) if mask else payload)


class SlowPathProtocol(SOCPServerProtocol):
    """The same protocol with the fast path bypassed: Autobahn parses everything."""

    def processData(self) -> bool:
        return WebSocketServerProtocol.processData(self)


class Connection:
    """A server protocol over a StringTransport, recording the messages it delivers."""

    def __init__(self, case: SynchronousTestCase, protocol_class: type = SOCPServerProtocol) -> None:
        self.hub = Hub(NeverSigner())
        self.protocol, self.transport = open_server_link(
            case, self.hub, protocol_class, max_frame_bytes=MAX_FRAME
        )
        self.messages: list[tuple[bytes, bool]] = []
        self.protocol.onMessage = lambda payload, binary: self.messages.append((payload, binary))

    def feed(self, data: bytes, step: int | None = None) -> None:
        step = step or len(data) or 1
        for start in range(0, len(data), step):
            self.protocol.dataReceived(data[start : start + step])

    def close_code(self) -> int | None:
        """The code of the close frame the server wrote, if any."""
        written = self.transport.value()
        at = written.find(b"\x88")
        if at < 0 or len(written) < at + 4:
            return None
        return int.from_bytes(written[at + 2 : at + 4], "big")


class MaskingTests(SynchronousTestCase):
    def test_mask_matches_autobahn(self) -> None:
        for length in (1, 3, 4, 5, 125, 126, 127, 3000, 65535, 70001):
            payload, mask = os.urandom(length), os.urandom(4)
            expected = create_xor_masker(mask, length).process(payload)
            self.assertEqual(mask_payload(payload, mask), expected, length)
            self.assertEqual(mask_with_integers(payload, mask), expected, length)
        self.assertEqual(mask_payload(b"", b"abcd"), b"")

    def test_masked_text_frame_round_trip(self) -> None:
        payload = b'{"type":"HEARTBEAT"}' * 10
        head, body = masked_text_frame(payload)
        self.assertEqual(head[:2], bytes((0x81, 0x80 | 126)))
        self.assertEqual(int.from_bytes(head[2:4], "big"), len(payload))
        self.assertNotEqual(body, payload)
        self.assertEqual(mask_payload(body, head[4:8]), payload)

    def test_headers(self) -> None:
        self.assertEqual(frame_header(0), b"\x81\x00")
        self.assertEqual(frame_header(125, 0x2), b"\x82\x7d")
        self.assertEqual(frame_header(126), b"\x81\x7e\x00\x7e")
        self.assertEqual(frame_header(65536), b"\x81\x7f" + (65536).to_bytes(8, "big"))
        self.assertEqual(frame_header(5, mask=b"abcd"), b"\x81\x85abcd")


class FastPathTests(SynchronousTestCase):
    def test_whole_frames_delivered_in_order(self) -> None:
        conn = Connection(self)

        def autobahn_parser(protocol):
            raise AssertionError("a whole data frame reached Autobahn's parser")

        self.patch(WebSocketProtocol, "processData", autobahn_parser)
        frames = [b'{"n":1}', b"x" * 3000, b"", b'{"n":4}']
        conn.feed(b"".join(client_frame(f) for f in frames))
        self.assertEqual(conn.messages, [(f, False) for f in frames])
        self.assertEqual(conn.protocol.data, b"")

    def test_frames_split_at_every_byte(self) -> None:
        conn = Connection(self)
        frames = [b'{"a":"' + b"y" * 300 + b'"}', b'{"b":2}']
        conn.feed(b"".join(client_frame(f) for f in frames), step=1)
        self.assertEqual(conn.messages, [(f, False) for f in frames])

    def test_binary_flagged(self) -> None:
        conn = Connection(self)
        conn.feed(client_frame(b"\x00\x01", opcode=0x2))
        self.assertEqual(conn.messages, [(b"\x00\x01", True)])

    def test_fragmented_message_goes_through_autobahn(self) -> None:
        conn = Connection(self)
        conn.feed(
            client_frame(b'{"part":', fin=False)
            + client_frame(b"", opcode=0x9)  # a ping between the fragments
            + client_frame(b'"one"}', opcode=0x0)
            + client_frame(b'{"next":1}')
        )
        self.assertEqual(conn.messages, [(b'{"part":"one"}', False), (b'{"next":1}', False)])
        self.assertTrue(conn.transport.value().startswith(b"\x8a\x00"))  # the pong

    def test_ping_answered_between_data_frames(self) -> None:
        conn = Connection(self)
        conn.feed(client_frame(b"1") + client_frame(b"hi", opcode=0x9) + client_frame(b"2"))
        self.assertEqual(conn.messages, [(b"1", False), (b"2", False)])
        self.assertEqual(conn.transport.value(), b"\x8a\x02hi")

    def test_oversize_frame_closed_with_1009(self) -> None:
        conn = Connection(self)
        conn.feed(client_frame(b"z" * (MAX_FRAME + 1)))
        self.assertEqual(conn.messages, [])
        self.assertEqual(conn.close_code(), 1009)

    def test_oversize_frame_refused_from_its_header(self) -> None:
        conn = Connection(self)
        conn.feed(client_frame(b"z" * (MAX_FRAME + 1))[:8])  # only the header has arrived
        self.assertEqual(conn.close_code(), 1009)

    def test_unmasked_client_frame_fails_the_connection(self) -> None:
        conn = Connection(self)
        conn.feed(client_frame(b'{"n":1}', masked=False))
        self.assertEqual(conn.messages, [])
        self.assertEqual(conn.close_code(), 1002)

    def test_reserved_bits_fail_the_connection(self) -> None:
        conn = Connection(self)
        conn.feed(client_frame(b'{"n":1}', rsv=1))
        self.assertEqual(conn.messages, [])
        self.assertEqual(conn.close_code(), 1002)

    def test_non_minimal_length_fails_the_connection(self) -> None:
        conn = Connection(self)
        mask = os.urandom(4)
        conn.feed(b"\x81\xfe\x00\x05" + mask + mask_payload(b"hello", mask))
        self.assertEqual(conn.messages, [])
        self.assertEqual(conn.close_code(), 1002)

    def test_large_frame_still_arriving_is_streamed_by_autobahn(self) -> None:
        self.patch(frames_module, "MAX_FAST_FRAME", 1000)
        conn = Connection(self)
        payload = b"q" * 3000
        data = client_frame(payload)
        conn.feed(data[:512])
        self.assertIsNotNone(conn.protocol.current_frame)  # Autobahn holds the frame in progress
        conn.feed(data[512:], step=512)
        self.assertEqual(conn.messages, [(payload, False)])

    def test_small_frame_still_arriving_waits_in_the_buffer(self) -> None:
        conn = Connection(self)
        data = client_frame(b"w" * 3000)
        conn.feed(data[:512])
        self.assertIsNone(conn.protocol.current_frame)
        self.assertEqual(conn.protocol.data, data[:512])
        conn.feed(data[512:])
        self.assertEqual(conn.messages, [(b"w" * 3000, False)])

    def test_close_frame_handled_by_autobahn(self) -> None:
        conn = Connection(self)
        conn.feed(client_frame(b"1") + client_frame((1000).to_bytes(2, "big") + b"bye", opcode=0x8))
        self.assertEqual(conn.messages, [(b"1", False)])
        self.assertEqual(conn.close_code(), 1000)  # the reply
        conn.feed(client_frame(b"after close"))
        self.assertEqual(conn.messages, [(b"1", False)])


_frame = st.one_of(
    st.tuples(st.just("data"), st.binary(max_size=600), st.booleans()),
    st.tuples(
        st.just("fragmented"), st.lists(st.binary(max_size=200), min_size=2, max_size=4), st.just(False)
    ),
    st.tuples(st.just("ping"), st.binary(max_size=125), st.just(False)),
)


class EquivalenceTests(SynchronousTestCase):
    """The fast path and Autobahn's parser see the same messages and answer the same way."""

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(frames=st.lists(_frame, max_size=8), step=st.integers(min_value=1, max_value=700))
    def test_same_messages_as_autobahn(self, frames, step) -> None:
        wire_bytes = b""
        for kind, body, binary in frames:
            if kind == "data":
                wire_bytes += client_frame(body, opcode=0x2 if binary else 0x1)
            elif kind == "ping":
                wire_bytes += client_frame(body, opcode=0x9)
            else:
                wire_bytes += client_frame(body[0], fin=False)
                for middle in body[1:-1]:
                    wire_bytes += client_frame(middle, opcode=0x0, fin=False)
                wire_bytes += client_frame(body[-1], opcode=0x0)
        fast, slow = Connection(self), Connection(self, SlowPathProtocol)
        fast.feed(wire_bytes, step)
        slow.feed(wire_bytes, step)
        self.assertEqual(fast.messages, slow.messages)
        self.assertEqual(fast.transport.value(), slow.transport.value())  # the pongs
        self.assertEqual(len(fast.messages), sum(kind != "ping" for kind, _, _ in frames))


class WriteFrameTests(SynchronousTestCase):
    def test_listening_side_writes_header_then_the_payload_itself(self) -> None:
        conn = Connection(self)
        payload = b'{"type":"HEARTBEAT"}'
        written = []
        conn.transport.writeSequence = written.append
        conn.protocol._write_frame(payload)
        self.assertEqual(len(written), 1)
        header, body = written[0]
        self.assertEqual(header, frame_header(len(payload)))
        self.assertIs(body, payload)  # not copied

    def test_closed_link_raises_disconnected(self) -> None:
        conn = Connection(self)
        conn.protocol.state = WebSocketProtocol.STATE_CLOSED
        self.assertRaises(Disconnected, conn.protocol._write_frame, b"{}")


class ParseMessageTests(SynchronousTestCase):
    """``parse_message``: what both link protocols do with one WebSocket message."""

    def test_parsed_rejected_and_a_failing_reject_logged(self) -> None:
        link = FakeLink("in-9")
        link._log = get_logger("test")
        rejected: list = []
        frame = wire.encode_frame("HEARTBEAT", wire.new_uuid4(), "*", 1, {})
        envelope = parse_message(link, frame, False, 4096, lambda *a: rejected.append(a))
        self.assertEqual(envelope.type, "HEARTBEAT")
        self.assertIsNone(parse_message(link, b"{", False, 4096, lambda *a: rejected.append(a)))
        self.assertIsNone(parse_message(link, frame, True, 4096, lambda *a: rejected.append(a)))
        self.assertEqual([error.code for _, error in rejected], ["BAD_JSON", "BAD_FRAME"])

        def broken(link, error):
            raise RuntimeError("reject failed")

        self.assertIsNone(parse_message(link, b"{", False, 4096, broken))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
