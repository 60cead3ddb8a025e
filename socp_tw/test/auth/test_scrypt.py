"""Tests for socp_tw.auth.scrypt: the parameter bounds and the derivation."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from socp_tw.auth import scrypt
from socp_tw.auth.errors import CorruptKeystore, LoginError
from socp_tw.auth.scrypt import DEFAULT_SCRYPT, TEST_SCRYPT, ScryptParams
from socp_tw.test.auth.support import PASSWORD


class ScryptParamsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        self.assertEqual(DEFAULT_SCRYPT, ScryptParams(n=2**17, r=8, p=1))
        DEFAULT_SCRYPT.check()
        TEST_SCRYPT.check()

    def test_bounds(self) -> None:
        for bad in [
            ScryptParams(n=1000),
            ScryptParams(n=2**9),
            ScryptParams(n=2**21),
            ScryptParams(n=2**30),
            ScryptParams(n=2**17, r=0),
            ScryptParams(n=2**17, r=33),
            ScryptParams(n=2**17, p=0),
            ScryptParams(n=2**17, p=17),
            ScryptParams(n=2**20, r=8),  # 1 GiB
            ScryptParams(n=2**17, r=8, p=16),  # too much work
            ScryptParams(n=True, r=8, p=1),  # type: ignore[arg-type]
            ScryptParams(n=2.0**17, r=8, p=1),  # type: ignore[arg-type]
        ]:
            self.assertRaises(CorruptKeystore, bad.check)
            self.assertRaises(LoginError, bad.check, LoginError)


class DeriveTests(SynchronousTestCase):
    def test_keystore_key_derivation(self) -> None:
        """The AES key is scrypt(NFC(password), salt, n, r, p, 32) (doc example)."""
        self.assertEqual(
            scrypt.derive(PASSWORD.encode(), bytes(range(16)), TEST_SCRYPT).hex(),
            "9a9f74cc441de571a18c4bf8580ad51f86745d14b39065ad24ad92fc05c99515",
        )
