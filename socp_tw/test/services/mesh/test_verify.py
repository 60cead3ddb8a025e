"""Frames on server links (services/mesh/verify.py): de-duplication, signatures, strikes, prepared work."""

from __future__ import annotations

from twisted.logger import LogLevel

from socp_tw import wire
from socp_tw.test.services.mesh.support import (
    HERE,
    S1,
    S2,
    S3,
    USER,
    DeliverFrames,
    MeshTestCase,
    TwoLinksTestCase,
)
from socp_tw.testing import FakeLink


class VerifyTests(TwoLinksTestCase):
    def test_relayed_gossip_is_verified_with_the_origin_key(self) -> None:
        # From S1, arriving over S2's link: checked with S1's key, not S2's.
        self.receive(self.l2, self.advertise(S1))
        self.assertIsNotNone(self.presence.lookup(USER))
        self.assertEqual(self.l1.sent, [])  # never back to its origin, S1 (it has its own frame)
        other = "2c1a4f6e-0c1f-4c39-9d0a-6f0f1e9b8a77"
        self.receive(self.l2, self.advertise(S1, user=other, signer=S2))
        self.assertIsNone(self.presence.lookup(other))
        self.assertEqual(self.mesh.counters["verify_failed"], 1)

    def test_forged_and_unsigned_frames_are_dropped_and_counted(self) -> None:
        self.receive(self.l1, self.advertise(signer=S2))
        self.receive(self.l1, self.advertise(sig=""))
        self.receive(self.l1, self.advertise(sig="not base64 at all!"))
        self.assertIsNone(self.presence.lookup(USER))
        self.assertEqual(self.l2.sent, [])
        self.assertEqual(self.mesh.counters["verify_failed"], 3)
        warnings = self.lines(LogLevel.warn)
        self.assertTrue(any("signature does not verify" in w for w in warnings))
        self.assertTrue(any("unsigned" in w for w in warnings))
        self.assertIsNone(self.l1.closed)
        # A forged frame does not poison seen_ids: the genuine one still gets through.
        self.receive(self.l1, self.advertise(ts=self.now()))
        self.assertIsNotNone(self.presence.lookup(USER))

    def test_a_peer_that_keeps_forging_is_cut_off(self) -> None:
        self.mesh.forged_window = 30.0  # shorter than the 45 s liveness timeout
        for i in range(self.mesh.forged_limit - 1):
            self.receive(self.l1, self.frame("HEARTBEAT", S1, {"n": i}, signer=S2))
        self.assertIsNone(self.l1.closed)
        self.clock.advance(self.mesh.forged_window + 1)  # old failures expire
        self.receive(self.l1, self.frame("HEARTBEAT", S1, {}, signer=S2))
        self.assertIsNone(self.l1.closed)
        for i in range(self.mesh.forged_limit - 1):
            self.receive(self.l1, self.frame("HEARTBEAT", S1, {"m": i}, signer=S2))
        self.assertEqual(self.l1.closed[0], 1008)
        self.assertEqual(self.mesh.counters["cut_off"], 1)
        self.assertEqual(self.mesh.connected_servers(), [S2])
        self.assertTrue(any("Cut off link" in x for x in self.lines(LogLevel.error)))

    def test_unknown_origin_is_dropped_without_penalty(self) -> None:
        self.receive(self.l1, self.advertise(S3))
        self.assertIsNone(self.presence.lookup(USER))
        self.assertEqual(self.mesh.counters["dropped.unknown_origin"], 1)
        self.assertEqual(self.mesh.counters["verify_failed"], 0)

    def test_own_frames_echoed_back_are_dropped(self) -> None:
        self.receive(self.l1, self.advertise(HERE, server=S1))
        self.assertIsNone(self.presence.lookup(USER))
        self.assertEqual(self.mesh.counters["dropped.own_frame"], 1)

    def test_stale_gossip_is_dropped(self) -> None:
        self.receive(self.l1, self.advertise(ts=self.now() - 601_000))
        self.receive(self.l1, self.advertise(ts=self.now() + 601_000))
        self.assertIsNone(self.presence.lookup(USER))
        self.assertEqual(self.mesh.counters["dropped.stale"], 2)


