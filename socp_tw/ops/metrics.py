"""``--metrics``: Prometheus metrics read from the counters the services already keep.

Nothing on a hot path changes: a :class:`ServerCollector` reads, at scrape time, the
``counters`` of the hub, the mesh, the user side, the router and its delivery tracker, the
file relay and the public channel, and the gauges of presence, the hub's links and the
signing pool.  Two counts the services do not keep are added by wrapping one method on the
instance, only when ``--metrics`` is given: frames received (by type, on ``Hub.frame_received``)
and signatures (on ``FrameSigner.frame_now`` / ``sign_content_now``, with their latency).

Names follow the Prometheus conventions: ``socp_`` prefix, ``_total`` counters, base units
(seconds, bytes).  The list is in docs/OPERATIONS.md.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

#: Buckets (seconds) of one RSA-4096 PSS signature on a worker thread.
SIGNING_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
#: Buckets (seconds) from a DM handed to another server to that server's ACK (batched ~0.1 s).
DM_CONFIRM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _prefixed(counters: Any, prefix: str) -> Iterator[tuple[str, int]]:
    """(rest, value) of each ``prefix + rest`` counter."""
    for name, value in list(dict(counters).items()):
        if name.startswith(prefix):
            yield name[len(prefix) :], value


class Instruments:
    """The two counts no service keeps, gathered by wrapping instance methods (see the module doc)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.frames_in: Counter[tuple[str, str]] = Counter()  # (type, role) -> count
        self.signatures: Counter[str] = Counter()  # "frame" / "content" -> count (worker threads)
        self.signing_seconds = Histogram(
            "socp_signing_seconds",
            "Time to make one RSA-PSS signature on the signing pool",
            buckets=SIGNING_BUCKETS,
            registry=registry,
        )
        self.dm_confirm_seconds = Histogram(
            "socp_dm_confirm_seconds",
            "From a DM handed to another server until that server confirmed its delivery",
            buckets=DM_CONFIRM_BUCKETS,
            registry=registry,
        )

    def wrap_hub(self, hub: Any) -> None:
        """Count every frame the hub is handed, by type and by the link's role."""
        inner = hub.frame_received
        frames_in = self.frames_in

        def frame_received(link: Any, envelope: Any) -> None:
            frames_in[(envelope.type, link.role)] += 1
            inner(link, envelope)

        hub.frame_received = frame_received

    def wrap_mesh(self, mesh: Any) -> None:
        """Count frames on our outgoing server links (they reach the mesh without the hub)."""
        inner = mesh.frame_received
        frames_in = self.frames_in

        def frame_received(link: Any, envelope: Any) -> None:
            if getattr(link, "outgoing", False):
                frames_in[(envelope.type, link.role)] += 1
            inner(link, envelope)

        mesh.frame_received = frame_received

    def wrap_deliveries(self, tracker: Any, clock: Any) -> None:
        """Time each DM from its hand-off to another server until that server confirms it.

        Reads the tracker's pending table around ``ack_received``: a ref pending before and
        gone after was confirmed by this ACK.
        """
        inner = tracker.ack_received
        histogram = self.dm_confirm_seconds

        def ack_received(envelope: Any) -> None:
            refs = envelope.payload.get("delivered")
            pending = tracker._pending
            before = {}
            if isinstance(refs, list):
                for ref in refs:
                    entry = pending.get(ref) if isinstance(ref, str) else None
                    if entry is not None:
                        before[ref] = entry.sent_at
            inner(envelope)
            now = clock.seconds()
            for ref, sent_at in before.items():
                if ref not in pending:
                    histogram.observe(max(0.0, now - sent_at))

        tracker.ack_received = ack_received

    def wrap_signer(self, signer: Any) -> None:
        """Count and time each signature (these run on the worker threads)."""
        for method, kind in (("frame_now", "frame"), ("sign_content_now", "content")):
            setattr(signer, method, self._timed(getattr(signer, method), kind))

    def _timed(self, inner: Any, kind: str) -> Any:
        signatures, histogram = self.signatures, self.signing_seconds

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                histogram.observe(time.perf_counter() - start)
                signatures[kind] += 1  # a lost increment under a race is a rounding, not a fault

        return timed


