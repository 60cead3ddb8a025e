"""Dialling other servers: one redialling dialer per target, and the service that owns them.

A :class:`PeerDialer` keeps one outgoing link to one address with a Twisted
``ClientService``, redialling with exponential backoff and jitter; the mesh pauses it
while another link to that server is live and resumes it when that link dies.
:class:`OutgoingLinks` owns the dialers as a service that starts after the listener (so
our advertised port is known) and stops first.  The mesh sees them as
:class:`~socp_tw.interfaces.IOutgoingLinks` and :class:`~socp_tw.interfaces.IDialer`;
they report to it through :class:`~socp_tw.interfaces.IPeerLinkEvents`.  The WebSocket
client protocol is not imported here: ``client_factory``, which ``socp_tw.tap`` sets to
``socp_tw.protocols.peer.PeerClientFactory``, builds it for each attempt, for a dialer
seen as an :class:`~socp_tw.interfaces.IOutgoingLinkOwner`.

The ClientService trap (STYLE.md): ClientService resets its failure count whenever
TCP connects, even if the WebSocket upgrade, or the peer's acceptance, then fails, so
its own count would retry a refusing peer at a constant short delay.  The retry
policy here ignores ClientService's count and uses the dialer's: consecutive
attempts that did not produce a *healthy* link (one on which the peer's first
verified frame arrived), reset only by the mesh via :meth:`PeerDialer.mark_healthy`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.endpoints import HostnameEndpoint, clientFromString
from twisted.internet.error import ConnectError
from twisted.internet.interfaces import IDelayedCall, IProtocolFactory, IStreamClientEndpoint
from twisted.logger import Logger
from zope.interface import implementer

from socp_tw import tls, wire
from socp_tw.interfaces import IDialer, ILink, IOutgoingLinkOwner, IOutgoingLinks, IPeerLinkEvents
from socp_tw.limits import DEFAULT_LIMITS, Limits
from socp_tw.logs import get_logger
from socp_tw.services.mesh.state import CLOSE_GOING_AWAY, CLOSE_NORMAL

__all__ = ["ClientFactory", "OutgoingLinks", "PeerDialer", "backoff_policy"]

_log = get_logger("socp_tw.peer")

#: Redial failures logged one by one; after that, one line per peer per period, with a count.
REDIALS_LOGGED = 3
REDIAL_LOG_PERIOD = 60.0

#: Builds the WebSocket client factory of one dial attempt: ``(owner, max_frame_bytes)``.
ClientFactory = Callable[[IOutgoingLinkOwner, int], IProtocolFactory]


def backoff_policy(
    base: float = 0.5,
    cap: float = 30.0,
    jitter: float = 0.5,
    rand: Callable[[], float] = random.random,
) -> Callable[[int], float]:
    """The redial delay after ``failures`` (>= 1) failed attempts: Twisted's ``backoffPolicy``.

    ``base * 2**(failures-1)``, capped at ``cap``, then reduced by up to ``jitter``
    of itself at random so that servers which lost each other at once do not redial
    in lock-step.  Always > 0 and <= ``cap``.  Twisted's own jitter is added after
    the cap and does not scale with the delay, so it is off here and the shortening
    is applied to what the policy returns.
    """
    grow = backoffPolicy(initialDelay=base, maxDelay=cap, factor=2.0, jitter=lambda: 0.0)

    def policy(failures: int) -> float:
        full = grow(max(failures, 1) - 1)
        return full * (1.0 - jitter * min(max(rand(), 0.0), 1.0)) or full

    return policy


@implementer(IStreamClientEndpoint)
class _FailingEndpoint:
    """An endpoint whose every connection attempt fails (an address we cannot dial as configured)."""

    def __init__(self, reason: str) -> None:
        self._reason = reason

    def connect(self, factory: Any) -> Deferred:
        return fail(ConnectError(string=self._reason))


class _QuietClientService(ClientService):
    """ClientService whose own retry chatter goes to a namespace we filter (we log retries ourselves)."""

    _log = Logger(namespace="socp_tw.peer.clientservice", observer=lambda event: None)


@implementer(IDialer, IOutgoingLinkOwner)
class PeerDialer:
    """One outgoing link to one address, redialled with backoff while the mesh wants it."""

    def __init__(
        self,
        outgoing: OutgoingLinks,
        host: str,
        port: int,
        server_id: str | None = None,
        join: bool = False,
    ) -> None:
        self.outgoing = outgoing
        self.mesh = outgoing.mesh
        self.host = host
        self.port = port
        self.server_id = server_id
        self.join = join
        self.pem = False  # send our key as b64u(PEM) in SERVER_HELLO_JOIN (bootstrap key given as PEM)
        self.announce_first = False  # open links with SERVER_ANNOUNCE, not HELLO_LINK (INTEROP.md row 11)
        self.failures = 0
        self._last_logged = float("-inf")  # when the last redial line was logged
        self._logged_failures = 0  # self.failures at that line
        self.attempts = 0
        self.link: ILink | None = None
        self.wanted = False
        self._service: ClientService | None = None
        self._service_address: tuple[str, int] | None = None
        self._resume_call: IDelayedCall | None = None
        self._reconcile_call: IDelayedCall | None = None
        self._link_gone: list[Deferred] = []

    def __repr__(self) -> str:
        return f"<PeerDialer {self.url} server={self.server_id} wanted={self.wanted}>"

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.outgoing.scheme_for(self.host, self.port)}://{self.address}"

    @property
    def max_send_queue(self) -> int:
        return self.outgoing.max_send_queue

    @property
    def max_send_queue_bytes(self) -> int:
        return self.outgoing.max_send_queue_bytes

    def new_link_id(self) -> str:
        return f"out-{next(self.outgoing.link_ids)}"

    # -- what the mesh asks ------------------------------------------------------------------

    def resume(self, delay: float = 0.0) -> None:
        """Dial (after ``delay`` seconds) and keep redialling until paused."""
        if self.wanted:
            return
        if self._resume_call is not None and self._resume_call.active():
            if delay > 0:
                return
            self._resume_call.cancel()
        self._resume_call = None
        if delay > 0:
            self._resume_call = self.outgoing.clock.callLater(delay, self.resume)
            return
        self.wanted = True
        self._schedule_reconcile()

    def pause(self) -> None:
        """Stop dialling (another link to this server is live); our own link, if any, is left alone."""
        if self._resume_call is not None and self._resume_call.active():
            self._resume_call.cancel()
        self._resume_call = None
        self.wanted = False
        self._schedule_reconcile()

    def retarget(self, host: str, port: int) -> None:
        """The server moved: dial the new address from the next attempt on."""
        if (host, port) != (self.host, self.port):
            self.host, self.port = host, port
            self._schedule_reconcile()

    def mark_healthy(self) -> None:
        """The peer accepted the link: the next redial starts from the shortest delay."""
        self.failures = 0
        self._logged_failures = 0

    # -- ClientService plumbing -----------------------------------------------------------------

    def _next_delay(self, attempt: int) -> float:
        """ClientService's retry policy: ``attempt`` is ignored on purpose (see the module doc)."""
        self.failures += 1
        delay = self.outgoing.delay_for(self.failures)
        if self.wanted and self.outgoing.running:
            # The first failures one by one, then one line a minute per peer with the count:
            # a peer that stays away must not fill the log (docs/OPERATIONS.md).
            now = self.outgoing.clock.seconds()
            if self.failures <= REDIALS_LOGGED or now - self._last_logged >= REDIAL_LOG_PERIOD:
                since = self.failures - self._logged_failures
                _log.info(
                    "Peer {url} unreachable or link lost; retry {failures} in {delay:.1f} s{more}",
                    url=self.url,
                    failures=self.failures,
                    delay=delay,
                    more="" if since <= 1 else f" ({since} failed attempts since the last line)",
                )
                self._last_logged, self._logged_failures = now, self.failures
        return delay

    def _schedule_reconcile(self) -> None:
        if self._reconcile_call is None or not self._reconcile_call.active():
            self._reconcile_call = self.outgoing.clock.callLater(0, self._reconcile)

    def _reconcile(self) -> None:
        """Make the ClientService match what is wanted (always from a fresh reactor turn)."""
        self._reconcile_call = None
        if not self.outgoing.running:
            return
        if self._service is not None and self.link is None:
            if not self.wanted or self._service_address != (self.host, self.port):
                self._stop_service()
        if self.wanted and self._service is None:
            self._start_service()

    def _start_service(self) -> None:
        endpoint = self.outgoing.endpoint_for(self.host, self.port)
        factory = self.outgoing.client_factory(self, self.outgoing.max_frame_bytes)
        self._service = _QuietClientService(
            endpoint, factory, retryPolicy=self._next_delay, clock=self.outgoing.clock
        )
        self._service_address = (self.host, self.port)
        self.attempts += 1
        self._service.startService()

    def _stop_service(self) -> Deferred:
        service, self._service = self._service, None
        if service is None or not service.running:
            return succeed(None)
        return service.stopService()

    # -- what the protocol reports ------------------------------------------------------------------

    def opened(self, link: ILink) -> None:
        self.link = link
        self.mesh.outgoing_opened(link, self)

    def closed(self, link: ILink, opened: bool, code: int | None, reason: str | None) -> None:
        if not opened:
            _log.debug(
                "WebSocket handshake with {url} failed ({reason})", url=self.url, reason=reason or code
            )
            return
        if link is self.link:
            self.link = None
        self.mesh.link_closed(link, reason or (f"code {code}" if code else "connection lost"))
        waiting, self._link_gone = self._link_gone, []
        for waiter in waiting:
            self.outgoing.clock.callLater(0, waiter.callback, None)
        self._schedule_reconcile()

    def shutdown(self, reason: str = "server shutting down", code: int = CLOSE_GOING_AWAY) -> Deferred:
        """Stop for good: say goodbye, close the link cleanly, stop redialling."""
        for call in (self._resume_call, self._reconcile_call):
            if call is not None and call.active():
                call.cancel()
        self._resume_call = self._reconcile_call = None
        self.wanted = False
        if self.link is None:
            return self._stop_service()
        gone: Deferred = Deferred()
        self._link_gone.append(gone)
        if code == CLOSE_GOING_AWAY:
            self.mesh.goodbye(self.link)
        self.link.close(code, reason)
        gone.addCallback(lambda _: self._stop_service())
        return gone


