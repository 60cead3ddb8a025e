"""The hot paths reshaped for performance (issue 8) keep their contracts.

* ``FrameSigner.frame_now`` serialises the payload once (its canonical form goes on the
  wire): the frame parses to the same envelope and its signature verifies.
* A listening link registers its :class:`OrderedSender` as the transport's producer:
  while the transport is full, ready frames wait (uncopied) in the sender, count as
  queued bytes for back-pressure (``send_backlog``) and for the slow-reader bound.
"""

from __future__ import annotations

import json
from dataclasses import replace

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import crypto, wire
from socp_tw.identity import ServerIdentity
from socp_tw.limits import DEFAULT_LIMITS
from socp_tw.protocols.websocket import SOCPServerFactory, SOCPServerProtocol
from socp_tw.services.hub import Hub
from socp_tw.signer import FrameSigner, encode_signed_frame
from socp_tw.test.keys import test_key
from socp_tw.test.servers import HANDSHAKE, open_server_link
from socp_tw.testing import NeverSigner, SynchronousWorkers
from socp_tw.transport.backlog import send_backlog


class SignedFrameTests(SynchronousTestCase):
    def test_encode_signed_frame_is_encode_frame_once_parsed(self) -> None:
        payload = {"b": "é ✓", "a": [1, {"x": None, "y": True}], "n": 2**40}
        sender, to = wire.new_uuid4(), wire.new_uuid4()
        fast = encode_signed_frame("USER_DELIVER", sender, to, 1700000000123, wire.canonical(payload), "c2ln")
        slow = wire.encode_frame("USER_DELIVER", sender, to, 1700000000123, payload, "c2ln")
        self.assertEqual(wire.parse_envelope(fast), wire.parse_envelope(slow))
        self.assertEqual(json.loads(fast), json.loads(slow))

    def test_ts_must_be_an_int(self) -> None:
        for ts in (1.5, True, "1"):
            with self.assertRaises(TypeError):
                encode_signed_frame("ACK", "a", "b", ts, b"{}", "")  # type: ignore[arg-type]

    def test_frame_now_verifies(self) -> None:
        key = test_key(0)
        identity = ServerIdentity(wire.new_uuid4(), key, crypto.encode_public_key(key))
        signer = FrameSigner(identity, SynchronousWorkers(), now_ms=lambda: 42)
        payload = {"user_id": wire.new_uuid4(), "ciphertext": "Y2lwaGVy", "meta": {"client": "ü"}}
        envelope = wire.parse_envelope(signer.frame_now("USER_ADVERTISE", "*", payload))
        self.assertEqual(
            (envelope.type, envelope.from_, envelope.to, envelope.ts),
            ("USER_ADVERTISE", identity.server_id, "*", 42),
        )
        self.assertEqual(envelope.payload, payload)
        self.assertTrue(crypto.verify_payload(key.public_key(), envelope.payload, envelope.sig))
        frame = self.successResultOf(signer.frame("ACK", "*", {"msg_ref": "X"}, ts=7))
        self.assertEqual(wire.parse_envelope(frame).ts, 7)


