"""The hub's dispatch and error policy, with fake links and synchronous signing."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from socp_tw import crypto, wire
from socp_tw.identity import ServerIdentity
from socp_tw.services.hub import Hub
from socp_tw.signer import FrameSigner
from socp_tw.test.keys import test_key
from socp_tw.testing import FakeLink, RecordingHandler, SynchronousWorkers, verify_server_frame

SERVER_ID = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
USER_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def make_hub() -> tuple[Hub, FrameSigner]:
    key = test_key(0)
    identity = ServerIdentity(SERVER_ID, key, crypto.encode_public_key(key))
    signer = FrameSigner(identity, SynchronousWorkers(), now_ms=lambda: 1700000000000)
    return Hub(signer), signer


def envelope(type: str = "HEARTBEAT", payload: dict | None = None) -> wire.Envelope:
    return wire.parse_envelope(wire.encode_frame(type, USER_ID, "*", 1, payload or {}, ""))


class HubTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.hub, self.signer = make_hub()
        self.link = FakeLink()
        self.hub.link_opened(self.link)

    def test_unknown_type_error_is_signed(self) -> None:
        self.hub.frame_received(self.link, envelope("NO_SUCH_TYPE"))
        [frame] = self.link.frames()
        self.assertEqual(frame["type"], "ERROR")
        self.assertEqual(frame["from"], SERVER_ID)
        self.assertEqual(frame["to"], "*")
        self.assertEqual(frame["payload"]["code"], "UNKNOWN_TYPE")
        self.assertEqual(frame["payload"]["msg_ref"], "NO_SUCH_TYPE")
        self.assertTrue(verify_server_frame(frame, self.signer.public_key_text))
        self.assertIsNone(self.link.closed)
        self.assertEqual(self.hub.counters["unknown_type"], 1)

    def test_rejected_frame_gets_precise_code(self) -> None:
        self.hub.frame_rejected(self.link, wire.BadTimestamp("ts must be an integer", "ts"))
        [frame] = self.link.frames()
        self.assertEqual(frame["payload"]["code"], "BAD_TS")
        self.assertEqual(self.hub.counters["rejected.BAD_TS"], 1)

    def test_server_link_errors_are_dropped_not_answered(self) -> None:
        link = FakeLink("fake-2", role="server", identity=SERVER_ID)
        self.hub.link_opened(link)
        self.hub.frame_rejected(link, wire.NotJSON("nope"))
        self.assertEqual(link.sent, [])
        self.assertEqual(self.hub.counters["rejected.BAD_JSON"], 1)

    def test_claim_and_bind(self) -> None:
        handler = RecordingHandler()
        self.hub.claim(["USER_HELLO"], handler)
        hello = envelope("USER_HELLO")
        self.hub.frame_received(self.link, hello)
        self.assertEqual(handler.received, [(self.link, hello)])
        # Not bound yet: other types are unknown.
        self.hub.frame_received(self.link, envelope("MSG_DIRECT"))
        self.assertEqual(self.link.frames()[-1]["payload"]["code"], "UNKNOWN_TYPE")
        self.hub.bind(self.link, handler)
        direct = envelope("MSG_DIRECT")
        self.hub.frame_received(self.link, direct)
        self.assertEqual(handler.received[-1], (self.link, direct))
        self.hub.link_closed(self.link, "bye")
        self.assertEqual(handler.closed, [self.link])
        self.hub.link_closed(self.link, "twice")
        self.assertEqual(handler.closed, [self.link])

    def test_error_to_identified_link(self) -> None:
        link = FakeLink("fake-3", role="user", identity=USER_ID)
        self.hub.link_opened(link)
        self.hub.send_error(link, "USER_NOT_FOUND", "who?")
        self.assertEqual(link.frames()[0]["to"], USER_ID)

    def test_stop_closes_links(self) -> None:
        self.hub.startService()
        self.hub.stopService()
        self.assertEqual(self.link.closed, (1001, "server shutting down"))
