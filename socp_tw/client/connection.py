"""The client's WebSocket to its server, kept open: reconnect with backoff and jitter.

:class:`Connection` wraps a :class:`ClientService` around an Autobahn client factory.
The protocol is thin: it parses frames and hands them to the session.  The session
learns of each open link (``connection_made``), each loss (``connection_lost``) and
each scheduled retry (``reconnect_scheduled``, with the delay and the reason), and
logs in again by itself after a reconnect.

Known trap (STYLE.md): ClientService resets its failure count as soon as TCP
connects, so a server that accepts TCP but fails the WebSocket upgrade would be
retried at a constant delay.  We keep our own count of consecutive failures, reset
only when the WebSocket opens, and feed ``policy(max(attempt, failures))``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from OpenSSL import SSL
from service_identity import CertificateError, VerificationError
from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure

from socp_tw import __version__, tls, wire
from socp_tw.client.options import parse_server_url
from socp_tw.logs import get_logger
from socp_tw.protocols.websocket import close_link, tune_factory

CLOSE_NORMAL = 1000
CLOSE_TIMEOUT = 3.0
CONNECT_TIMEOUT = 30.0

#: Reconnect delays: 1, 2, 4 ... 30 s, plus up to 1 s of jitter so clients don't return in lockstep.
DEFAULT_RETRY_POLICY: Callable[[int], float] = backoffPolicy(
    initialDelay=0.5, maxDelay=30.0, factor=2.0, jitter=lambda: random.uniform(0.0, 1.0)
)


class BinaryFrame(wire.FrameError):
    """SOCP frames are JSON text messages."""

    code = "BAD_FRAME"


class ClientProtocol(WebSocketClientProtocol):
    """One WebSocket to the server; also the session's *link* (``send``, ``close``)."""

    _log = get_logger("socp_tw.client.connection")
    _opened = False
    _tls_failure: str | None = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self._opened:
            # Autobahn reports any drop before the upgrade as "closed uncleanly": keep the TLS reason.
            self._tls_failure = tls_failure_reason(reason, self.factory.connection.host)
        super().connectionLost(reason)

    def onOpen(self) -> None:
        self._opened = True
        try:
            self.factory.connection.protocol_opened(self)
        except Exception:
            self._log.failure("The client failed handling an open connection")

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        session = self.factory.connection.session
        try:
            if isBinary:
                raise BinaryFrame("binary WebSocket messages are not SOCP frames")
            envelope = wire.parse_envelope(payload, max_bytes=self.factory.max_frame_bytes)
        except wire.FrameError as error:
            session.frame_rejected(error)
            return
        try:
            session.frame_received(envelope)
        except Exception:
            self._log.failure("The client failed handling a {type} frame", type=envelope.type)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        try:
            self.factory.connection.protocol_closed(self, self._opened, code, self._tls_failure or reason)
        except Exception:
            self._log.failure("The client failed handling a closed connection")

    # the session's link

    def send(self, data: bytes) -> None:
        if self.state == WebSocketProtocol.STATE_OPEN:
            self.sendMessage(data, isBinary=False)

    def close(self, code: int = CLOSE_NORMAL, reason: str | None = None) -> None:
        close_link(self, code, reason)


class ClientFactory(WebSocketClientFactory):
    """Builds :class:`ClientProtocol` for the server URL."""

    protocol = ClientProtocol

    def __init__(self, url: str, connection: Connection, max_frame_bytes: int = wire.MAX_FRAME_BYTES) -> None:
        super().__init__(url, useragent=f"socp-tw-client/{__version__}")
        self.connection = connection
        self.max_frame_bytes = max_frame_bytes
        tune_factory(self, max_frame_bytes)


class _ReportingEndpoint:
    """An endpoint wrapper that remembers why the last connection attempt failed."""

    def __init__(self, endpoint: Any, connection: Connection) -> None:
        self._endpoint = endpoint
        self._connection = connection

    def connect(self, factory: Any) -> Deferred:
        def failed(failure: Failure) -> Failure:
            self._connection.last_reason = failure.getErrorMessage() or failure.type.__name__
            return failure

        return self._endpoint.connect(factory).addErrback(failed)


def endpoint_for(reactor: Any, url: str, tls_context: IOpenSSLClientConnectionCreator | None = None) -> Any:
    """A client endpoint for ``url``: TCP for ws://, TLS for wss:// (every resolved address tried).

    ``tls_context`` says how a wss:// server is verified (``tls.client_context``: a CA
    file, SPKI pins, pin-only); by default the system's trust store and the URL's host.
    """
    scheme, host, port = parse_server_url(url)
    if scheme != "wss":
        escaped = host.replace(":", "\\:")
        return endpoints.clientFromString(reactor, f"tcp:host={escaped}:port={port}")
    if tls_context is None:
        tls_context = tls.client_context(host)
    return tls.client_endpoint(reactor, host, port, tls_context, timeout=CONNECT_TIMEOUT)