@implementer(IOutgoingLinks)
class OutgoingLinks(Service):
    """Owns every :class:`PeerDialer`; starts after the listener and stops before it."""

    name = "outgoing"

    def __init__(
        self,
        mesh: IPeerLinkEvents,
        reactor: Any = None,
        *,
        client_factory: ClientFactory,
        max_frame_bytes: int = wire.MAX_FRAME_BYTES,
        base_delay: float = 0.5,
        max_delay: float = 30.0,
        jitter: float = 0.5,
        rand: Callable[[], float] = random.random,
        connect_timeout: float = 10.0,
        endpoint_for: Callable[[str, int], IStreamClientEndpoint] | None = None,
        tls_policy: tls.PeerTLS | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.clock = reactor
        self._reactor = reactor
        self.mesh = IPeerLinkEvents(mesh)
        self.client_factory = client_factory
        self.max_frame_bytes = max_frame_bytes
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.jitter = jitter
        self._rand = rand
        self.connect_timeout = connect_timeout
        self._endpoint_for = endpoint_for
        self.tls = tls_policy or tls.PeerTLS()
        self.max_send_queue = limits.max_send_queue
        self.max_send_queue_bytes = limits.max_send_queue_bytes
        self.link_ids = itertools.count(1)
        self.dialers: list[PeerDialer] = []
        self.mesh.set_outgoing(self)

    def delay_for(self, failures: int) -> float:
        """Seconds before the next dial after ``failures`` failed attempts (:func:`backoff_policy`)."""
        return backoff_policy(self.base_delay, self.max_delay, self.jitter, self._rand)(failures)

    def scheme_for(self, host: str, port: int) -> str:
        """``wss`` if the peer at ``host:port`` is dialled over TLS, else ``ws``."""
        return self.tls.scheme(host, port)

    def endpoint_for(self, host: str, port: int) -> IStreamClientEndpoint:
        if self._endpoint_for is not None:
            return self._endpoint_for(host, port)
        if self.tls.uses_tls(host, port):
            # Hostname (or IP) verified through service_identity, CA file and SPKI pins (socp_tw.tls).
            try:
                context = self.tls.context(host, port)
            except tls.TLSConfigError as e:
                _log.error("Cannot dial {host}:{port} over TLS: {why}", host=host, port=port, why=str(e))
                return _FailingEndpoint(str(e))
            return tls.client_endpoint(self._reactor, host, port, context, timeout=self.connect_timeout)
        if ":" in host:  # an IPv6 literal: the tcp: string parser has no IPv6 client form
            return HostnameEndpoint(self._reactor, host, port, timeout=self.connect_timeout)
        return clientFromString(
            self._reactor, f"tcp:host={host}:port={port}:timeout={self.connect_timeout:g}"
        )

    def dialer(self, host: str, port: int, server_id: str | None = None, join: bool = False) -> PeerDialer:
        """A new (paused) dialer for ``host:port``."""
        dialer = PeerDialer(self, host, port, server_id, join)
        self.dialers.append(dialer)
        return dialer

    def remove(self, dialer: PeerDialer) -> Deferred:
        """Forget ``dialer``: stop it and close its link (replaced by another dialer)."""
        if dialer in self.dialers:
            self.dialers.remove(dialer)
        return dialer.shutdown("replaced by another link", CLOSE_NORMAL)

    def startService(self) -> None:
        super().startService()
        for dialer in self.dialers:
            dialer._schedule_reconcile()

    def stopService(self) -> Deferred:
        super().stopService()
        return DeferredList([dialer.shutdown() for dialer in list(self.dialers)])
