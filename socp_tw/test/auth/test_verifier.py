"""Tests for socp_tw.auth.verifier: the pake_password record."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from socp_tw.auth import srp
from socp_tw.auth.errors import CorruptKeystore, KeystoreError, LoginError
from socp_tw.auth.login import SrpServer
from socp_tw.auth.scrypt import TEST_SCRYPT, ScryptParams
from socp_tw.auth.sealing import KEYSTORE_PREFIX
from socp_tw.auth.srp import RFC5054_4096
from socp_tw.auth.verifier import VERIFIER_PREFIX, VerifierRecord, make_verifier, parse_verifier
from socp_tw.test.auth.support import (
    PASSWORD,
    USER,
    N,
    b64,
    cached_verifier,
    make_test_verifier,
    record,
    record_body,
    unb64,
)


class VerifierTests(SynchronousTestCase):
    def test_format(self) -> None:
        text = cached_verifier()
        self.assertTrue(text.isascii())
        self.assertTrue(text.startswith("socp-srp6a-v1."))
        self.assertNotIn(PASSWORD, text)
        body = record_body(text, VERIFIER_PREFIX)
        self.assertEqual(
            {k: body[k] for k in ("v", "group", "hash", "kdf", "n", "r", "p")},
            {"v": 1, "group": "rfc5054-4096", "hash": "SHA-256", "kdf": "scrypt", "n": 1024, "r": 8, "p": 1},
        )
        self.assertEqual(set(body), {"v", "group", "hash", "kdf", "n", "r", "p", "salt", "verifier"})
        salt = unb64(body["salt"])
        self.assertEqual(len(salt), 16)
        v_bytes = unb64(body["verifier"])
        self.assertEqual(len(v_bytes), 512)
        x = srp.x(USER, PASSWORD.encode(), salt, TEST_SCRYPT)
        self.assertEqual(int.from_bytes(v_bytes, "big"), pow(5, x, N))

    def test_parse(self) -> None:
        rec = parse_verifier(cached_verifier())
        self.assertIsInstance(rec, VerifierRecord)
        self.assertEqual(rec.params, TEST_SCRYPT)
        self.assertEqual(len(rec.salt), 16)
        self.assertTrue(1 <= rec.verifier < N)
        self.assertIs(rec.group, RFC5054_4096)

    def test_fresh_salt(self) -> None:
        self.assertNotEqual(parse_verifier(make_test_verifier()).salt, parse_verifier(cached_verifier()).salt)

    def test_make_refuses(self) -> None:
        self.assertRaises(KeystoreError, make_verifier, USER, "", params=TEST_SCRYPT)
        self.assertRaises(KeystoreError, make_verifier, "", PASSWORD, params=TEST_SCRYPT)
        self.assertRaises(KeystoreError, make_verifier, USER, PASSWORD, params=ScryptParams(n=3))

    def test_parse_errors(self) -> None:
        text = cached_verifier()
        body = record_body(text, VERIFIER_PREFIX)
        rest = text[len(VERIFIER_PREFIX) :]

        def rebuild(**changes: object) -> str:
            return record({**body, **changes}, VERIFIER_PREFIX)

        cases = [
            "",
            rest,
            "socp-srp6a-v2." + rest,
            KEYSTORE_PREFIX + rest,
            text[:-3],
            text + "\u00e9",
            VERIFIER_PREFIX + "***",
            record([], VERIFIER_PREFIX),
            rebuild(v=2),
            rebuild(group="rfc5054-2048"),
            rebuild(hash="SHA-1"),
            rebuild(kdf="pbkdf2"),
            rebuild(n=1000),
            rebuild(n=2**22),
            rebuild(r=0),
            rebuild(p=-1),
            rebuild(salt=b64(b"x" * 8)),
            rebuild(salt=b64(b"x" * 65)),
            rebuild(verifier=b64(b"")),
            rebuild(verifier=b64(b"\x00" * 512)),
            rebuild(verifier=b64(N.to_bytes(512, "big"))),
            rebuild(verifier=b64(b"\x01" * 513)),
            rebuild(verifier=17),
            rebuild(extra="x"),
            record({k: v for k, v in body.items() if k != "salt"}, VERIFIER_PREFIX),
            VERIFIER_PREFIX + "A" * 5000,
        ]
        for case in cases:
            self.assertRaises(CorruptKeystore, parse_verifier, case)
        self.assertRaises(CorruptKeystore, parse_verifier, None)
        self.assertRaises(CorruptKeystore, SrpServer, rebuild(v=2))
        self.assertRaises(LoginError, SrpServer, 42)