def tls_failure_reason(reason: Failure, host: str) -> str | None:
    """Why the TLS handshake with the server failed, for the ``cannot connect`` line; ``None`` if it didn't.

    Names the check that failed: the SPKI pin (with the key the server presented, as
    :mod:`socp_tw.tls` reports it), the certificate's name, or its chain of trust.
    """
    error = reason.value
    if isinstance(error, tls.SPKIPinMismatch):
        return f"TLS: {error} (--server-pin)"
    if isinstance(error, (VerificationError, CertificateError)):
        return f"TLS: the server's certificate is not valid for {host}"
    if isinstance(error, SSL.Error):
        detail = _ssl_error_text(error)
        if "certificate verify failed" in detail:
            return f"TLS: the server's certificate is not trusted ({detail}); see --tls-ca and --server-pin"
        return f"TLS handshake failed: {detail}"
    return None


def _ssl_error_text(error: SSL.Error) -> str:
    """``certificate verify failed`` from pyOpenSSL's ``[(lib, func, reason), ...]``."""
    items = error.args[0] if error.args and isinstance(error.args[0], list) else []
    return ", ".join(str(item[-1]) for item in items if isinstance(item, tuple) and item) or repr(error)


class Connection(Service):
    """Keeps one WebSocket to ``url`` open for ``session`` until stopped."""

    name = "connection"
    _log = get_logger("socp_tw.client.connection")

    def __init__(
        self,
        url: str,
        session: Any,
        reactor: Any = None,
        *,
        endpoint: Any = None,
        retry_policy: Callable[[int], float] = DEFAULT_RETRY_POLICY,
        max_frame_bytes: int = wire.MAX_FRAME_BYTES,
        close_timeout: float = CLOSE_TIMEOUT,
        tls_context: IOpenSSLClientConnectionCreator | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.url = url
        self.host = parse_server_url(url)[1]
        self.session = session
        self._reactor = reactor
        self._policy = retry_policy
        self._close_timeout = close_timeout
        self.factory = ClientFactory(url, self, max_frame_bytes)
        self.factory.setSessionParameters(url=url)
        self._endpoint = _ReportingEndpoint(endpoint or endpoint_for(reactor, url, tls_context), self)
        self._client = ClientService(
            self._endpoint, self.factory, retryPolicy=self._retry_delay, clock=reactor
        )
        self.protocol: ClientProtocol | None = None
        self.failures = 0
        self.last_reason = "connection failed"
        self._was_connected = False
        self._closed: list[Deferred] = []
        self._opened: list[Deferred] = []

    # ------------------------------------------------------------ events

    def protocol_opened(self, protocol: ClientProtocol) -> None:
        self.protocol = protocol
        self.failures = 0
        self._log.info("Connected to {url}", url=self.url)
        self.session.connection_made(protocol)
        waiters, self._opened = self._opened, []
        for waiter in waiters:
            waiter.callback(protocol)

    def protocol_closed(
        self, protocol: ClientProtocol, opened: bool, code: int | None, reason: str | None
    ) -> None:
        text = reason or (f"close code {code}" if code else "connection lost")
        self.last_reason = text
        if opened:
            self._log.info("Connection to {url} closed: {reason}", url=self.url, reason=text)
            if self.protocol is protocol:
                self.protocol = None
            self._was_connected = True
            self.session.connection_lost(text)
        waiters, self._closed = self._closed, []
        for waiter in waiters:
            waiter.callback(None)

    def _retry_delay(self, attempt: int) -> float:
        self.failures += 1
        delay = self._policy(max(attempt, self.failures))
        was_connected, self._was_connected = self._was_connected, False
        try:
            self.session.reconnect_scheduled(delay, self.last_reason, was_connected)
        except Exception:
            self._log.failure("The session failed reporting a reconnect")
        return delay

    # ---------------------------------------------------------- service

    def startService(self) -> None:
        super().startService()
        self._client.startService()

    def stopService(self) -> Deferred:
        """Close the WebSocket cleanly (1000), waiting at most ``close_timeout``, then stop retrying."""
        super().stopService()
        protocol = self.protocol
        if protocol is None or protocol.state != WebSocketProtocol.STATE_OPEN:
            return self._client.stopService()
        closed: Deferred = Deferred()
        self._closed.append(closed)
        timer = self._reactor.callLater(self._close_timeout, self._close_timed_out, closed)
        protocol.sendClose(CLOSE_NORMAL)

        def stop(_: object) -> Deferred:
            if timer.active():
                timer.cancel()
            return self._client.stopService()

        return closed.addCallback(stop)

    def _close_timed_out(self, closed: Deferred) -> None:
        if not closed.called:
            self._closed.remove(closed)
            closed.callback(None)

    def when_open(self) -> Deferred:
        """A Deferred firing with the protocol once a WebSocket is open (now, or at the next open)."""
        if self.protocol is not None:
            return succeed(self.protocol)
        waiter: Deferred = Deferred()
        self._opened.append(waiter)
        return waiter
