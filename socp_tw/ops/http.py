"""``--metrics ENDPOINT``: a small twisted.web site with ``/health`` and ``/metrics``.

``/metrics`` renders the registry on the reactor thread (the services' counters are plain
dicts the reactor changes; prometheus_client's own Twisted resource would read them from a
thread-pool thread).  ``/health`` answers 200 while the listener is listening and the
database answers a query within :data:`DB_TIMEOUT` seconds, 503 with the reason otherwise.
"""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from twisted.application.internet import StreamServerEndpointService
from twisted.internet import defer, endpoints
from twisted.internet.defer import Deferred
from twisted.internet.error import TimeoutError
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from socp_tw.logs import get_logger

#: Seconds the database has to answer a health check.
DB_TIMEOUT = 2.0
#: A user id no one has (UUID v4 form): the health check's query finds nothing, quickly.
_PROBE_USER = "00000000-0000-4000-8000-000000000000"

_log = get_logger("socp_tw.metrics")


class MetricsResource(Resource):
    """``GET /metrics``: the Prometheus text format of ``registry``."""

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._registry)


class HealthResource(Resource):
    """``GET /health``: ``{status, server_id, uptime_s, links, users_local}``, 200 or 503."""

    isLeaf = True

    def __init__(self, services: dict[str, Any], started: float, clock: Any) -> None:
        super().__init__()
        self._s = services
        self._started = started
        self._clock = clock

    def body(self) -> dict[str, Any]:
        local, _total = self._s["presence"].counts()
        return {
            "status": "ok",
            "server_id": self._s["server_id"],
            "uptime_s": round(self._clock.seconds() - self._started, 1),
            "links": len(self._s["mesh"].connected_servers()),
            "users_local": local,
        }

    def render_GET(self, request: Request) -> Any:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        listener = self._s["listener"]
        if not listener.running or getattr(listener, "port", None) is None:
            return self._body(request, 503, "not listening")
        d: Deferred = self._s["store"].get_user(_PROBE_USER)
        d.addTimeout(DB_TIMEOUT, self._clock)
        d.addCallbacks(lambda _: self._finish(request, 200, None), self._db_failed, errbackArgs=(request,))
        d.addErrback(lambda failure: _log.failure("Health check failed", failure))
        return NOT_DONE_YET

    def _db_failed(self, failure: Any, request: Request) -> None:
        if failure.check(TimeoutError, defer.TimeoutError, defer.CancelledError):
            reason = f"no answer within {DB_TIMEOUT:g} s"
        else:
            reason = failure.getErrorMessage() or failure.type.__name__
        self._finish(request, 503, f"database: {reason}")

    def _body(self, request: Request, code: int, reason: str | None) -> bytes:
        body = self.body()
        if reason is not None:
            body.update(status="unavailable", reason=reason)
        request.setResponseCode(code)
        return json.dumps(body).encode() + b"\n"

    def _finish(self, request: Request, code: int, reason: str | None) -> None:
        if request.finished or request.channel is None:  # the client went away meanwhile
            return
        request.write(self._body(request, code, reason))
        request.finish()


def parse_endpoint(reactor: Any, text: str) -> Any:
    """The server endpoint of ``--metrics TEXT``; ValueError if Twisted's parser refuses it."""
    try:
        return endpoints.serverFromString(reactor, text)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{text!r} is not a Twisted endpoint string ({e})") from None


class _QuietSite(Site):
    """A site that writes no access log line: a scraper every 15 s would fill the log."""

    def log(self, request: Request) -> None:
        pass


class MetricsService(StreamServerEndpointService):
    """The ``metrics`` service: the site on its endpoint, failing start-up if it cannot listen."""

    name = "metrics"

    def __init__(self, endpoint: Any, site: Site) -> None:
        super().__init__(endpoint, site)
        self._raiseSynchronously = True
        self.port: Any = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port: Any) -> Any:
        self.port = port
        host = port.getHost()
        _log.info("Health and metrics on http://{host}:{port}/", host=host.host, port=host.port)
        return port


def make_metrics_service(reactor: Any, text: str, services: dict[str, Any]) -> MetricsService:
    """``/health`` and ``/metrics`` for the server whose ``services`` are named, on endpoint ``text``."""
    from socp_tw.ops.metrics import build_registry

    registry, collector = build_registry(services, reactor)
    root = Resource()
    root.putChild(b"metrics", MetricsResource(registry))
    root.putChild(b"health", HealthResource(services, collector.started, reactor))
    site = _QuietSite(root)
    site.noisy = False
    site.displayTracebacks = False
    return MetricsService(parse_endpoint(reactor, text), site)
