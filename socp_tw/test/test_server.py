"""A real server on 127.0.0.1 port 0, spoken to by a raw WebSocket client."""

from __future__ import annotations

import json

from twisted.internet.defer import inlineCallbacks
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from socp_tw import wire
from socp_tw.test.servers import RunningServer, connect_raw
from socp_tw.testing import verify_server_frame

USER_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


class ServerSkeletonTests(TestCase):
    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.server = RunningServer(self, 0, ["--max-frame-bytes", "4096"])
        self.addCleanup(self.server.stop)

    @inlineCallbacks
    def expect_error(self, client, code: str):
        frame = yield client.messages.get()
        self.assertEqual(frame["type"], "ERROR")
        self.assertEqual(frame["payload"]["code"], code, frame["payload"])
        self.assertEqual(frame["from"], self.server.server_id)
        self.assertIsInstance(frame["ts"], int)
        self.assertTrue(verify_server_frame(frame, self.server.public_key_text))
        return frame

    def test_logs_listening_line(self) -> None:
        from twisted.logger import formatEvent

        lines = [formatEvent(e) for e in self.events]
        expected = f"Server {self.server.server_id} listening on ws://127.0.0.1:{self.server.port}"
        self.assertEqual(lines.count(expected), 1, lines)

    @inlineCallbacks
    def test_garbage_gets_errors_and_link_stays_open(self):
        client = yield connect_raw(self, self.server.url)
        send = client.send
        send(b"this is not json")
        yield self.expect_error(client, "BAD_JSON")
        send(b"\xff\xfe not utf-8")
        yield self.expect_error(client, "BAD_ENCODING")
        send(b"[1, 2, 3]")
        yield self.expect_error(client, "BAD_FRAME")
        send(b'{"type":"USER_HELLO","from":"' + USER_ID.encode() + b'","to":"*","payload":{}}')
        yield self.expect_error(client, "MISSING_FIELD")
        send(json.dumps({"type": "X", "from": "nope", "to": "*", "ts": 1, "payload": {}}).encode())
        yield self.expect_error(client, "BAD_UUID")
        send(json.dumps({"type": "X", "from": USER_ID, "to": "*", "ts": "now", "payload": {}}).encode())
        yield self.expect_error(client, "BAD_TS")
        send(b"\x00\x01", binary=True)
        yield self.expect_error(client, "BAD_FRAME")
        send(wire.encode_frame("NO_SUCH_TYPE", USER_ID, "*", wire.now_ms(), {}, ""))
        frame = yield self.expect_error(client, "UNKNOWN_TYPE")
        self.assertEqual(frame["payload"]["msg_ref"], "NO_SUCH_TYPE")
        self.assertFalse(client.closed.called)
        self.assertEqual(self.server.hub.counters["rejected.BAD_JSON"], 1)

    @inlineCallbacks
    def test_oversize_frame_closes_with_1009(self):
        client = yield connect_raw(self, self.server.url)
        client.send(b'{"pad":"' + b"x" * 5000 + b'"}')
        code, reason = yield client.closed
        self.assertEqual(code, 1009)
        self.assertTrue(reason)