class PreparedWhileVerifyingTests(DeliverFrames, MeshTestCase):
    """``on_frame(prepare=...)``: a handler may start work (a signature) while the frame's own
    signature is checked; it gets that work only if the frame verifies."""

    class Token:
        def __init__(self, envelope: wire.Envelope) -> None:
            self.envelope, self.used, self.discarded = envelope, False, 0

        def use(self) -> None:
            self.used = True

        def discard(self) -> None:
            if not self.used:  # like PreparedDelivery: a no-op once the work was used
                self.discarded += 1

    def setUp(self) -> None:
        super().setUp()
        self.l1, self.l2 = self.link_in(S1), self.link_in(S2)
        self.handled: list[tuple] = []
        self.tokens: list[PreparedWhileVerifyingTests.Token] = []
        self.events: list[str] = []
        verify = self.mesh._verify

        def recording_verify(*args, **kwargs):
            self.events.append("verify")
            return verify(*args, **kwargs)

        self.patch(self.mesh, "_verify", recording_verify)

        def prepare(envelope: wire.Envelope) -> PreparedWhileVerifyingTests.Token:
            self.events.append("prepare")
            self.tokens.append(self.Token(envelope))
            return self.tokens[-1]

        def handle(envelope: wire.Envelope, link: FakeLink, token=None) -> None:
            self.events.append("handle")
            self.handled.append((envelope, link, token))
            if token is not None:
                token.use()

        self.mesh.on_frame("SERVER_DELIVER", handle, prepare=prepare)

    def test_prepared_before_the_check_and_handed_over_after_it(self) -> None:
        self.receive(self.l1, self.deliver(S1, HERE))
        self.assertEqual(self.events, ["prepare", "verify", "handle"])
        [(envelope, link, token)] = self.handled
        self.assertIs(token, self.tokens[0])
        self.assertEqual((token.used, token.discarded, link), (True, 0, self.l1))
        self.assertEqual(envelope.from_, S1)

    def test_a_forged_frame_never_reaches_the_handler_and_its_token_is_discarded(self) -> None:
        self.receive(self.l1, self.deliver(S1, HERE, signer=S2))
        self.assertEqual(self.events, ["prepare", "verify"])
        self.assertEqual((self.handled, self.tokens[0].discarded), ([], 1))
        self.assertEqual(self.mesh.counters["verify_failed"], 1)
        # That link sent a bad signature lately: its frames are checked before anything starts.
        self.events.clear()
        self.receive(self.l1, self.deliver(S1, HERE, ts=self.now() + 1))
        self.assertEqual(self.events, ["verify", "handle"])
        self.assertIsNone(self.handled[0][2])

    def test_preparing_resumes_once_the_bad_signature_is_out_of_the_window(self) -> None:
        self.receive(self.l1, self.deliver(S1, HERE, signer=S2))
        self.clock.advance(self.mesh.forged_window + 1)
        self.events.clear()
        self.receive(self.l1, self.deliver(S1, HERE, ts=self.now() + 1))
        self.assertEqual(self.events, ["prepare", "verify", "handle"])

    def test_only_frames_addressed_to_us_are_prepared(self) -> None:
        self.receive(self.l1, self.deliver(S1, S2))  # relayed on, not ours
        self.assertEqual((self.events, self.tokens), (["verify"], []))

    def test_a_duplicate_is_not_prepared_again(self) -> None:
        data = self.deliver(S1, HERE)
        self.receive(self.l1, data)
        self.receive(self.l2, data)
        self.assertEqual(self.events, ["prepare", "verify", "handle"])

    def test_a_failing_handler_discards_the_token(self) -> None:
        received = []

        def broken(envelope, link, token=None) -> None:
            received.append(token)
            raise ZeroDivisionError()

        tokens = []
        self.mesh.on_frame(
            "SERVER_DELIVER",
            broken,
            prepare=lambda envelope: tokens.append(self.Token(envelope)) or tokens[-1],
        )
        self.receive(self.l1, self.deliver(S1, HERE))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(received, tokens)  # handed to the handler, which failed before using it
        self.assertEqual(tokens[0].discarded, 1)

    def test_a_failing_prepare_is_contained(self) -> None:
        def broken(envelope):
            raise ZeroDivisionError()

        self.mesh.on_frame("SERVER_DELIVER", lambda envelope, link: self.handled.append(link), prepare=broken)
        self.receive(self.l1, self.deliver(S1, HERE))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertEqual(self.handled, [self.l1])  # handled as a frame with nothing prepared
