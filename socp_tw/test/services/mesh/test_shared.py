"""One signature shared by frames to several peers (services/mesh/shared.py)."""

from __future__ import annotations

import json

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from socp_tw.services.mesh.shared import SharedSignature
from socp_tw.test.services.mesh.support import HERE, S1, S2


class _PendingSigner:
    """A signer whose signatures complete when the test says so."""

    server_id = HERE

    def __init__(self) -> None:
        self.pending: list[Deferred] = []

    def frame(self, type: str, to: str, payload: dict, ts: int | None = None) -> Deferred:
        d: Deferred = Deferred()
        self.pending.append(d)
        return d


class SharedSignatureTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.signer = _PendingSigner()
        self.shared = SharedSignature(self.signer, self.clock, "HEARTBEAT", {}, now_ms=lambda: 5)

    def test_frames_asked_while_signing_share_the_one_signature(self) -> None:
        first, second = self.shared.frame_to(S1, 15), self.shared.frame_to(S2, 15)
        self.assertEqual(len(self.signer.pending), 1)
        got = []
        first.addCallback(got.append)
        second.addCallback(got.append)
        self.signer.pending[0].callback(b'{"type":"HEARTBEAT","sig":"SIG"}')
        frames = [json.loads(f) for f in got]
        self.assertEqual(
            [(f["to"], f["sig"], f["payload"], f["from"]) for f in frames],
            [
                (S1, "SIG", {}, HERE),
                (S2, "SIG", {}, HERE),
            ],
        )
        # Within max_age: bytes at once, no new signature; after it, a new one.
        self.assertIsInstance(self.shared.frame_to(S1, 15), bytes)
        self.clock.advance(15)
        self.assertIsInstance(self.shared.frame_to(S1, 15), Deferred)
        self.assertEqual((len(self.signer.pending), self.shared.signatures), (2, 2))

    def test_a_failed_signature_skips_the_frames_and_is_tried_again(self) -> None:
        waiting = self.shared.frame_to(S1, 15)
        got = []
        waiting.addCallback(got.append)
        self.signer.pending[0].errback(Failure(RuntimeError("pool gone")))
        self.assertEqual(got, [None])  # the link's sender skips a None frame
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.shared.frame_to(S1, 15)
        self.assertEqual(len(self.signer.pending), 2)
