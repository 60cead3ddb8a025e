"""Tests for socp_tw.keystore: sealed private keys, SRP-6a login, hello proofs."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import unicodedata
from functools import cache

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import keystore as ks
from socp_tw.keystore import (
    DEFAULT_SCRYPT,
    HELLO_PROOF_CONTEXT,
    KEYSTORE_PREFIX,
    RFC5054_4096,
    TEST_SCRYPT,
    VERIFIER_PREFIX,
    CorruptKeystore,
    KeystoreError,
    LoginError,
    ScryptParams,
    SrpClient,
    SrpGroup,
    SrpServer,
    VerifierRecord,
    WrongPassword,
    fake_challenge,
    hello_proof_preimage,
    make_verifier,
    new_nonce,
    open_private_key,
    parse_verifier,
    seal_private_key,
)

PASSWORD = "correct horse battery staple"
USER = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
SERVER = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
N = RFC5054_4096.prime


@cache
def _key() -> RSAPrivateKey:
    """One RSA-4096 key for the whole module (generated on first use)."""
    try:
        from socp_tw.test.keys import test_key  # type: ignore[import-not-found]
    except ImportError:
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    return test_key(0)


@cache
def _small_key() -> RSAPrivateKey:
    """An RSA-1024 key: the wrong size on purpose."""
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


@cache
def _blob() -> str:
    return seal_private_key(_key(), PASSWORD, params=TEST_SCRYPT)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _body(text: str, prefix: str) -> dict:
    return json.loads(_unb64(text[len(prefix) :]))


def _rebuild(obj: object, prefix: str = KEYSTORE_PREFIX) -> str:
    return prefix + _b64(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def _same_key(a: RSAPrivateKey, b: RSAPrivateKey) -> bool:
    return a.private_numbers() == b.private_numbers()


def _seal_raw(plaintext: bytes, password: str) -> str:
    """Seal arbitrary bytes the way seal_private_key does (bypassing its key check)."""
    salt, nonce = b"s" * 16, b"n" * 12
    header = {
        "v": 1,
        "kdf": "scrypt",
        "n": TEST_SCRYPT.n,
        "r": TEST_SCRYPT.r,
        "p": TEST_SCRYPT.p,
        "salt": _b64(salt),
        "aead": "AES-256-GCM",
        "nonce": _b64(nonce),
    }
    aad = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    key = ks._scrypt(password.encode(), salt, TEST_SCRYPT)
    ct = AESGCM(key).encrypt(nonce, plaintext, aad)
    return _rebuild({**header, "ct": _b64(ct)})


class ErrorHierarchyTests(SynchronousTestCase):
    def test_hierarchy(self) -> None:
        for cls in (WrongPassword, CorruptKeystore, LoginError):
            self.assertTrue(issubclass(cls, KeystoreError))
        self.assertTrue(issubclass(KeystoreError, ValueError))


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


class SealOpenTests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        self.assertTrue(_same_key(open_private_key(_blob(), PASSWORD), _key()))

    def test_round_trip_default_params(self) -> None:
        """The real parameters (128 MiB scrypt) work with the installed cryptography."""
        blob = seal_private_key(_key(), PASSWORD)
        self.assertEqual(_body(blob, KEYSTORE_PREFIX)["n"], 2**17)
        self.assertTrue(_same_key(open_private_key(blob, PASSWORD), _key()))

    def test_password_is_nfc_normalised(self) -> None:
        composed = "caf\u00e9 \u00c5ngstr\u00f6m"
        decomposed = unicodedata.normalize("NFD", composed)
        self.assertNotEqual(composed, decomposed)
        blob = seal_private_key(_key(), composed, params=TEST_SCRYPT)
        self.assertTrue(_same_key(open_private_key(blob, decomposed), _key()))

    def test_blob_format(self) -> None:
        blob = _blob()
        self.assertTrue(blob.isascii())
        self.assertTrue(blob.startswith("socp-keystore-v1."))
        self.assertEqual(json.loads(json.dumps(blob)), blob)
        self.assertNotIn("=", blob)
        body = _body(blob, KEYSTORE_PREFIX)
        self.assertEqual(set(body), {"v", "kdf", "n", "r", "p", "salt", "aead", "nonce", "ct"})
        self.assertEqual((body["v"], body["kdf"], body["aead"]), (1, "scrypt", "AES-256-GCM"))
        self.assertEqual((body["n"], body["r"], body["p"]), (2**10, 8, 1))
        self.assertEqual(len(_unb64(body["salt"])), 16)
        self.assertEqual(len(_unb64(body["nonce"])), 12)
        # The body is itself canonical JSON.
        self.assertEqual(
            _unb64(blob[len(KEYSTORE_PREFIX) :]),
            json.dumps(body, sort_keys=True, separators=(",", ":")).encode(),
        )

    def test_fresh_salt_and_nonce(self) -> None:
        other = _body(seal_private_key(_key(), PASSWORD, params=TEST_SCRYPT), KEYSTORE_PREFIX)
        body = _body(_blob(), KEYSTORE_PREFIX)
        self.assertNotEqual(other["salt"], body["salt"])
        self.assertNotEqual(other["nonce"], body["nonce"])

    def test_no_secret_in_blob(self) -> None:
        blob = _blob()
        body = _body(blob, KEYSTORE_PREFIX)
        raw = _unb64(blob[len(KEYSTORE_PREFIX) :]) + _unb64(body["ct"])
        self.assertNotIn(PASSWORD, blob)
        self.assertNotIn(PASSWORD.encode(), raw)
        pem = _key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        der = _key().private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for line in pem.splitlines()[1:-1]:
            self.assertNotIn(line.decode(), blob)
        self.assertNotIn(der[40:80], raw)

    def test_wrong_password(self) -> None:
        for wrong in ["correct horse battery stapl", "Correct horse battery staple", "x"]:
            e = self.assertRaises(WrongPassword, open_private_key, _blob(), wrong)
            self.assertEqual(str(e), "wrong password or corrupted key store")

    def test_empty_password(self) -> None:
        self.assertRaises(WrongPassword, open_private_key, _blob(), "")
        self.assertRaises(KeystoreError, seal_private_key, _key(), "", params=TEST_SCRYPT)

    def test_seal_refuses_bad_key_and_params(self) -> None:
        small = _small_key()
        self.assertRaises(KeystoreError, seal_private_key, small, PASSWORD, params=TEST_SCRYPT)
        self.assertRaises(KeystoreError, seal_private_key, "key", PASSWORD, params=TEST_SCRYPT)
        self.assertRaises(KeystoreError, seal_private_key, _key(), PASSWORD, params=ScryptParams(n=2**21))

    def test_tampered_fields(self) -> None:
        """Every change to a sealed field fails authentication (the AAD binds the header)."""
        body = _body(_blob(), KEYSTORE_PREFIX)
        ct = _unb64(body["ct"])

        def flip(data: bytes, i: int) -> bytes:
            return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]

        variants = [{**body, "ct": _b64(flip(ct, i))} for i in (0, len(ct) // 2, len(ct) - 17, len(ct) - 1)]
        variants += [
            {**body, "salt": _b64(flip(_unb64(body["salt"]), 3))},
            {**body, "nonce": _b64(flip(_unb64(body["nonce"]), 11))},
            {**body, "n": 2**11},  # parameter downgrade/upgrade
            {**body, "r": 4},
            {**body, "p": 2},
        ]
        for variant in variants:
            self.assertRaises(WrongPassword, open_private_key, _rebuild(variant), PASSWORD)

    @settings(max_examples=60, deadline=None, derandomize=True)
    @given(st.data())
    def test_any_character_change(self, data: st.DataObject) -> None:
        """A random edit anywhere raises WrongPassword or CorruptKeystore, never anything else."""
        blob = _blob()
        i = data.draw(st.integers(0, len(blob) - 1))
        c = data.draw(st.characters(codec="utf-8").filter(lambda c: c != blob[i]))
        mutated = blob[:i] + c + blob[i + 1 :]
        with self.assertRaises((WrongPassword, CorruptKeystore)):
            open_private_key(mutated, PASSWORD)

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(st.data())
    def test_truncation(self, data: st.DataObject) -> None:
        blob = _blob()
        cut = data.draw(st.integers(0, len(blob) - 1))
        self.assertRaises(CorruptKeystore, open_private_key, blob[:cut], PASSWORD)

    def test_corrupt(self) -> None:
        blob = _blob()
        body = _body(blob, KEYSTORE_PREFIX)
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
            KEYSTORE_PREFIX + _b64(b"not json"),
            KEYSTORE_PREFIX + _b64(b"\xff\xfe"),
            _rebuild([1, 2, 3]),
            _rebuild({**body, "v": 2}),
            _rebuild({**body, "v": "1"}),
            _rebuild({**body, "v": True}),
            _rebuild({**body, "kdf": "argon2id"}),
            _rebuild({**body, "aead": "ChaCha20-Poly1305"}),
            _rebuild({**body, "n": 1000}),
            _rebuild({**body, "n": 2**21}),
            _rebuild({**body, "n": 2**40}),
            _rebuild({**body, "n": 1024.0}),
            _rebuild({**body, "r": 2**20}),
            _rebuild({**body, "p": 2**20}),
            _rebuild({**body, "salt": _b64(b"short")}),
            _rebuild({**body, "salt": 7}),
            _rebuild({**body, "nonce": _b64(b"x" * 16)}),
            _rebuild({**body, "ct": _b64(b"x" * 16)}),
            _rebuild({**body, "ct": "a"}),
            _rebuild({**body, "extra": 1}),
            _rebuild({k: v for k, v in body.items() if k != "nonce"}),
            KEYSTORE_PREFIX + "A" * 40000,
        ]
        for case in cases:
            self.assertRaises(CorruptKeystore, open_private_key, case, PASSWORD)
        for not_str in (None, b"socp-keystore-v1.", 7):
            self.assertRaises(CorruptKeystore, open_private_key, not_str, PASSWORD)

    def test_padding_and_std_alphabet_tolerated(self) -> None:
        rest = _blob()[len(KEYSTORE_PREFIX) :]
        padded = KEYSTORE_PREFIX + rest + "=" * (-len(rest) % 4)
        std = KEYSTORE_PREFIX + rest.replace("-", "+").replace("_", "/")
        for blob in (padded, std):
            self.assertTrue(_same_key(open_private_key(blob, PASSWORD), _key()))

    def test_payload_not_a_good_key(self) -> None:
        small = _small_key()
        der = small.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        for payload in (der, b"garbage"):
            self.assertRaises(CorruptKeystore, open_private_key, _seal_raw(payload, PASSWORD), PASSWORD)
        # The hand-made helper does produce openable blobs.
        good = _key().private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.assertTrue(_same_key(open_private_key(_seal_raw(good, PASSWORD), PASSWORD), _key()))


# RFC 5054 Appendix A (1024-bit group, g = 2) and Appendix B (SHA-1 test vector).
def _hex(text: str) -> int:
    return int("".join(text.split()), 16)


RFC5054_1024 = SrpGroup(
    name="rfc5054-1024",
    prime=_hex(
        """EEAF0AB9 ADB38DD6 9C33F80A FA8FC5E8 60726187 75FF3C0B 9EA2314C 9C256576
        D674DF74 96EA81D3 383B4813 D692C6E0 E0D5D8E2 50B98BE4 8E495C1D 6089DAD1
        5DC7D7B4 6154D6B6 CE8EF4AD 69B15D49 82559B29 7BCF1885 C529F566 660E57EC
        68EDBC3C 05726CC0 2FD4CBF4 976EAA9A FD5138FE 8376435B 9FC61D2F C0EB06E3"""
    ),
    generator=2,
    hash_name="sha1",
)
RFC_I = b"alice"
RFC_P = b"password123"
RFC_S = bytes.fromhex("BEB25379D1A8581EB5A727673A2441EE")
RFC_K = _hex("7556AA04 5AEF2CDD 07ABAF0F 665C3E81 8913186F")
RFC_X = _hex("94B7555A ABE9127C C58CCF49 93DB6CF8 4D16C124")
RFC_V = _hex(
    """7E273DE8 696FFC4F 4E337D05 B4B375BE B0DDE156 9E8FA00A 9886D812 9BADA1F1
    822223CA 1A605B53 0E379BA4 729FDC59 F105B478 7E5186F5 C671085A 1447B52A
    48CF1970 B4FB6F84 00BBF4CE BFBB1681 52E08AB5 EA53D15C 1AFF87B2 B9DA6E04
    E058AD51 CC72BFC9 033B564E 26480D78 E955A5E2 9E7AB245 DB2BE315 E2099AFB"""
)
RFC_A_PRIV = _hex("60975527 035CF2AD 1989806F 0407210B C81EDC04 E2762A56 AFD529DD DA2D4393")
RFC_B_PRIV = _hex("E487CB59 D31AC550 471E81F0 0F6928E0 1DDA08E9 74A004F4 9E61F5D1 05284D20")
RFC_A = _hex(
    """61D5E490 F6F1B795 47B0704C 436F523D D0E560F0 C64115BB 72557EC4 4352E890
    3211C046 92272D8B 2D1A5358 A2CF1B6E 0BFCF99F 921530EC 8E393561 79EAE45E
    42BA92AE ACED8251 71E1E8B9 AF6D9C03 E1327F44 BE087EF0 6530E69F 66615261
    EEF54073 CA11CF58 58F0EDFD FE15EFEA B349EF5D 76988A36 72FAC47B 0769447B"""
)
RFC_B = _hex(
    """BD0C6151 2C692C0C B6D041FA 01BB152D 4916A1E7 7AF46AE1 05393011 BAF38964
    DC46A067 0DD125B9 5A981652 236F99D9 B681CBF8 7837EC99 6C6DA044 53728610
    D0C6DDB5 8B318885 D7D82C7F 8DEB75CE 7BD4FBAA 37089E6F 9C6059F3 88838E7A
    00030B33 1EB76840 910440B1 B27AAEAE EB4012B7 D7665238 A8E3FB00 4B117B58"""
)
RFC_U = _hex("CE38B959 3487DA98 554ED47D 70A7AE5F 462EF019")
RFC_PREMASTER = _hex(
    """B0DC82BA BCF30674 AE450C02 87745E79 90A3381F 63B387AA F271A10D 233861E3
    59B48220 F7C4693C 9AE12B0A 6F67809F 0876E2D0 13800D6C 41BB59B6 D5979B5C
    00A172B4 A2A5903A 0BDCAF8A 709585EB 2AFAFA8F 3499B200 210DCC1F 10EB3394
    3CD67FC8 8A2F39A4 BE5BEC4E C0A3212D C346D7E4 74B29EDE 8A469FFE CA686E5A"""
)


def _floor_pi_shifted(bits: int) -> int:
    """floor(pi * 2**bits), by Machin's formula in integer arithmetic."""

    def arctan_inv(x: int, one: int) -> int:
        total = term = one // x
        n, sign = 1, -1
        while term:
            term //= x * x
            n += 2
            total += sign * (term // n)
            sign = -sign
        return total

    guard = 64
    one = 1 << (bits + guard)
    return (4 * (4 * arctan_inv(5, one) - arctan_inv(239, one))) >> guard


class SrpMathTests(SynchronousTestCase):
    """The group-and-hash-parameterised core against RFC 5054 Appendix B."""

    def test_rfc5054_vector(self) -> None:
        g = RFC5054_1024
        x = int.from_bytes(hashlib.sha1(RFC_S + hashlib.sha1(RFC_I + b":" + RFC_P).digest()).digest(), "big")
        self.assertEqual(x, RFC_X)
        self.assertEqual(ks._srp_k(g), RFC_K)
        self.assertEqual(ks._srp_verifier(g, x), RFC_V)
        self.assertEqual(ks._srp_client_public(g, RFC_A_PRIV), RFC_A)
        self.assertEqual(ks._srp_server_public(g, RFC_V, RFC_B_PRIV), RFC_B)
        self.assertEqual(ks._srp_u(g, RFC_A, RFC_B), RFC_U)
        self.assertEqual(ks._srp_client_premaster(g, RFC_B, x, RFC_A_PRIV, RFC_U), RFC_PREMASTER)
        self.assertEqual(ks._srp_server_premaster(g, RFC_A, RFC_V, RFC_U, RFC_B_PRIV), RFC_PREMASTER)
        k_session = ks._srp_session_key(g, RFC_PREMASTER)
        self.assertEqual(k_session, hashlib.sha1(RFC_PREMASTER.to_bytes(128, "big")).digest())
        m1 = ks._srp_m1(g, RFC_A, RFC_B, k_session)
        self.assertEqual(
            m1, hashlib.sha1(RFC_A.to_bytes(128, "big") + RFC_B.to_bytes(128, "big") + k_session).digest()
        )
        self.assertEqual(
            ks._srp_m2(g, RFC_A, m1, k_session),
            hashlib.sha1(RFC_A.to_bytes(128, "big") + m1 + k_session).digest(),
        )

    def test_4096_group(self) -> None:
        """The prime is RFC 3526's: 2^4096 - 2^4032 - 1 + 2^64 * (floor(2^3966 pi) + 240904)."""
        expected = 2**4096 - 2**4032 - 1 + 2**64 * (_floor_pi_shifted(3966) + 240904)
        self.assertEqual(RFC5054_4096.prime, expected)
        self.assertEqual(RFC5054_4096.generator, 5)
        self.assertEqual(RFC5054_4096.hash_name, "sha256")
        self.assertEqual(RFC5054_4096.name, "rfc5054-4096")
        self.assertEqual(RFC5054_4096.length, 512)
        self.assertEqual(
            ks._srp_k(RFC5054_4096),
            int.from_bytes(hashlib.sha256(N.to_bytes(512, "big") + (5).to_bytes(512, "big")).digest(), "big"),
        )

    def test_profile_vector(self) -> None:
        """The worked example in docs/PROTOCOL-EXTENSIONS.md (TEST_SCRYPT, fixed a and b)."""
        g = RFC5054_4096
        salt = bytes(range(16))
        x = ks._srp_x(USER, PASSWORD.encode(), salt, TEST_SCRYPT)
        self.assertEqual(x, int("29937a987780782ddd197d05f6016494ca104c79e4d57ed56fbbfbd7328b87c9", 16))
        v = ks._srp_verifier(g, x)
        self.assertEqual(
            hashlib.sha256(ks._pad(g, v)).hexdigest(),
            "f64b9dcb4cfbe892967086229f29e72a95fe438092829ee781ae827aa36b8b1d",
        )
        self.assertEqual(
            ks._srp_k(g), int("3509477ea9fca66eadb7cf7b1bd0eb508f54d3989a9c988006a7d0b338374dd2", 16)
        )
        a = int.from_bytes(bytes(range(32, 64)), "big")
        b = int.from_bytes(bytes(range(64, 96)), "big")
        a_pub, b_pub = ks._srp_client_public(g, a), ks._srp_server_public(g, v, b)
        self.assertEqual(
            hashlib.sha256(ks._pad(g, a_pub)).hexdigest(),
            "929a3ab09376155f81f99ec130ba9691fabeeb86a386d794393f04b32a3ba87c",
        )
        self.assertEqual(
            hashlib.sha256(ks._pad(g, b_pub)).hexdigest(),
            "8605e904e9e40713a2f56efcffd2e4865ec3131e1c62d85752d2a8b4c8c4ab37",
        )
        u = ks._srp_u(g, a_pub, b_pub)
        self.assertEqual(u, int("5a05f60402c0c372a3aaa4abc028cfdd2141ae325639d00679e0a88d7099dbcf", 16))
        s = ks._srp_client_premaster(g, b_pub, x, a, u)
        self.assertEqual(s, ks._srp_server_premaster(g, a_pub, v, u, b))
        k_session = ks._srp_session_key(g, s)
        self.assertEqual(k_session.hex(), "e2610e56195ee083f5f78aa8a016a7daea73cc20c473a279e9151c08f60945d9")
        m1 = ks._srp_m1(g, a_pub, b_pub, k_session)
        self.assertEqual(m1.hex(), "f67ba4f07705a00537cbeb3b8dfd7989af3405c0ad82247e97824983d324e1fb")
        self.assertEqual(
            ks._srp_m2(g, a_pub, m1, k_session).hex(),
            "c4c73d2c63944806fda3e33b68b83dfbaceded7966b43c71d6dcd1aae2479ce3",
        )

    def test_keystore_key_derivation(self) -> None:
        """The AES key is scrypt(NFC(password), salt, n, r, p, 32) (doc example)."""
        self.assertEqual(
            ks._scrypt(PASSWORD.encode(), bytes(range(16)), TEST_SCRYPT).hex(),
            "9a9f74cc441de571a18c4bf8580ad51f86745d14b39065ad24ad92fc05c99515",
        )

    def test_x_derivation(self) -> None:
        """x = SHA256(salt | scrypt(NFC(P), salt | user_id, n, r, p, 32))."""
        salt = b"\x01" * 16
        stretched = hashlib.scrypt(PASSWORD.encode(), salt=salt + USER.encode(), n=2**10, r=8, p=1, dklen=32)
        want = int.from_bytes(hashlib.sha256(salt + stretched).digest(), "big")
        self.assertEqual(ks._srp_x(USER, PASSWORD.encode(), salt, TEST_SCRYPT), want)


def _verifier(user: str = USER, password: str = PASSWORD) -> str:
    return make_verifier(user, password, params=TEST_SCRYPT)


@cache
def _cached_verifier() -> str:
    return _verifier()


def _login(client_password: str, verifier: str | None = None, user: str = USER):
    """Run start/challenge/process; return (client, server, M1)."""
    server = SrpServer(verifier or _cached_verifier())
    client = SrpClient(user, client_password)
    challenge = server.challenge(client.start())
    return client, server, client.process_challenge(challenge)


class VerifierTests(SynchronousTestCase):
    def test_format(self) -> None:
        text = _cached_verifier()
        self.assertTrue(text.isascii())
        self.assertTrue(text.startswith("socp-srp6a-v1."))
        self.assertNotIn(PASSWORD, text)
        body = _body(text, VERIFIER_PREFIX)
        self.assertEqual(
            {k: body[k] for k in ("v", "group", "hash", "kdf", "n", "r", "p")},
            {"v": 1, "group": "rfc5054-4096", "hash": "SHA-256", "kdf": "scrypt", "n": 1024, "r": 8, "p": 1},
        )
        self.assertEqual(set(body), {"v", "group", "hash", "kdf", "n", "r", "p", "salt", "verifier"})
        salt = _unb64(body["salt"])
        self.assertEqual(len(salt), 16)
        v_bytes = _unb64(body["verifier"])
        self.assertEqual(len(v_bytes), 512)
        x = ks._srp_x(USER, PASSWORD.encode(), salt, TEST_SCRYPT)
        self.assertEqual(int.from_bytes(v_bytes, "big"), pow(5, x, N))

    def test_parse(self) -> None:
        rec = parse_verifier(_cached_verifier())
        self.assertIsInstance(rec, VerifierRecord)
        self.assertEqual(rec.params, TEST_SCRYPT)
        self.assertEqual(len(rec.salt), 16)
        self.assertTrue(1 <= rec.verifier < N)
        self.assertIs(rec.group, RFC5054_4096)

    def test_fresh_salt(self) -> None:
        self.assertNotEqual(parse_verifier(_verifier()).salt, parse_verifier(_cached_verifier()).salt)

    def test_make_refuses(self) -> None:
        self.assertRaises(KeystoreError, make_verifier, USER, "", params=TEST_SCRYPT)
        self.assertRaises(KeystoreError, make_verifier, "", PASSWORD, params=TEST_SCRYPT)
        self.assertRaises(KeystoreError, make_verifier, USER, PASSWORD, params=ScryptParams(n=3))

    def test_parse_errors(self) -> None:
        text = _cached_verifier()
        body = _body(text, VERIFIER_PREFIX)
        rest = text[len(VERIFIER_PREFIX) :]

        def rebuild(**changes: object) -> str:
            return _rebuild({**body, **changes}, VERIFIER_PREFIX)

        cases = [
            "",
            rest,
            "socp-srp6a-v2." + rest,
            KEYSTORE_PREFIX + rest,
            text[:-3],
            text + "\u00e9",
            VERIFIER_PREFIX + "***",
            _rebuild([], VERIFIER_PREFIX),
            rebuild(v=2),
            rebuild(group="rfc5054-2048"),
            rebuild(hash="SHA-1"),
            rebuild(kdf="pbkdf2"),
            rebuild(n=1000),
            rebuild(n=2**22),
            rebuild(r=0),
            rebuild(p=-1),
            rebuild(salt=_b64(b"x" * 8)),
            rebuild(salt=_b64(b"x" * 65)),
            rebuild(verifier=_b64(b"")),
            rebuild(verifier=_b64(b"\x00" * 512)),
            rebuild(verifier=_b64(N.to_bytes(512, "big"))),
            rebuild(verifier=_b64(b"\x01" * 513)),
            rebuild(verifier=17),
            rebuild(extra="x"),
            _rebuild({k: v for k, v in body.items() if k != "salt"}, VERIFIER_PREFIX),
            VERIFIER_PREFIX + "A" * 5000,
        ]
        for case in cases:
            self.assertRaises(CorruptKeystore, parse_verifier, case)
        self.assertRaises(CorruptKeystore, parse_verifier, None)
        self.assertRaises(CorruptKeystore, SrpServer, rebuild(v=2))
        self.assertRaises(LoginError, SrpServer, 42)


class SrpLoginTests(SynchronousTestCase):
    def test_success(self) -> None:
        client, server, m1 = _login(PASSWORD)
        m2 = server.verify(m1)
        self.assertTrue(client.verify_server(m2))
        self.assertIsNotNone(client.session_key)
        self.assertEqual(client.session_key, server.session_key)
        self.assertEqual(len(client.session_key), 32)

    def test_record_accepted(self) -> None:
        server = SrpServer(parse_verifier(_cached_verifier()))
        client = SrpClient(USER, PASSWORD)
        m1 = client.process_challenge(server.challenge(client.start()))
        self.assertTrue(client.verify_server(server.verify(m1)))

    def test_challenge_shape(self) -> None:
        server = SrpServer(_cached_verifier())
        client = SrpClient(USER, PASSWORD)
        a = client.start()
        self.assertEqual(a, client.start())
        self.assertEqual(len(_unb64(a)), 512)
        challenge = server.challenge(a)
        self.assertEqual(set(challenge), {"salt", "kdf", "n", "r", "p", "B"})
        self.assertEqual(
            (challenge["kdf"], challenge["n"], challenge["r"], challenge["p"]), ("scrypt", 1024, 8, 1)
        )
        self.assertEqual(_unb64(challenge["salt"]), parse_verifier(_cached_verifier()).salt)
        self.assertEqual(len(_unb64(challenge["B"])), 512)
        self.assertEqual(json.loads(json.dumps(challenge)), challenge)

    def test_nfc_password(self) -> None:
        composed = "p\u00e4ssw\u00f6rd"
        verifier = _verifier(password=composed)
        _, server, m1 = _login(unicodedata.normalize("NFD", composed), verifier)
        server.verify(m1)

    def test_wrong_password(self) -> None:
        _, server, m1 = _login("not the password")
        e = self.assertRaises(LoginError, server.verify, m1)
        self.assertEqual(str(e), "bad password proof")
        self.assertIsNone(server.session_key)

    def test_user_id_bound(self) -> None:
        _, server, m1 = _login(PASSWORD, user="11111111-2222-4333-8444-555555555555")
        self.assertRaises(LoginError, server.verify, m1)

    def test_one_shot(self) -> None:
        _, server, m1 = _login(PASSWORD)
        server.verify(m1)
        self.assertRaises(LoginError, server.verify, m1)
        _, server, m1 = _login("wrong")
        self.assertRaises(LoginError, server.verify, m1)
        self.assertRaises(LoginError, server.verify, m1)

    def test_one_challenge_per_server(self) -> None:
        server = SrpServer(_cached_verifier())
        a = SrpClient(USER, PASSWORD).start()
        server.challenge(a)
        self.assertRaises(LoginError, server.challenge, a)

    def test_verify_before_challenge(self) -> None:
        server = SrpServer(_cached_verifier())
        self.assertRaises(LoginError, server.verify, _b64(b"x" * 32))

    def test_client_one_shot(self) -> None:
        server = SrpServer(_cached_verifier())
        client = SrpClient(USER, PASSWORD)
        challenge = server.challenge(client.start())
        client.process_challenge(challenge)
        self.assertRaises(LoginError, client.process_challenge, challenge)

    def test_bad_a(self) -> None:
        for a in [
            _b64(b"\x00"),
            _b64(b"\x00" * 512),
            _b64(N.to_bytes(512, "big")),
            _b64((N + 1).to_bytes(512, "big")),
            _b64((2 * N).to_bytes(513, "big")),
            _b64(b""),
            "",
            "!!!",
            "a",
            "ab cd",
            None,
            12,
        ]:
            server = SrpServer(_cached_verifier())
            self.assertRaises(LoginError, server.challenge, a)

    def test_bad_m1(self) -> None:
        for m1 in ["", "!!!", None, _b64(b"\x00" * 32), "a"]:
            server = SrpServer(_cached_verifier())
            server.challenge(SrpClient(USER, PASSWORD).start())
            self.assertRaises(LoginError, server.verify, m1)

    def test_bad_challenge(self) -> None:
        server = SrpServer(_cached_verifier())
        good = server.challenge(SrpClient(USER, PASSWORD).start())
        bad_b = [_b64(b"\x00"), _b64(N.to_bytes(512, "big")), _b64(b"\x00" * 512), "***", "", None]
        cases = [{**good, "B": b} for b in bad_b]
        cases += [
            {**good, "kdf": "argon2"},
            {**good, "n": 2**21},
            {**good, "n": 1000},
            {**good, "n": "1024"},
            {**good, "r": 1024},
            {**good, "p": True},
            {**good, "salt": _b64(b"x" * 4)},
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
        client, server, m1 = _login(PASSWORD)
        m2 = server.verify(m1)
        self.assertFalse(client.verify_server(_b64(b"\x00" * 32)))
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
        b1 = SrpServer(_cached_verifier()).challenge(a)["B"]
        b2 = SrpServer(_cached_verifier()).challenge(a)["B"]
        self.assertNotEqual(b1, b2)

    def test_messages_carry_no_secret(self) -> None:
        _, server, m1 = _login("hunter2-secret")
        e = self.assertRaises(LoginError, server.verify, m1)
        self.assertNotIn("hunter2", str(e))
        self.assertNotIn(m1, str(e))


class FakeChallengeTests(SynchronousTestCase):
    def test_deterministic_salt(self) -> None:
        secret = b"k" * 32
        first, second = fake_challenge(USER, secret), fake_challenge(USER, secret)
        want = hmac.new(secret, USER.encode(), hashlib.sha256).digest()[:16]
        self.assertEqual(_unb64(first["salt"]), want)
        self.assertEqual(first["salt"], second["salt"])
        self.assertNotEqual(first["B"], second["B"])
        self.assertNotEqual(fake_challenge(SERVER, secret)["salt"], first["salt"])
        self.assertNotEqual(fake_challenge(USER, b"other")["salt"], first["salt"])

    def test_looks_real(self) -> None:
        fake = fake_challenge(USER, b"k" * 32)
        real = SrpServer(_cached_verifier()).challenge(SrpClient(USER, PASSWORD).start())
        self.assertEqual(set(fake), set(real))
        self.assertEqual((fake["kdf"], fake["n"], fake["r"], fake["p"]), ("scrypt", 2**17, 8, 1))
        self.assertEqual(len(_unb64(fake["B"])), 512)
        self.assertTrue(0 < int.from_bytes(_unb64(fake["B"]), "big") < N)


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
            self.assertEqual(len(_unb64(nonce)), 32)
            self.assertTrue(
                set(nonce) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
            )
