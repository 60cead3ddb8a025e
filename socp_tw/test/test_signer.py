"""The ISigner contract, run against FrameSigner and NeverSigner; FrameSigner's signatures."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from socp_tw import crypto, wire
from socp_tw.identity import ServerIdentity
from socp_tw.interfaces import ISigner
from socp_tw.signer import FrameSigner
from socp_tw.test.keys import test_key
from socp_tw.testing import NeverSigner, SynchronousWorkers

SERVER = "0aaaaaaa-0000-4000-8000-000000000001"


class SignerContract:
    """What every ISigner does; ``make()`` returns one for server SERVER."""

    def make(self):
        raise NotImplementedError

    def setUp(self) -> None:
        self.signer = self.make()

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(ISigner, self.signer))
        self.assertEqual(self.signer.server_id, SERVER)

    def test_sign_content_now_is_text(self) -> None:
        self.assertIsInstance(self.signer.sign_content_now(b"preimage"), str)


class FrameSignerTests(SignerContract, SynchronousTestCase):
    def make(self):
        key = test_key(0)
        return FrameSigner(ServerIdentity(SERVER, key, crypto.encode_public_key(key)), SynchronousWorkers())

    def test_sign_content_now_is_a_content_sig_by_the_server_key(self) -> None:
        preimage = crypto.keyshare_preimage([{"member": SERVER, "wrapped_public_channel_key": "AAAA"}], "pub")
        sig = self.signer.sign_content_now(preimage)
        public = test_key(0).public_key()
        self.assertTrue(crypto.verify_content_sig(public, preimage, sig))
        self.assertFalse(crypto.verify_content_sig(public, preimage + b"x", sig))
        self.assertFalse(crypto.verify_content_sig(test_key(1).public_key(), preimage, sig))

    def test_frame_and_frame_now_are_signed_by_the_server_key(self) -> None:
        now = self.signer.frame_now("HEARTBEAT", "*", {"n": 1}, ts=5)
        later = self.successResultOf(self.signer.frame("HEARTBEAT", "*", {"n": 1}, ts=5))
        for data in (now, later):
            envelope = wire.parse_envelope(data)
            self.assertEqual((envelope.from_, envelope.ts), (SERVER, 5))
            self.assertTrue(crypto.verify_payload(test_key(0).public_key(), envelope.payload, envelope.sig))


class NeverSignerTests(SignerContract, SynchronousTestCase):
    def make(self):
        return NeverSigner(SERVER)

    def test_frame_never_fires(self) -> None:
        self.assertNoResult(self.signer.frame("HEARTBEAT", "*", {}))
        self.assertEqual(self.signer.frame_now("HEARTBEAT", "*", {}), b"")
