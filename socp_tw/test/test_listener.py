"""``--bind`` parsing (Twisted's endpoint parser for ``tcp:``), the listening endpoint and service."""

from __future__ import annotations

from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint
from twisted.internet.testing import MemoryReactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from socp_tw.listener import listen_endpoint, make_listener, parse_bind, parse_ws_url


class BindParsingTests(SynchronousTestCase):
    def test_ws_url(self) -> None:
        address = parse_bind("ws://127.0.0.1:9000")
        self.assertEqual(address.endpoint, "tcp:9000:interface=127.0.0.1")
        self.assertEqual(address.url(), "ws://127.0.0.1:9000")
        self.assertEqual(address.url(1234), "ws://127.0.0.1:1234")

    def test_ipv6(self) -> None:
        address = parse_bind("ws://[::1]:9000")
        self.assertEqual(address.endpoint, "tcp:9000:interface=\\:\\:1")
        self.assertEqual(address.url(), "ws://[::1]:9000")
        self.assertEqual(parse_bind(address.endpoint).host, "::1")

    def test_endpoint_string(self) -> None:
        address = parse_bind("tcp:9001:interface=127.0.0.1")
        self.assertEqual((address.host, address.port, address.scheme), ("127.0.0.1", 9001, "ws"))
        self.assertEqual(address.endpoint, "tcp:9001:interface=127.0.0.1")
        self.assertEqual(parse_bind("tcp:port=9002").port, 9002)
        self.assertEqual(parse_bind("tcp:interface=127.0.0.2:port=9003").url(), "ws://127.0.0.2:9003")
        self.assertEqual(parse_bind("tcp:9004:backlog=10").host, "0.0.0.0")

    def test_refused_with_a_reason(self) -> None:
        for text, reason in (
            ("http://x:1", "--bind takes ws://HOST:PORT or a tcp: endpoint string, not 'http://x:1'"),
            ("unix:/tmp/x", "--bind takes ws://HOST:PORT or a tcp: endpoint string, not 'unix:/tmp/x'"),
            ("ws://x", "'ws://x' is not a ws://HOST:PORT URL"),
            ("ws://x:99999", "port 99999 is out of range"),
            ("tcp:", "endpoint 'tcp:' names no port"),
            ("tcp:notaport", "endpoint 'tcp:notaport' names no port"),
            ("tcp:interface=127.0.0.1", "endpoint 'tcp:interface=127.0.0.1' names no port"),
            ("tcp:port=x", "endpoint 'tcp:port=x' names no port"),
            ("tcp:99999", "port 99999 is out of range"),
            ("tcp:-1", "port -1 is out of range"),
        ):
            e = self.assertRaises(ValueError, parse_bind, text)
            self.assertEqual(str(e), reason)

    def test_unknown_endpoint_argument(self) -> None:
        """Twisted's parser knows the tcp: arguments: a misspelt one is refused, not ignored."""
        e = self.assertRaises(ValueError, parse_bind, "tcp:9000:interfce=127.0.0.1")
        self.assertIn("interfce", str(e))

    def test_ws_url_parts(self) -> None:
        self.assertEqual(parse_ws_url("ws://localhost:1/"), ("ws", "localhost", 1))
        self.assertEqual(parse_ws_url("wss://[::1]:2"), ("wss", "::1", 2))
        self.assertRaises(ValueError, parse_ws_url, "ws://:1")


class _Factory:
    """What the listener asks of its WebSocket factory."""

    server = "socp"

    def __init__(self) -> None:
        self.url: str | None = None

    def setSessionParameters(self, url: str, server: str) -> None:
        self.url = url


class ListenerTests(SynchronousTestCase):
    def test_endpoints(self) -> None:
        reactor = MemoryReactor()
        self.assertIsInstance(listen_endpoint(reactor, parse_bind("ws://127.0.0.1:1")), TCP4ServerEndpoint)
        self.assertIsInstance(
            listen_endpoint(reactor, parse_bind("wss://127.0.0.1:1"), object()), SSL4ServerEndpoint
        )

    def test_listens_and_names_its_url(self) -> None:
        reactor, factory = MemoryReactor(), _Factory()
        listener = make_listener(reactor, parse_bind("ws://[::1]:0"), factory, "id")
        self.assertEqual(listener.name, "listener")
        self.assertEqual(listener.advertised(), ("::1", 0))
        listener.privilegedStartService()
        self.assertEqual(reactor.tcpServers[0][3], "::1")
        self.assertEqual(listener.url, "ws://[::1]:0")
        self.assertEqual(factory.url, listener.url)

    def test_advertise_wins(self) -> None:
        listener = make_listener(
            MemoryReactor(), parse_bind("ws://127.0.0.1:0"), _Factory(), "id", advertise=("chat.example", 1)
        )
        self.assertEqual(listener.advertised(), ("chat.example", 1))

    def test_all_interfaces_warns_without_advertise(self) -> None:
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        make_listener(MemoryReactor(), parse_bind("tcp:0"), _Factory(), "id", advertise=("a.example", 1))
        make_listener(MemoryReactor(), parse_bind("ws://127.0.0.1:0"), _Factory(), "id")
        self.assertEqual(events, [])
        make_listener(MemoryReactor(), parse_bind("tcp:0"), _Factory(), "id")
        self.assertEqual(
            [formatEvent(e) for e in events],
            ["Listening on all interfaces: pass --advertise ws://HOST:PORT so peers can reach us"],
        )
