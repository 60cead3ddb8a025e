"""Tests for socp_tw.auth.hello: the USER_HELLO proof preimage and nonces."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from socp_tw.auth.errors import KeystoreError
from socp_tw.auth.hello import HELLO_PROOF_CONTEXT, hello_proof_preimage, new_nonce
from socp_tw.test.auth.support import SERVER, USER, unb64


class HelloProofTests(SynchronousTestCase):
    def test_preimage(self) -> None:
        self.assertEqual(HELLO_PROOF_CONTEXT, b"SOCP-HELLO-v1")
        self.assertEqual(
            hello_proof_preimage("bm9uY2U", USER, SERVER),
            b"SOCP-HELLO-v1|bm9uY2U|" + USER.encode() + b"|" + SERVER.encode(),
        )
        self.assertEqual(hello_proof_preimage("n", "\u00e9", "s"), b"SOCP-HELLO-v1|n|\xc3\xa9|s")

    def test_preimage_refuses_ambiguity(self) -> None:
        self.assertRaises(KeystoreError, hello_proof_preimage, "a|b", USER, SERVER)
        self.assertRaises(KeystoreError, hello_proof_preimage, "n", USER, None)

    def test_new_nonce(self) -> None:
        nonces = {new_nonce() for _ in range(200)}
        self.assertEqual(len(nonces), 200)
        for nonce in nonces:
            self.assertEqual(len(nonce), 43)
            self.assertEqual(len(unb64(nonce)), 32)
            self.assertTrue(
                set(nonce) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
            )
