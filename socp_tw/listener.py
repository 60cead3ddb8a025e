"""The server's one listening port: ``--bind`` parsed, its endpoint, and the service on it.

Users and peer servers share this port.  ``--bind`` is a ``ws://``/``wss://`` URL or a
Twisted ``tcp:`` endpoint string; the URL peers are told (``--advertise``, else the bind
address with the port actually listened on) is known once the port is open.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactor

from socp_tw import tls
from socp_tw.logs import get_logger

# The namespace its lines always had in the server's log ("[socp_tw.tap#info] Server ... listening").
_log = get_logger("socp_tw.tap")

_WS_URL = re.compile(r"^(ws|wss)://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):(\d{1,5})/?$")

#: Interface addresses that mean "every interface": no use to a peer as an address to dial.
ALL_INTERFACES = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class BindAddress:
    """Where to listen (an endpoint description) and how to name it (a ws:// URL)."""

    endpoint: str
    scheme: str
    host: str
    port: int

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port if port is None else port}"


def parse_ws_url(text: str) -> tuple[str, str, int]:
    """Split ``ws://host:port`` into (scheme, host, port); raise ValueError otherwise."""
    match = _WS_URL.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a ws://HOST:PORT URL")
    scheme, host, port = match.group(1), match.group(2).strip("[]"), int(match.group(3))
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    return scheme, host, port


def _tcp_port_and_interface(text: str) -> tuple[int, str]:
    """What a ``tcp:`` endpoint string listens on, as Twisted's own parser reads it.

    The endpoint is made by :func:`endpoints.serverFromString` and listened on a
    :class:`MemoryReactor`, which records the port and interface asked for (nothing opens).
    """
    probe = MemoryReactor()
    try:
        endpoints.serverFromString(probe, text).listen(Factory())
    except TypeError as e:  # a missing or unknown argument
        if "'port'" in str(e):
            raise ValueError(f"endpoint {text!r} names no port") from None
        raise ValueError(f"endpoint {text!r}: {e}") from None
    except ValueError:  # a port that is not a number
        raise ValueError(f"endpoint {text!r} names no port") from None
    port, _factory, _backlog, interface = probe.tcpServers[0]
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return port, interface


def parse_bind(text: str) -> BindAddress:
    """Accept a ``ws://HOST:PORT`` or ``wss://HOST:PORT`` URL, or a Twisted ``tcp:`` endpoint string.

    For ``wss://`` the endpoint is built by :func:`listen_endpoint` from the TLS context.
    """
    if text.startswith(("ws://", "wss://")):
        scheme, host, port = parse_ws_url(text)
        endpoint = f"tcp:{port}:interface={endpoints.quoteStringArgument(host)}" if scheme == "ws" else ""
        return BindAddress(endpoint, scheme, host, port)
    if text.startswith("tcp:"):
        port, interface = _tcp_port_and_interface(text)
        return BindAddress(text, "ws", interface or "0.0.0.0", port)
    raise ValueError(f"--bind takes ws://HOST:PORT or a tcp: endpoint string, not {text!r}")


def listen_endpoint(reactor: Any, address: BindAddress, tls_context: Any = None) -> IStreamServerEndpoint:
    """The endpoint to listen on: TLS with ``tls_context`` for ``wss://``, else ``address.endpoint``."""
    if address.scheme == "wss":
        return tls.server_endpoint(reactor, address.host, address.port, tls_context)
    return endpoints.serverFromString(reactor, address.endpoint)


class ListeningService(StreamServerEndpointService):
    """Listen on an endpoint, fail start-up if the port is busy, log the URL once listening.

    ``advertise`` is the (host, port) announced to peers instead of the bind address.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: Any,
        address: BindAddress,
        server_id: str,
        advertise: tuple[str, int] | None = None,
    ) -> None:
        super().__init__(endpoint, factory)
        self._raiseSynchronously = True
        self.address = address
        self.server_id = server_id
        self.advertise = advertise
        self.port = None
        self.url: str | None = None

    def advertised(self) -> tuple[str, int]:
        """The (host, port) peers should dial: ``advertise``, else the bind host and the
        port actually listened on (port 0 in tests)."""
        if self.advertise is not None:
            return self.advertise
        port = self.port.getHost().port if self.port is not None else self.address.port
        return self.address.host, port

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port):
        self.port = port
        self.url = self.address.url(port.getHost().port)
        self.factory.setSessionParameters(url=self.url, server=self.factory.server)
        _log.info("Server {server_id} listening on {url}", server_id=self.server_id, url=self.url)
        return port


def make_listener(
    reactor: Any,
    address: BindAddress,
    factory: Any,
    server_id: str,
    *,
    tls_context: Any = None,
    advertise: tuple[str, int] | None = None,
) -> ListeningService:
    """The service named ``listener`` serving ``factory`` on ``address``.

    Warns when it would announce an all-interfaces address that no peer can dial.
    """
    if advertise is None and address.host in ALL_INTERFACES:
        _log.warn("Listening on all interfaces: pass --advertise ws://HOST:PORT so peers can reach us")
    listener = ListeningService(
        listen_endpoint(reactor, address, tls_context), factory, address, server_id, advertise
    )
    listener.setName("listener")
    return listener
