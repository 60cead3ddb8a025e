"""The public channel with other SOCP servers (docs/INTEROP.md row 6)."""

from __future__ import annotations

from twisted.logger import LogLevel, globalLogPublisher

from socp_tw import crypto, wire
from socp_tw.test.keys import test_key
from socp_tw.test.services.public.sim import BOB, A, B, PublicTestBase, link_id, user_key
from socp_tw.testing import FakeLink


class SpecUpdatedTests(PublicTestBase):
    def test_spec_shaped_updated_is_ignored_quietly_and_counted(self) -> None:
        _, b = self.mesh(A, B)
        self.net.join_user(b, BOB)
        self.net.pump()
        key_before = b.public.key
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        wrapped = crypto.oaep_encrypt(user_key(BOB).public_key(), b"k" * 32)
        payload = {"version": 7, "wraps": [{"member_id": BOB, "wrapped_key": wrapped}]}
        sig = crypto.sign_payload(test_key(1), payload)
        handler = b.peers.handlers["PUBLIC_CHANNEL_UPDATED"]
        link = FakeLink(link_id(A, B), role="server", identity=A)
        for ts in (1, 2, 3):
            handler(
                wire.Envelope("PUBLIC_CHANNEL_UPDATED", A, "*", self.net.now_ms() + ts, payload, sig), link
            )
        self.assertEqual(b.public.counters["ignored.unsigned_update"], 3)
        self.assertEqual(b.public.counters["dropped.PUBLIC_CHANNEL_UPDATED"], 0)
        self.assertIs(b.public.key, key_before)
        self.assertEqual(self.net.queue, [])  # not passed on
        warnings = [e for e in events if e.get("log_level") in (LogLevel.warn, LogLevel.error)]
        self.assertEqual(warnings, [])
