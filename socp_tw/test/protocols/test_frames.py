"""How links write frames (``socp_tw.protocols.frames``), masking, and parsing SOCP messages."""

from __future__ import annotations

import os

from autobahn.exception import Disconnected
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.xormasker import create_xor_masker
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import wire
from socp_tw.logs import get_logger
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
