"""Tests for socp_tw.auth.sealing: the privkey_store blob."""

from __future__ import annotations

import json
import unicodedata

from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from socp_tw.auth.errors import CorruptKeystore, KeystoreError, WrongPassword
from socp_tw.auth.scrypt import TEST_SCRYPT, ScryptParams
from socp_tw.auth.sealing import KEYSTORE_PREFIX, open_private_key, seal_private_key
from socp_tw.test.auth.support import (
    PASSWORD,
    b64,
    record,
    record_body,
    rsa_key,
    same_key,
    seal_raw,
    sealed_blob,
    small_rsa_key,
    unb64,
)


class SealOpenTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        self.assertTrue(same_key(open_private_key(sealed_blob(), PASSWORD), rsa_key()))

    def test_round_trip_default_params(self) -> None:
        """The real parameters (128 MiB scrypt) work with the installed cryptography."""
        blob = seal_private_key(rsa_key(), PASSWORD)
        self.assertEqual(record_body(blob, KEYSTORE_PREFIX)["n"], 2**17)
        self.assertTrue(same_key(open_private_key(blob, PASSWORD), rsa_key()))

    def test_password_is_nfc_normalised(self) -> None:
        composed = "caf\u00e9 \u00c5ngstr\u00f6m"
        decomposed = unicodedata.normalize("NFD", composed)
        self.assertNotEqual(composed, decomposed)
        blob = seal_private_key(rsa_key(), composed, params=TEST_SCRYPT)
        self.assertTrue(same_key(open_private_key(blob, decomposed), rsa_key()))

    def test_blob_format(self) -> None:
        blob = sealed_blob()
        self.assertTrue(blob.isascii())
        self.assertTrue(blob.startswith("socp-keystore-v1."))
        self.assertEqual(json.loads(json.dumps(blob)), blob)
        self.assertNotIn("=", blob)
        body = record_body(blob, KEYSTORE_PREFIX)
        self.assertEqual(set(body), {"v", "kdf", "n", "r", "p", "salt", "aead", "nonce", "ct"})
        self.assertEqual((body["v"], body["kdf"], body["aead"]), (1, "scrypt", "AES-256-GCM"))
        self.assertEqual((body["n"], body["r"], body["p"]), (2**10, 8, 1))
        self.assertEqual(len(unb64(body["salt"])), 16)
        self.assertEqual(len(unb64(body["nonce"])), 12)
        # The body is itself canonical JSON.
        self.assertEqual(
            unb64(blob[len(KEYSTORE_PREFIX) :]),
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode(),
        )

    def test_fresh_salt_and_nonce(self) -> None:
        other = record_body(seal_private_key(rsa_key(), PASSWORD, params=TEST_SCRYPT), KEYSTORE_PREFIX)
        body = record_body(sealed_blob(), KEYSTORE_PREFIX)
        self.assertNotEqual(other["salt"], body["salt"])
        self.assertNotEqual(other["nonce"], body["nonce"])

    def test_no_secret_in_blob(self) -> None:
        blob = sealed_blob()
        body = record_body(blob, KEYSTORE_PREFIX)
        raw = unb64(blob[len(KEYSTORE_PREFIX) :]) + unb64(body["ct"])
        self.assertNotIn(PASSWORD, blob)
        self.assertNotIn(PASSWORD.encode(), raw)
        pem = rsa_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        der = rsa_key().private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for line in pem.splitlines()[1:-1]:
            self.assertNotIn(line.decode(), blob)
        self.assertNotIn(der[40:80], raw)

    def test_wrong_password(self) -> None:
        for wrong in ["correct horse battery stapl", "Correct horse battery staple", "x"]:
            e = self.assertRaises(WrongPassword, open_private_key, sealed_blob(), wrong)
            self.assertEqual(str(e), "wrong password or corrupted key store")

    def test_empty_password(self) -> None:
        self.assertRaises(WrongPassword, open_private_key, sealed_blob(), "")
        self.assertRaises(KeystoreError, seal_private_key, rsa_key(), "", params=TEST_SCRYPT)

    def test_seal_refuses_bad_key_and_params(self) -> None:
        small = small_rsa_key()
        self.assertRaises(KeystoreError, seal_private_key, small, PASSWORD, params=TEST_SCRYPT)
        self.assertRaises(KeystoreError, seal_private_key, "key", PASSWORD, params=TEST_SCRYPT)
        self.assertRaises(KeystoreError, seal_private_key, rsa_key(), PASSWORD, params=ScryptParams(n=2**21))

    def test_tampered_fields(self) -> None:
        """Every change to a sealed field fails authentication (the AAD binds the header)."""
        body = record_body(sealed_blob(), KEYSTORE_PREFIX)
        ct = unb64(body["ct"])

        def flip(data: bytes, i: int) -> bytes:
            return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]

        variants = [{**body, "ct": b64(flip(ct, i))} for i in (0, len(ct) // 2, len(ct) - 17, len(ct) - 1)]
        variants += [
            {**body, "salt": b64(flip(unb64(body["salt"]), 3))},
            {**body, "nonce": b64(flip(unb64(body["nonce"]), 11))},
            {**body, "n": 2**11},  # parameter downgrade/upgrade
            {**body, "r": 4},
            {**body, "p": 2},
        ]
        for variant in variants:
            self.assertRaises(WrongPassword, open_private_key, record(variant), PASSWORD)

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(st.data())
    def test_any_character_change(self, data: st.DataObject) -> None:
        """A random edit anywhere raises WrongPassword or CorruptKeystore, never anything else."""
        blob = sealed_blob()
        i = data.draw(st.integers(0, len(blob) - 1))
        c = data.draw(st.characters(codec="utf-8").filter(lambda c: c != blob[i]))
        mutated = blob[:i] + c + blob[i + 1 :]
        with self.assertRaises((WrongPassword, CorruptKeystore)):
            open_private_key(mutated, PASSWORD)

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(st.data())
    def test_truncation(self, data: st.DataObject) -> None:
        blob = sealed_blob()
        cut = data.draw(st.integers(0, len(blob) - 1))
        self.assertRaises(CorruptKeystore, open_private_key, blob[:cut], PASSWORD)

    def test_corrupt(self) -> None:
        blob = sealed_blob()
        body = record_body(blob, KEYSTORE_PREFIX)
        rest = blob[len(KEYSTORE_PREFIX) :]
        cases = [
            "",
            blob[:-1],  # truncated: length 1 mod 4 or broken JSON
            blob[:100],
            blob + "\u00e9",
            "socp-keystore-v2." + rest,
            "socp-keystore-v1" + rest,
            rest,
            KEYSTORE_PREFIX + "!!!!",
            KEYSTORE_PREFIX + b64(b"not json"),
            KEYSTORE_PREFIX + b64(b"\xff\xfe"),
            record([1, 2, 3]),
            record({**body, "v": 2}),
            record({**body, "v": "1"}),
            record({**body, "v": True}),
            record({**body, "kdf": "argon2id"}),
            record({**body, "aead": "ChaCha20-Poly1305"}),
            record({**body, "n": 1000}),
            record({**body, "n": 2**21}),
            record({**body, "n": 2**40}),
            record({**body, "n": 1024.0}),
            record({**body, "r": 2**20}),
            record({**body, "p": 2**20}),
            record({**body, "salt": b64(b"short")}),
            record({**body, "salt": 7}),
            record({**body, "nonce": b64(b"x" * 16)}),
            record({**body, "ct": b64(b"x" * 16)}),
            record({**body, "ct": "a"}),
            record({**body, "extra": 1}),
            record({k: v for k, v in body.items() if k != "nonce"}),
            KEYSTORE_PREFIX + "A" * 40000,
        ]
        for case in cases:
            self.assertRaises(CorruptKeystore, open_private_key, case, PASSWORD)
        for not_str in (None, b"socp-keystore-v1.", 7):
            self.assertRaises(CorruptKeystore, open_private_key, not_str, PASSWORD)

    def test_padding_and_std_alphabet_tolerated(self) -> None:
        rest = sealed_blob()[len(KEYSTORE_PREFIX) :]
        padded = KEYSTORE_PREFIX + rest + "=" * (-len(rest) % 4)
        std = KEYSTORE_PREFIX + rest.replace("-", "+").replace("_", "/")
        for blob in (padded, std):
            self.assertTrue(same_key(open_private_key(blob, PASSWORD), rsa_key()))

    def test_payload_not_a_good_key(self) -> None:
        small = small_rsa_key()
        der = small.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for payload in (der, b"garbage"):
            self.assertRaises(CorruptKeystore, open_private_key, seal_raw(payload, PASSWORD), PASSWORD)
        # The hand-made helper does produce openable blobs.
        good = rsa_key().private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.assertTrue(same_key(open_private_key(seal_raw(good, PASSWORD), PASSWORD), rsa_key()))
