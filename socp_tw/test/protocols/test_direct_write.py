"""``send_now``: a frame leaves in the call that wrote it when the TCP transport is idle,
and frames always leave whole and in order (partial sends, queued bytes, send errors)."""

from __future__ import annotations

import errno
import select
import socket
import struct
from types import SimpleNamespace

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet import error, reactor, tcp
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from socp_tw.protocols.frames import FastFrames, frame_header, mask_payload, masked_text_frame, send_now
from socp_tw.transport.sender import OrderedSender

TIMEOUT = 10  # seconds a loopback test may wait for bytes


def text_frame(payload: bytes) -> tuple[bytes, bytes]:
    """A listening side's frame as ``_write_frame`` passes it: (header, the payload itself)."""
    return frame_header(len(payload)), payload


def numbered(index: int, size: int) -> bytes:
    """A payload of ``size`` bytes that says which frame it is, everywhere in it."""
    stamp = b"%06d;" % index
    return (stamp * (size // len(stamp) + 1))[:size]


def parse_frames(data: bytes) -> list[bytes]:
    """The payloads of the final text frames ``data`` consists of (masked ones unmasked).

    Raises ValueError on anything else: another opcode, or a frame cut short.
    """
    payloads = []
    at = 0
    while at < len(data):
        if data[at] != 0x81 or at + 2 > len(data):
            raise ValueError(f"no final text frame at byte {at}")
        second = data[at + 1]
        length = second & 0x7F
        at += 2
        if length == 126:
            length, at = int.from_bytes(data[at : at + 2], "big"), at + 2
        elif length == 127:
            length, at = int.from_bytes(data[at : at + 8], "big"), at + 8
        mask = None
        if second & 0x80:
            mask, at = data[at : at + 4], at + 4
        payload = data[at : at + length]
        if len(payload) != length:
            raise ValueError(f"frame at byte {at} cut short: {len(payload)} of {length} bytes")
        at += length
        payloads.append(mask_payload(payload, mask) if mask else payload)
    return payloads


class ScriptedSocket:
    """A non-blocking TCP socket's stand-in for a real ``tcp.Connection``.

    ``room`` is how many more bytes the kernel would take (None: any number); ``error``
    is raised by every send instead while set.  ``wire`` is what the peer would read, in
    order; ``sendmsg_calls`` the buffers each ``sendmsg`` got.
    """

    def __init__(self) -> None:
        self.room: int | None = None
        self.error: OSError | None = None
        self.wire = bytearray()
        self.sendmsg_calls: list[list[bytes]] = []

    def setblocking(self, flag: bool) -> None:
        pass

    def fileno(self) -> int:
        return 1000

    def sendmsg(self, buffers) -> int:
        buffers = list(buffers)
        self.sendmsg_calls.append(buffers)
        return self._take(b"".join(buffers))

    def send(self, data) -> int:  # Twisted's writeSomeData
        return self._take(bytes(data))

    def _take(self, data: bytes) -> int:
        if self.error is not None:
            raise self.error
        taken = len(data) if self.room is None else min(self.room, len(data))
        if data and not taken:
            raise BlockingIOError(errno.EAGAIN, "Resource temporarily unavailable")
        if self.room is not None:
            self.room -= taken
        self.wire += data[:taken]
        return taken


def fake_connection() -> tuple[tcp.Connection, ScriptedSocket]:
    """A real, connected ``tcp.Connection`` over a :class:`ScriptedSocket` and a MemoryReactor."""
    sock = ScriptedSocket()
    connection = tcp.Connection(sock, Protocol(), MemoryReactor())
    connection.connected = 1
    return connection, sock


def flush(connection: tcp.Connection):
    """Do what the reactor does while ``connection`` waits to write; doWrite's last result."""
    result = None
    for _ in range(100):
        if connection not in connection.reactor.getWriters():
            break
        result = connection.doWrite()
        if result is not None:
            break
    return result


class IdleTransportTests(SynchronousTestCase):
    def test_sent_at_once_nothing_left_in_twisted(self) -> None:
        connection, sock = fake_connection()
        payload = b'{"type":"HEARTBEAT"}' * 10
        header, _ = text_frame(payload)
        send_now(connection, (header, payload))
        self.assertEqual(len(sock.sendmsg_calls), 1)
        sent_header, sent_payload = sock.sendmsg_calls[0]
        self.assertEqual(sent_header, header)
        self.assertIs(sent_payload, payload)  # gathered from the object itself, not copied
        self.assertEqual(bytes(sock.wire), header + payload)
        self.assertEqual(connection._tempDataBuffer, [])
        self.assertEqual(connection._tempDataLen, 0)
        self.assertEqual(connection.reactor.getWriters(), [])  # no writability watch

    def test_frame_after_frame_each_sent_at_once(self) -> None:
        connection, sock = fake_connection()
        payloads = [numbered(n, size) for n, size in enumerate((0, 1, 125, 126, 65535, 65536, 70000))]
        for payload in payloads:
            send_now(connection, text_frame(payload))
        self.assertEqual(len(sock.sendmsg_calls), len(payloads))
        self.assertEqual(parse_frames(bytes(sock.wire)), payloads)
        self.assertEqual(connection.reactor.getWriters(), [])

    def test_data_buffer_fully_sent_counts_as_idle(self) -> None:
        connection, sock = fake_connection()
        connection.dataBuffer, connection.offset = b"abc", 3
        send_now(connection, text_frame(b"x"))
        self.assertEqual(len(sock.sendmsg_calls), 1)


class QueuedBytesTests(SynchronousTestCase):
    """While Twisted holds unsent bytes a frame queues behind them."""

    def test_frame_waits_behind_a_queued_write(self) -> None:
        connection, sock = fake_connection()
        connection.write(b"earlier")
        send_now(connection, text_frame(b"later"))
        self.assertEqual(sock.sendmsg_calls, [])
        self.assertEqual(sock.wire, b"")
        self.assertIsNone(flush(connection))
        self.assertEqual(bytes(sock.wire), b"earlier" + b"".join(text_frame(b"later")))

    def test_frame_waits_behind_a_partly_sent_data_buffer(self) -> None:
        connection, sock = fake_connection()
        connection.dataBuffer, connection.offset = b"xyzzy", 2
        send_now(connection, text_frame(b"later"))
        self.assertEqual(sock.sendmsg_calls, [])
        flush(connection)
        self.assertEqual(bytes(sock.wire), b"zzy" + b"".join(text_frame(b"later")))

    def test_empty_piece_queued_still_counts_as_queued(self) -> None:
        connection, sock = fake_connection()
        connection.writeSequence([b""])
        send_now(connection, text_frame(b"x"))
        self.assertEqual(sock.sendmsg_calls, [])
        flush(connection)
        self.assertEqual(parse_frames(bytes(sock.wire)), [b"x"])


class PartialSendTests(SynchronousTestCase):
    def test_exactly_the_unsent_remainder_is_queued_at_every_split(self) -> None:
        payload = numbered(1, 300)
        header, _ = text_frame(payload)
        frame = header + payload
        for room in range(1, len(frame)):
            connection, sock = fake_connection()
            sock.room = room
            send_now(connection, (header, payload))
            self.assertEqual(bytes(sock.wire), frame[:room], room)
            queued = connection._tempDataBuffer
            self.assertTrue(all(type(piece) is bytes for piece in queued), room)
            self.assertEqual(b"".join(queued), frame[room:], room)
            self.assertEqual(connection._tempDataLen, len(frame) - room, room)
            if room < len(header):
                self.assertIs(queued[-1], payload, room)  # still not copied
            self.assertIn(connection, connection.reactor.getWriters())
            sock.room = None
            flush(connection)
            self.assertEqual(bytes(sock.wire), frame, room)

    def test_frames_after_a_partial_send_arrive_whole_and_in_order(self) -> None:
        connection, sock = fake_connection()
        payloads = [numbered(n, 500 + n) for n in range(6)]
        sock.room = 700  # the first frame whole, the second in part
        for payload in payloads:
            send_now(connection, text_frame(payload))
        self.assertEqual(len(sock.sendmsg_calls), 2)  # the rest queued behind the remainder
        sock.room = 100  # the reactor drains the buffer in several turns
        flush(connection)
        sock.room = None
        flush(connection)
        self.assertEqual(parse_frames(bytes(sock.wire)), payloads)
        self.assertEqual(connection.reactor.getWriters(), [])
        send_now(connection, text_frame(b"idle again"))  # drained: direct once more
        self.assertEqual(len(sock.sendmsg_calls), 3)
        self.assertEqual(parse_frames(bytes(sock.wire)), [*payloads, b"idle again"])

    def test_masked_frames_split_and_queued_unmask_intact(self) -> None:
        connection, sock = fake_connection()
        payloads = [numbered(n, 200) for n in range(4)]
        sock.room = 150
        for payload in payloads:
            send_now(connection, masked_text_frame(payload))
        sock.room = None
        flush(connection)
        self.assertEqual(parse_frames(bytes(sock.wire)), payloads)

    def test_remainder_past_the_buffer_size_pauses_the_producer(self) -> None:
        connection, sock = fake_connection()
        connection.bufferSize = 1000
        sender = OrderedSender(lambda data: send_now(connection, text_frame(data)), "test")
        connection.registerProducer(sender, True)
        sock.room = 100
        sender.send(numbered(1, 3000))  # 2900+ bytes left over: more than the buffer size
        self.assertTrue(sender.paused)
        self.assertTrue(connection.producerPaused)
        sender.send(numbered(2, 10))
        self.assertEqual(sender.held_bytes, 10)  # waits in the sender, not in Twisted
        sock.room = None
        flush(connection)  # drained: Twisted resumes the sender, whose frame goes at once
        self.assertFalse(sender.paused)
        self.assertEqual(sender.held_bytes, 0)
        self.assertEqual(len(sock.sendmsg_calls), 2)
        self.assertEqual(parse_frames(bytes(sock.wire)), [numbered(1, 3000), numbered(2, 10)])

    def test_small_remainder_leaves_the_producer_running(self) -> None:
        connection, sock = fake_connection()
        sender = OrderedSender(lambda data: send_now(connection, text_frame(data)), "test")
        connection.registerProducer(sender, True)
        sock.room = 100
        sender.send(numbered(1, 3000))  # less than 64 KiB left over
        self.assertFalse(sender.paused)


class SendErrorTests(SynchronousTestCase):
    def assert_all_queued(self, connection: tcp.Connection, sock: ScriptedSocket, pieces) -> None:
        self.assertEqual(sock.wire, b"")
        self.assertEqual(connection._tempDataBuffer, list(pieces))
        self.assertIs(connection._tempDataBuffer[1], pieces[1])
        self.assertIn(connection, connection.reactor.getWriters())

    def test_would_block_queues_everything(self) -> None:
        for exception in (BlockingIOError(errno.EAGAIN, "busy"), InterruptedError(errno.EINTR, "signal")):
            connection, sock = fake_connection()
            sock.error = exception
            pieces = text_frame(b"wait for it")
            send_now(connection, pieces)
            self.assert_all_queued(connection, sock, pieces)
            sock.error = None
            self.assertIsNone(flush(connection))
            self.assertEqual(parse_frames(bytes(sock.wire)), [b"wait for it"])

    def test_broken_connection_left_for_twisted_to_report(self) -> None:
        for exception in (
            ConnectionResetError(errno.ECONNRESET, "reset"),
            BrokenPipeError(errno.EPIPE, "broken pipe"),
        ):
            connection, sock = fake_connection()
            sock.error = exception
            pieces = text_frame(b"too late")
            send_now(connection, pieces)  # raises nothing, closes nothing
            self.assertTrue(connection.connected)
            self.assert_all_queued(connection, sock, pieces)
            self.assertIsInstance(flush(connection), error.ConnectionLost)  # Twisted's usual verdict


class OtherTransportTests(SynchronousTestCase):
    """Anything but an idle, plain, open TCP connection gets the whole frame through its
    ``writeSequence``, as before."""

    def test_string_transport(self) -> None:
        transport = StringTransport()
        payload = b'{"n":1}'
        send_now(transport, text_frame(payload))
        self.assertEqual(transport.value(), b"".join(text_frame(payload)))

    def test_tls_wrapper(self) -> None:
        transport = TLSMemoryBIOProtocol.__new__(TLSMemoryBIOProtocol)  # a wss link's transport
        written: list = []
        transport.writeSequence = written.append
        pieces = text_frame(b"secret")
        send_now(transport, pieces)
        self.assertEqual(written, [pieces])

    def test_tcp_connection_after_start_tls(self) -> None:
        connection, sock = fake_connection()
        written: list = []
        connection.protocol = SimpleNamespace(writeSequence=written.append)
        connection.TLS = True
        pieces = text_frame(b"secret")
        send_now(connection, pieces)
        self.assertEqual(sock.sendmsg_calls, [])
        self.assertEqual(written, [pieces])

    def test_closing_or_paused_connections_queue(self) -> None:
        for name, value in (
            ("disconnecting", 1),
            ("_writeDisconnecting", True),
            ("_aborting", True),
            ("producerPaused", True),
        ):
            connection, sock = fake_connection()
            setattr(connection, name, value)
            pieces = text_frame(b"x")
            send_now(connection, pieces)
            self.assertEqual(sock.sendmsg_calls, [], name)
            self.assertEqual(connection._tempDataBuffer, list(pieces), name)

    def test_lost_connection_drops_quietly(self) -> None:
        connection, sock = fake_connection()
        connection.connected = 0
        send_now(connection, text_frame(b"x"))
        self.assertEqual(sock.sendmsg_calls, [])
        self.assertEqual(connection._tempDataBuffer, [])


class FrameWriter(FastFrames):
    """Just enough of a WebSocket protocol for ``_write_frame``."""

    state = WebSocketProtocol.STATE_OPEN

    def __init__(self, transport, is_server: bool) -> None:
        self.transport = transport
        self.factory = SimpleNamespace(isServer=is_server)


class WriteFrameTests(SynchronousTestCase):
    def test_listening_side_sends_header_and_the_payload_object(self) -> None:
        connection, sock = fake_connection()
        payload = b'{"type":"USER_DELIVER"}'
        FrameWriter(connection, is_server=True)._write_frame(payload)
        [(header, body)] = sock.sendmsg_calls
        self.assertEqual(header, frame_header(len(payload)))
        self.assertIs(body, payload)

    def test_dialling_side_sends_masked_frames(self) -> None:
        connection, sock = fake_connection()
        payload = b'{"type":"SERVER_DELIVER"}'
        FrameWriter(connection, is_server=False)._write_frame(payload)
        [(header, body)] = sock.sendmsg_calls
        self.assertEqual(header[:2], bytes((0x81, 0x80 | len(payload))))
        self.assertNotEqual(body, payload)
        self.assertEqual(mask_payload(body, header[2:6]), payload)
        self.assertEqual(parse_frames(bytes(sock.wire)), [payload])


# Real loopback TCP through the reactor


class Collector(Protocol):
    """Keeps what it reads; ``until(n)`` fires once it has read ``n`` bytes; ``lost`` fires
    with the reason the connection was lost (a Failure)."""

    def __init__(self) -> None:
        self.received = bytearray()
        self.made: Deferred[None] = Deferred()
        self.lost: Deferred = Deferred()
        self.reason = None
        self._waiting: tuple[int, Deferred] | None = None

    def connectionMade(self) -> None:
        self.made.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if self._waiting is not None and len(self.received) >= self._waiting[0]:
            waiting, self._waiting = self._waiting[1], None
            waiting.callback(None)

    def connectionLost(self, reason) -> None:
        self.reason = reason
        self.lost.callback(None)

    def until(self, size: int) -> Deferred:
        if len(self.received) >= size:
            waiting: Deferred = Deferred()
            waiting.callback(None)
            return waiting
        self._waiting = (size, Deferred())
        return self._waiting[1].addTimeout(TIMEOUT, reactor)


class RecordingSocket:
    """A real socket, whose ``sendmsg`` results (counts or exceptions) are recorded."""

    def __init__(self, real: socket.socket) -> None:
        self._real = real
        self.sendmsg_results: list = []

    def sendmsg(self, buffers) -> int:
        try:
            sent = self._real.sendmsg(buffers)
        except OSError as exception:
            self.sendmsg_results.append(exception)
            raise
        self.sendmsg_results.append(sent)
        return sent

    def __getattr__(self, name: str):
        return getattr(self._real, name)


class LoopbackTests(TestCase):
    timeout = 30

    @inlineCallbacks
    def connect(self):
        """A Twisted client connected to a Twisted server on 127.0.0.1: (client, server)."""
        server = Collector()
        port = reactor.listenTCP(0, Factory.forProtocol(lambda: server), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client = Collector()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)
        yield connectProtocol(endpoint, client)
        yield server.made

        def close():
            for end in (client, server):
                end.transport.loseConnection()
            return client.lost.addCallback(lambda _: server.lost)

        self.addCleanup(close)
        self.assertIsInstance(client.transport, tcp.Connection)
        return client, server

    @inlineCallbacks
    def test_idle_connection_sends_in_the_writing_call(self) -> None:
        client, server = yield self.connect()
        payloads = [numbered(n, size) for n, size in enumerate((0, 5, 125, 126, 4000, 65536, 20))]
        for payload in payloads:
            send_now(client.transport, text_frame(payload))
            self.assertEqual(client.transport._tempDataLen, 0)
            self.assertNotIn(client.transport, reactor.getWriters())
        total = sum(len(b"".join(text_frame(p))) for p in payloads)
        yield server.until(total)
        self.assertEqual(parse_frames(bytes(server.received)), payloads)

    @inlineCallbacks
    def test_full_socket_partial_send_then_queued_frames_arrive_in_order(self) -> None:
        client, server = yield self.connect()
        server.transport.pauseProducing()  # the peer stops reading: the sockets fill
        server.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        client.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
        recording = RecordingSocket(client.transport.socket)
        client.transport.socket = recording
        sender = OrderedSender(lambda data: send_now(client.transport, text_frame(data)), "test")
        client.transport.registerProducer(sender, True)
        payloads = [numbered(0, 1_000_003)]  # more than the sockets hold: sent in part
        sender.send(payloads[0])
        [partial] = recording.sendmsg_results
        self.assertIsInstance(partial, int)
        self.assertGreater(partial, 0)
        self.assertLess(partial, 1_000_003)  # of the frame's 1_000_013 bytes
        self.assertTrue(sender.paused, "the transport never paused its producer")
        direct_sends = len(recording.sendmsg_results)
        for _ in range(5):  # while paused: held in the sender
            payloads.append(numbered(len(payloads), 77))
            sender.send(payloads[-1])
        self.assertEqual(len(recording.sendmsg_results), direct_sends)
        server.transport.resumeProducing()
        total = sum(len(b"".join(text_frame(p))) for p in payloads)
        yield server.until(total)
        self.assertEqual(parse_frames(bytes(server.received)), payloads)
        self.assertFalse(sender.paused)
        client.transport.unregisterProducer()

    @inlineCallbacks
    def test_reset_connection_reported_by_twisted(self) -> None:
        listener = socket.socket()
        self.addCleanup(listener.close)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        client = Collector()
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", listener.getsockname()[1])
        yield connectProtocol(endpoint, client)
        accepted, _ = listener.accept()
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        accepted.close()  # a reset
        real = client.transport.socket
        readable, _, _ = select.select([real], [], [], TIMEOUT)
        self.assertTrue(readable, "the reset never arrived")
        recording = RecordingSocket(real)
        client.transport.socket = recording
        send_now(client.transport, text_frame(b"into the void"))  # raises nothing
        [failure] = recording.sendmsg_results
        self.assertIsInstance(failure, OSError)
        self.assertNotIsInstance(failure, BlockingIOError)
        yield client.lost
        self.assertIsNotNone(client.reason.check(error.ConnectionLost, error.ConnectionDone))


class _Opened:
    """Autobahn protocol behaviour for the tests below: report the open, collect messages."""

    def onOpen(self) -> None:
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.messages.append(payload)
        if len(self.factory.messages) == self.factory.expected:
            self.factory.all_received.callback(None)

    def onClose(self, wasClean, code, reason) -> None:
        if not self.factory.closed.called:
            self.factory.closed.callback(None)


class FastServer(_Opened, FastFrames, WebSocketServerProtocol):
    pass


class PlainServer(_Opened, WebSocketServerProtocol):
    pass


class FastClient(_Opened, FastFrames, WebSocketClientProtocol):
    pass


class PlainClient(_Opened, WebSocketClientProtocol):
    pass


class AutobahnPeerTests(TestCase):
    """Frames sent at once read correctly by Autobahn's own parser, both roles (the client's
    masked)."""

    timeout = 30
    PAYLOADS = [numbered(n, size) for n, size in enumerate((0, 1, 125, 126, 127, 65535, 65536, 300_000))]

    @inlineCallbacks
    def link(self, server_class: type, client_class: type, sending: str):
        """Connect a ``client_class`` to a ``server_class`` over loopback; once both are open,
        return the ``sending`` side's protocol and the other side's factory."""
        server_factory = WebSocketServerFactory("ws://127.0.0.1")
        server_factory.protocol = server_class
        port = reactor.listenTCP(0, server_factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        client_factory = WebSocketClientFactory(f"ws://127.0.0.1:{port.getHost().port}")
        client_factory.protocol = client_class
        for factory in (server_factory, client_factory):
            factory.setProtocolOptions(openHandshakeTimeout=0, closeHandshakeTimeout=0, autoPingInterval=0)
            factory.opened, factory.closed, factory.all_received = Deferred(), Deferred(), Deferred()
            factory.messages, factory.expected = [], len(self.PAYLOADS)
        reactor.connectTCP("127.0.0.1", port.getHost().port, client_factory)
        client = yield client_factory.opened  # it has read the handshake: the server wrote it all
        server = yield server_factory.opened

        def close():
            client.transport.loseConnection()
            server.transport.loseConnection()
            return client_factory.closed.addCallback(lambda _: server_factory.closed)

        self.addCleanup(close)
        if sending == "server":
            return server, client_factory
        return client, server_factory

    @inlineCallbacks
    def send_and_check(self, sender, receiving_factory):
        self.assertIsInstance(sender.transport, tcp.Connection)
        for payload in self.PAYLOADS:
            sender._write_frame(payload)
            if len(payload) < 1000:
                self.assertEqual(sender.transport._tempDataLen, 0)  # it left at once
        yield receiving_factory.all_received.addTimeout(TIMEOUT, reactor)
        self.assertEqual(receiving_factory.messages, self.PAYLOADS)

    @inlineCallbacks
    def test_listening_side_frames_read_by_autobahn(self) -> None:
        sender, receiving = yield self.link(FastServer, PlainClient, sending="server")
        yield self.send_and_check(sender, receiving)

    @inlineCallbacks
    def test_dialling_side_masked_frames_read_by_autobahn(self) -> None:
        sender, receiving = yield self.link(PlainServer, FastClient, sending="client")
        yield self.send_and_check(sender, receiving)