class FlowControlledLinkTests(SynchronousTestCase):
    def protocol(self, **limits):
        hub = Hub(NeverSigner(), clock=Clock())
        protocol, transport = open_server_link(self, hub, limits=replace(DEFAULT_LIMITS, **limits))
        return protocol, transport, hub

    def test_frames_wait_while_the_transport_is_full(self) -> None:
        protocol, transport, _ = self.protocol()
        self.assertIs(transport.producer, protocol._sender)
        self.assertTrue(transport.streaming)
        protocol.send(b'{"n":1}')
        self.assertEqual(transport.value(), b"\x81\x07" + b'{"n":1}')
        transport.clear()
        transport.producer.pauseProducing()  # what a full TCP transport does
        protocol.send(b'{"n":2}')
        protocol.send(b'{"n":3}')
        self.assertEqual(transport.value(), b"")
        self.assertEqual(protocol.queued_bytes, 14)
        self.assertEqual(send_backlog(protocol), 14)
        transport.producer.resumeProducing()
        self.assertEqual(transport.value(), b'\x81\x07{"n":2}\x81\x07{"n":3}')
        self.assertEqual(protocol.queued_bytes, 0)

    def test_held_bytes_count_toward_the_slow_reader_bound(self) -> None:
        protocol, transport, hub = self.protocol(max_send_queue_bytes=100)
        transport.producer.pauseProducing()
        for _ in range(3):
            protocol.send(b"x" * 40)
        self.assertEqual(hub.counters["closed.send_overflow"], 0)  # 80 bytes held, then 120
        protocol.send(b"x" * 40)
        self.assertEqual(hub.counters["closed.send_overflow"], 1)
        self.assertIn(b"too slow: not reading", transport.value())

    def test_ready_frames_held_back_are_not_frames_waiting_for_signatures(self) -> None:
        protocol, _, hub = self.protocol(max_send_queue=2)
        protocol._sender.pauseProducing()
        for n in range(5):
            protocol.send(b'{"n":%d}' % n)
        self.assertEqual(hub.counters["closed.send_overflow"], 0)
        self.assertEqual(len(protocol._sender), 5)


class PerConnectionStateTests(SynchronousTestCase):
    """What each connected user costs the server: Autobahn's options are held once per factory,
    and its (never used) send queue is an empty list, not a deque with a 64-slot block."""

    def open(self, **factory_options):
        hub = Hub(NeverSigner(), clock=Clock())
        protocol, transport = open_server_link(self, hub, **factory_options)
        return protocol, transport

    def test_options_are_read_from_the_protocol_class_not_copied_per_connection(self) -> None:
        protocol, _ = self.open(max_frame_bytes=5000)
        copied = [name for name in protocol.CONFIG_ATTRS if name in vars(protocol)]
        self.assertEqual(copied, [])
        factory = protocol.factory
        for name in protocol.CONFIG_ATTRS:
            self.assertEqual(getattr(protocol, name), getattr(factory, name), name)
        self.assertEqual((protocol.maxMessagePayloadSize, protocol.failByDrop), (5000, False))
        self.assertIsInstance(protocol, SOCPServerProtocol)
        # An option that is a function stays one: compression offers are refused, not a crash.
        self.assertIsNone(protocol.perMessageCompressionAccept(["permessage-deflate"]))

    def test_later_options_reach_later_connections(self) -> None:
        protocol, _ = self.open()
        factory = protocol.factory
        factory.setProtocolOptions(closeHandshakeTimeout=9)
        later = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5556))
        # As with Autobahn's copies: a connection keeps the options it was made with.
        self.assertEqual((later.closeHandshakeTimeout, protocol.closeHandshakeTimeout), (9, 5))
        self.assertIs(type(later).__mro__[1], SOCPServerProtocol)  # one subclass, not a tower

    def test_send_queue_is_an_empty_list_that_still_queues(self) -> None:
        protocol, transport = self.open()
        self.assertEqual((type(protocol.send_queue).__name__, len(protocol.send_queue)), ("_SendQueue", 0))
        protocol.send_queue.append((b"a", True))
        protocol.send_queue.append((b"b", False))
        self.assertEqual(protocol.send_queue.popleft(), (b"a", True))
        protocol.send_queue.popleft()
        # A close handshake (Autobahn's own frames) still goes out through it.
        protocol.close(1000, "bye")
        self.assertIn(b"bye", transport.value())

    def test_a_client_offering_compression_is_answered_without_it(self) -> None:
        hub = Hub(NeverSigner(), clock=Clock())
        factory = SOCPServerFactory("ws://127.0.0.1:9", hub)
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5557))
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.addCleanup(protocol.connectionLost, Failure(ConnectionError("test over")))
        offer = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        protocol.dataReceived(HANDSHAKE[:-2] + offer)
        response = transport.value()
        self.assertIn(b"101 Switching Protocols", response)
        self.assertNotIn(b"permessage-deflate", response)
        self.assertEqual(protocol.state, protocol.STATE_OPEN)