class ServerCollector(Collector):
    """Every ``socp_*`` metric but the signing histogram, read from the services at scrape time."""

    def __init__(self, services: dict[str, Any], instruments: Instruments, clock: Any) -> None:
        self._s = services
        self._instruments = instruments
        self._clock = clock
        self.started = clock.seconds()

    def _counters(self, name: str) -> dict:
        service = self._s.get(name)
        return dict(getattr(service, "counters", None) or {})

    def collect(self) -> Iterable[Metric]:
        s = self._s
        hub, mesh, presence = s["hub"], s["mesh"], s["presence"]
        info = GaugeMetricFamily("socp_server_info", "This server (value 1)", labels=["server_id"])
        info.add_metric([s["server_id"]], 1)
        yield info
        yield GaugeMetricFamily("socp_start_time_seconds", "Unix time the server started", value=self.started)
        uptime = self._clock.seconds() - self.started
        yield GaugeMetricFamily("socp_uptime_seconds", "Seconds since the server started", value=uptime)

        connections = GaugeMetricFamily("socp_connections", "Open connections by kind", labels=["kind"])
        kinds = Counter(link.role for link in list(hub.links.values()))
        for kind in ("user", "server", "pending"):
            connections.add_metric([kind], kinds.get(kind, 0))
        yield connections
        hub_counters = self._counters("hub")
        yield CounterMetricFamily(
            "socp_connections_opened", "Connections accepted", value=hub_counters.get("links_opened", 0)
        )
        closed = CounterMetricFamily(
            "socp_connections_closed_by_limit", "Connections closed by a limit", labels=["reason"]
        )
        for reason, value in _prefixed(hub_counters, "closed."):
            closed.add_metric([reason], value)
        yield closed

        local, total = presence.counts()
        yield GaugeMetricFamily("socp_users_local", "Users logged in here", value=local)
        yield GaugeMetricFamily(
            "socp_users_online", "Users online network-wide (here and on peers)", value=total
        )
        yield GaugeMetricFamily(
            "socp_linked_servers", "Servers with a live link", value=len(mesh.connected_servers())
        )
        yield GaugeMetricFamily(
            "socp_known_servers", "Servers whose key is pinned", value=len(mesh.known_servers())
        )

        frames_in = CounterMetricFamily(
            "socp_frames_received", "Frames received, by type and sender kind", labels=["type", "kind"]
        )
        for (frame_type, role), value in list(self._instruments.frames_in.items()):
            frames_in.add_metric([frame_type, role], value)
        yield frames_in
        yield from self._outgoing()
        yield from self._refusals(hub_counters)
        yield from self._signing()
        yield from self._deliveries()

    def _outgoing(self) -> Iterator[Metric]:
        errors = CounterMetricFamily("socp_errors_sent", "ERROR frames sent, by code", labels=["code"])
        by_code: Counter[str] = Counter()
        for name in ("hub", "users"):
            by_code.update(dict(_prefixed(self._counters(name), "errors_sent.")))
        for code, value in sorted(by_code.items()):
            errors.add_metric([code], value)
        yield errors
        relayed = CounterMetricFamily(
            "socp_frames_relayed", "Frames relayed to users (presence adverts), by type", labels=["type"]
        )
        for frame_type, value in _prefixed(self._counters("users"), "relayed."):
            relayed.add_metric([frame_type], value)
        yield relayed
        routed = CounterMetricFamily("socp_messages_routed", "User messages routed, by kind", labels=["kind"])
        for kind, value in _prefixed(self._counters("users"), "routed."):
            routed.add_metric([kind], value)
        yield routed

    def _refusals(self, hub_counters: dict) -> Iterator[Metric]:
        refusals = CounterMetricFamily(
            "socp_refusals", "Frames, links and logins refused, by reason", labels=["side", "reason"]
        )
        for reason, value in _prefixed(hub_counters, "rejected."):
            refusals.add_metric(["user", f"malformed.{reason}"], value)
        refusals.add_metric(["user", "server_full"], hub_counters.get("refused.full", 0))
        users = self._counters("users")
        for name in ("auth_failed", "login_failed", "login_rate_limited", "user_key_refused", "name_in_use"):
            refusals.add_metric(["user", name], users.get(name, 0))
        mesh = self._counters("mesh")
        for reason, value in _prefixed(mesh, "refused."):
            refusals.add_metric(["server", reason], value)
        for reason, value in _prefixed(mesh, "rejected."):
            refusals.add_metric(["server", f"malformed.{reason}"], value)
        for name in ("verify_failed", "key_refused", "user_key_refused", "dropped.not_hosting_server"):
            refusals.add_metric(["server", name], mesh.get(name, 0))
        yield refusals
        yield CounterMetricFamily(
            "socp_rate_limited_frames",
            "User frames over their rate",
            value=hub_counters.get("rate_limited", 0),
        )

    def _signing(self) -> Iterator[Metric]:
        signatures = CounterMetricFamily(
            "socp_signatures", "RSA-PSS signatures made, by kind", labels=["kind"]
        )
        for kind in ("frame", "content"):
            signatures.add_metric([kind], self._instruments.signatures.get(kind, 0))
        yield signatures
        queue = getattr(self._s["workers"], "_jobs", None)
        depth = queue.qsize() if queue is not None else 0
        yield GaugeMetricFamily("socp_signing_queue_depth", "Jobs waiting for the signing pool", value=depth)

    def _deliveries(self) -> Iterator[Metric]:
        router = self._s["router"]
        tracker = getattr(router, "deliveries", None)
        outcomes = CounterMetricFamily(
            "socp_dm_deliveries", "Direct messages sent to another server, by outcome", labels=["outcome"]
        )
        for name, value in sorted(dict(getattr(tracker, "counters", {}) or {}).items()):
            outcomes.add_metric([name], value)
        yield outcomes
        pending = len(tracker) if tracker is not None else 0
        yield GaugeMetricFamily(
            "socp_dm_pending", "Direct messages awaiting the other server's ack", value=pending
        )
        routed = CounterMetricFamily("socp_router_events", "Router events, by name", labels=["event"])
        for name, value in sorted(self._counters("router").items()):
            routed.add_metric([name], value)
        yield routed
        holding = self._s.get("holding")
        if holding is not None:
            yield GaugeMetricFamily(
                "socp_held_messages", "DMs held for offline or unreachable users", value=holding.total
            )
            yield GaugeMetricFamily(
                "socp_held_bytes",
                "Bytes of the DMs held for offline or unreachable users",
                value=holding.total_bytes,
            )
            events = CounterMetricFamily(
                "socp_held_events",
                "Store-and-forward events (held, delivered, expired, refused)",
                labels=["event"],
            )
            for name, value in sorted(self._counters("holding").items()):
                events.add_metric([name], value)
            yield events


def build_registry(services: dict[str, Any], clock: Any) -> tuple[CollectorRegistry, ServerCollector]:
    """A registry with the server's metrics and the process's (``socp_process_resident_memory_bytes``...).

    Wraps the hub and the signer (see :class:`Instruments`): call it once per server.
    """
    registry = CollectorRegistry()
    instruments = Instruments(registry)
    instruments.wrap_hub(services["hub"])
    instruments.wrap_mesh(services["mesh"])
    instruments.wrap_signer(services["signer"])
    tracker = getattr(services["router"], "deliveries", None)
    if tracker is not None:
        instruments.wrap_deliveries(tracker, clock)
    collector = ServerCollector(services, instruments, clock)
    registry.register(collector)
    ProcessCollector(namespace="socp", registry=registry)
    return registry, collector
