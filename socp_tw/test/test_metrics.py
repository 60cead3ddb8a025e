"""``--metrics``: ``/health`` and ``/metrics`` over HTTP from a real server on 127.0.0.1."""

from __future__ import annotations

import json
import shutil
import subprocess

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.python import usage
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase
from twisted.web.client import Agent, readBody

from socp_tw import wire
from socp_tw.tap import Options
from socp_tw.test.servers import RunningServer, connect_raw

USER_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample of a /metrics page, by (name, sorted labels), through prometheus_client's parser."""
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


class MetricsOptionTests(SynchronousTestCase):
    def test_off_by_default(self) -> None:
        config = Options()
        config.parseOptions(["--data-dir", self.mktemp()])
        self.assertIsNone(config["metrics"])

    def test_bad_endpoint(self) -> None:
        for text in ("nonsense:1", "tcp:notaport", "9100"):
            config = Options()
            self.assertRaises(
                usage.UsageError, config.parseOptions, ["--data-dir", self.mktemp(), "--metrics", text]
            )


class HealthAndMetricsTests(TestCase):
    def setUp(self) -> None:
        self.server = RunningServer(self, 0, ["--metrics", "tcp:0:interface=127.0.0.1"])
        self.addCleanup(self.server.stop)
        port = self.server.service.getServiceNamed("metrics").port.getHost().port
        self.base = f"http://127.0.0.1:{port}"
        self.agent = Agent(reactor)

    @inlineCallbacks
    def get(self, path: str):
        response = yield self.agent.request(b"GET", f"{self.base}{path}".encode())
        body = yield readBody(response)
        return response, body.decode()

    @inlineCallbacks
    def test_health_ok(self):
        response, body = yield self.get("/health")
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"])
        health = json.loads(body)
        self.assertEqual(set(health), {"status", "server_id", "uptime_s", "links", "users_local"})
        self.assertEqual(health["status"], "ok")
        self.assertEqual(health["server_id"], self.server.server_id)
        self.assertEqual((health["links"], health["users_local"]), (0, 0))

    @inlineCallbacks
    def test_health_503_when_the_database_does_not_answer(self):
        self.server.service.getServiceNamed("store").stopService()
        response, body = yield self.get("/health")
        self.assertEqual(response.code, 503)
        health = json.loads(body)
        self.assertEqual(health["status"], "unavailable")
        self.assertIn("database", health["reason"])

    @inlineCallbacks
    def test_health_503_when_the_database_hangs(self):
        from twisted.internet.defer import Deferred

        from socp_tw.ops import http

        self.patch(http, "DB_TIMEOUT", 0.2)
        self.patch(self.server.service.getServiceNamed("store"), "get_user", lambda _user: Deferred())
        response, body = yield self.get("/health")
        self.assertEqual(response.code, 503)
        self.assertEqual(json.loads(body)["reason"], "database: no answer within 0.2 s")

    @inlineCallbacks
    def test_health_503_when_not_listening(self):
        yield self.server.service.getServiceNamed("listener").stopService()
        response, body = yield self.get("/health")
        self.assertEqual(response.code, 503)
        self.assertEqual(json.loads(body)["reason"], "not listening")

    @inlineCallbacks
    def test_metrics_change_with_traffic(self):
        response, before_text = yield self.get("/metrics")
        self.assertEqual(response.code, 200)
        self.assertIn(b"text/plain", response.headers.getRawHeaders(b"content-type")[0])
        before = samples(before_text)
        self.assertEqual(before[("socp_server_info", (("server_id", self.server.server_id),))], 1)
        self.assertEqual(before[("socp_connections", (("kind", "pending"),))], 0)
        self.assertGreater(before[("socp_process_resident_memory_bytes", ())], 0)
        for name in (
            "socp_users_local",
            "socp_users_online",
            "socp_linked_servers",
            "socp_signing_queue_depth",
            "socp_held_messages",
            "socp_held_bytes",
        ):
            self.assertEqual(before[(name, ())], 0, name)

        client = yield connect_raw(self, self.server.url)
        client.send(b"this is not json")
        yield client.messages.get()
        client.send(wire.encode_frame("NO_SUCH_TYPE", USER_ID, "*", wire.now_ms(), {}, ""))
        yield client.messages.get()

        _, after_text = yield self.get("/metrics")
        after = samples(after_text)
        self.assertEqual(after[("socp_connections", (("kind", "pending"),))], 1)
        self.assertEqual(after[("socp_connections_opened_total", ())], 1)
        self.assertEqual(after[("socp_errors_sent_total", (("code", "BAD_JSON"),))], 1)
        self.assertEqual(after[("socp_errors_sent_total", (("code", "UNKNOWN_TYPE"),))], 1)
        self.assertEqual(
            after[("socp_frames_received_total", (("kind", "pending"), ("type", "NO_SUCH_TYPE")))], 1
        )
        self.assertEqual(
            after[("socp_refusals_total", (("reason", "malformed.BAD_JSON"), ("side", "user")))], 1
        )
        self.assertGreaterEqual(after[("socp_signatures_total", (("kind", "frame"),))], 2)  # the two ERRORs
        self.assertGreaterEqual(after[("socp_signing_seconds_count", ())], 2)
        self.assertGreater(after[("socp_uptime_seconds", ())], before[("socp_uptime_seconds", ())])

    @inlineCallbacks
    def test_promtool_accepts_the_page(self):
        promtool = shutil.which("promtool")
        if promtool is None:
            raise SkipTest(
                "promtool is not installed (Debian: apt install prometheus); format not cross-checked"
            )
        _, text = yield self.get("/metrics")
        result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    @inlineCallbacks
    def test_unknown_path(self):
        response, _ = yield self.get("/nothing")
        self.assertEqual(response.code, 404)


class DeliveryLatencyTests(SynchronousTestCase):
    """``socp_dm_confirm_seconds``: hand-off to another server until its ACK, on a real router."""

    def test_confirmed_dm_is_timed(self) -> None:
        from prometheus_client import CollectorRegistry, generate_latest
        from twisted.internet.task import Clock

        from socp_tw.ops.metrics import Instruments
        from socp_tw.test.services.test_delivery import OriginSideTests
        from socp_tw.test.services.test_router import OTHER

        case = OriginSideTests("test_confirmed_dm_reports_nothing")  # its router, fakes and clock
        case.setUp()
        clock = case.clock
        self.assertIsInstance(clock, Clock)
        registry = CollectorRegistry()
        Instruments(registry).wrap_deliveries(case.router.deliveries, clock)
        case.peers.acking.add(OTHER)
        case.send()
        clock.advance(0.15)
        case.ack(["not-pending"])  # unknown refs are not timed
        case.ack([case.ref])
        case.ack([case.ref])  # a second ACK of the same DM is not timed twice
        found = samples(generate_latest(registry).decode())
        self.assertEqual(found[("socp_dm_confirm_seconds_count", ())], 1)
        self.assertAlmostEqual(found[("socp_dm_confirm_seconds_sum", ())], 0.15, places=6)
        self.assertEqual(found[("socp_dm_confirm_seconds_bucket", (("le", "0.2"),))], 1)
        self.assertEqual(found[("socp_dm_confirm_seconds_bucket", (("le", "0.1"),))], 0)
