"""Tests for socp_tw.auth.login: both halves of an SRP-6a login, and the fake challenge."""

from __future__ import annotations

import hashlib
import hmac
import json
import unicodedata

from twisted.trial.unittest import SynchronousTestCase

from socp_tw.auth.errors import LoginError
from socp_tw.auth.login import SrpClient, SrpServer, fake_challenge
from socp_tw.auth.verifier import parse_verifier
from socp_tw.test.auth.support import (
    PASSWORD,
    SERVER,
    USER,
    N,
    b64,
    cached_verifier,
    login,
    make_test_verifier,
    unb64,
)


class SrpLoginTests(SynchronousTestCase):
    def test_success(self) -> None:
        client, server, m1 = login(PASSWORD)
        m2 = server.verify(m1)
        self.assertTrue(client.verify_server(m2))
        self.assertIsNotNone(client.session_key)
        self.assertEqual(client.session_key, server.session_key)
        self.assertEqual(len(client.session_key), 32)

    def test_record_accepted(self) -> None:
        server = SrpServer(parse_verifier(cached_verifier()))
        client = SrpClient(USER, PASSWORD)
        m1 = client.process_challenge(server.challenge(client.start()))
        self.assertTrue(client.verify_server(server.verify(m1)))

    def test_challenge_shape(self) -> None:
        server = SrpServer(cached_verifier())
        client = SrpClient(USER, PASSWORD)
        a = client.start()
        self.assertEqual(a, client.start())
        self.assertEqual(len(unb64(a)), 512)
        challenge = server.challenge(a)
        self.assertEqual(set(challenge), {"salt", "kdf", "n", "r", "p", "B"})
        self.assertEqual(
            (challenge["kdf"], challenge["n"], challenge["r"], challenge["p"]), ("scrypt", 1024, 8, 1)
        )
        self.assertEqual(unb64(challenge["salt"]), parse_verifier(cached_verifier()).salt)
        self.assertEqual(len(unb64(challenge["B"])), 512)
        self.assertEqual(json.loads(json.dumps(challenge)), challenge)

    def test_nfc_password(self) -> None:
        composed = "p\u00e4ssw\u00f6rd"
        verifier = make_test_verifier(password=composed)
        _, server, m1 = login(unicodedata.normalize("NFD", composed), verifier)
        server.verify(m1)

    def test_wrong_password(self) -> None:
        _, server, m1 = login("not the password")
        e = self.assertRaises(LoginError, server.verify, m1)
        self.assertEqual(str(e), "bad password proof")
        self.assertIsNone(server.session_key)

    def test_user_id_bound(self) -> None:
        _, server, m1 = login(PASSWORD, user="11111111-2222-4333-8444-555555555555")
        self.assertRaises(LoginError, server.verify, m1)

    def test_one_shot(self) -> None:
        _, server, m1 = login(PASSWORD)
        server.verify(m1)
        self.assertRaises(LoginError, server.verify, m1)
        _, server, m1 = login("wrong")
        self.assertRaises(LoginError, server.verify, m1)
        self.assertRaises(LoginError, server.verify, m1)

    def test_one_challenge_per_server(self) -> None:
        server = SrpServer(cached_verifier())
        a = SrpClient(USER, PASSWORD).start()
        server.challenge(a)
        self.assertRaises(LoginError, server.challenge, a)

    def test_verify_before_challenge(self) -> None:
        server = SrpServer(cached_verifier())
        self.assertRaises(LoginError, server.verify, b64(b"x" * 32))

    def test_client_one_shot(self) -> None:
        server = SrpServer(cached_verifier())
        client = SrpClient(USER, PASSWORD)
        challenge = server.challenge(client.start())
        client.process_challenge(challenge)
        self.assertRaises(LoginError, client.process_challenge, challenge)

    def test_bad_a(self) -> None:
        for a in [
            b64(b"\x00"),
            b64(b"\x00" * 512),
            b64(N.to_bytes(512, "big")),
            b64((N + 1).to_bytes(512, "big")),
            b64((2 * N).to_bytes(513, "big")),
            b64(b""),
            "",
            "!!!",
            "a",
            "ab cd",
            None,
            12,
        ]:
            server = SrpServer(cached_verifier())
            self.assertRaises(LoginError, server.challenge, a)

    def test_bad_m1(self) -> None:
        for m1 in ["", "!!!", None, b64(b"\x00" * 32), "a"]:
            server = SrpServer(cached_verifier())
            server.challenge(SrpClient(USER, PASSWORD).start())
            self.assertRaises(LoginError, server.verify, m1)

    def test_bad_challenge(self) -> None:
        server = SrpServer(cached_verifier())
        good = server.challenge(SrpClient(USER, PASSWORD).start())
        bad_b = [b64(b"\x00"), b64(N.to_bytes(512, "big")), b64(b"\x00" * 512), "***", "", None]
        cases = [{**good, "B": b} for b in bad_b]
        cases += [
            {**good, "kdf": "argon2"},
            {**good, "n": 2**21},
            {**good, "n": 1000},
            {**good, "n": "1024"},
            {**good, "r": 1024},
            {**good, "p": True},
            {**good, "salt": b64(b"x" * 4)},
            {**good, "salt": "%%"},
            {k: v for k, v in good.items() if k != "B"},
            {k: v for k, v in good.items() if k != "salt"},
            {k: v for k, v in good.items() if k != "n"},
        ]
        for challenge in cases:
            client = SrpClient(USER, PASSWORD)
            client.start()
            self.assertRaises(LoginError, client.process_challenge, challenge)
        self.assertRaises(LoginError, SrpClient(USER, PASSWORD).process_challenge, ["B"])

    def test_bad_m2(self) -> None:
        client, server, m1 = login(PASSWORD)
        m2 = server.verify(m1)
        self.assertFalse(client.verify_server(b64(b"\x00" * 32)))
        self.assertFalse(client.verify_server("***"))
        self.assertFalse(client.verify_server(m1))
        self.assertTrue(client.verify_server(m2))
        self.assertFalse(SrpClient(USER, PASSWORD).verify_server(m2))

    def test_client_refuses(self) -> None:
        self.assertRaises(LoginError, SrpClient, USER, "")
        self.assertRaises(LoginError, SrpClient, "", PASSWORD)

    def test_fresh_ephemerals(self) -> None:
        self.assertNotEqual(SrpClient(USER, PASSWORD).start(), SrpClient(USER, PASSWORD).start())
        a = SrpClient(USER, PASSWORD).start()
        b1 = SrpServer(cached_verifier()).challenge(a)["B"]
        b2 = SrpServer(cached_verifier()).challenge(a)["B"]
        self.assertNotEqual(b1, b2)

    def test_messages_carry_no_secret(self) -> None:
        _, server, m1 = login("hunter2-secret")
        e = self.assertRaises(LoginError, server.verify, m1)
        self.assertNotIn("hunter2", str(e))
        self.assertNotIn(m1, str(e))


class FakeChallengeTests(SynchronousTestCase):
    def test_deterministic_salt(self) -> None:
        secret = b"k" * 32
        first, second = fake_challenge(USER, secret), fake_challenge(USER, secret)
        want = hmac.new(secret, USER.encode(), hashlib.sha256).digest()[:16]
        self.assertEqual(unb64(first["salt"]), want)
        self.assertEqual(first["salt"], second["salt"])
        self.assertNotEqual(first["B"], second["B"])
        self.assertNotEqual(fake_challenge(SERVER, secret)["salt"], first["salt"])
        self.assertNotEqual(fake_challenge(USER, b"other")["salt"], first["salt"])

    def test_looks_real(self) -> None:
        fake = fake_challenge(USER, b"k" * 32)
        real = SrpServer(cached_verifier()).challenge(SrpClient(USER, PASSWORD).start())
        self.assertEqual(set(fake), set(real))
        self.assertEqual((fake["kdf"], fake["n"], fake["r"], fake["p"]), ("scrypt", 2**17, 8, 1))
        self.assertEqual(len(unb64(fake["B"])), 512)
        self.assertTrue(0 < int.from_bytes(unb64(fake["B"]), "big") < N)
