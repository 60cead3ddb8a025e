"""What the auth tests share: one key, one sealed blob, one verifier, raw b64u helpers.

The helpers encode by hand (not with the code under test) so the tests can build
and tamper with records independently of it.
"""

from __future__ import annotations

import base64
import json
from functools import cache

from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from socp_tw.auth import scrypt
from socp_tw.auth.login import SrpClient, SrpServer
from socp_tw.auth.scrypt import TEST_SCRYPT
from socp_tw.auth.sealing import KEYSTORE_PREFIX, seal_private_key
from socp_tw.auth.srp import RFC5054_4096
from socp_tw.auth.verifier import make_verifier

PASSWORD = "correct horse battery staple"
USER = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
SERVER = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
N = RFC5054_4096.prime


@cache
def rsa_key() -> RSAPrivateKey:
    """One RSA-4096 key for the whole module (generated on first use)."""
    try:
        from socp_tw.test.keys import test_key  # type: ignore[import-not-found]
    except ImportError:
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    return test_key(0)


@cache
def small_rsa_key() -> RSAPrivateKey:
    """An RSA-1024 key: the wrong size on purpose."""
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)


@cache
def sealed_blob() -> str:
    """The rsa_key() sealed under PASSWORD with TEST_SCRYPT."""
    return seal_private_key(rsa_key(), PASSWORD, params=TEST_SCRYPT)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def record_body(text: str, prefix: str) -> dict:
    return json.loads(unb64(text[len(prefix) :]))


def record(obj: object, prefix: str = KEYSTORE_PREFIX) -> str:
    return prefix + b64(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode())


def same_key(a: RSAPrivateKey, b: RSAPrivateKey) -> bool:
    return a.private_numbers() == b.private_numbers()


def seal_raw(plaintext: bytes, password: str) -> str:
    """Seal arbitrary bytes the way seal_private_key does (bypassing its key check)."""
    salt, nonce = b"s" * 16, b"n" * 12
    header = {
        "v": 1,
        "kdf": "scrypt",
        "n": TEST_SCRYPT.n,
        "r": TEST_SCRYPT.r,
        "p": TEST_SCRYPT.p,
        "salt": b64(salt),
        "aead": "AES-256-GCM",
        "nonce": b64(nonce),
    }
    aad = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    key = scrypt.derive(password.encode(), salt, TEST_SCRYPT)
    ct = AESGCM(key).encrypt(nonce, plaintext, aad)
    return record({**header, "ct": b64(ct)})


def make_test_verifier(user: str = USER, password: str = PASSWORD) -> str:
    return make_verifier(user, password, params=TEST_SCRYPT)


@cache
def cached_verifier() -> str:
    return make_test_verifier()


def login(client_password: str, verifier: str | None = None, user: str = USER):
    """Run start/challenge/process; return (client, server, M1)."""
    server = SrpServer(verifier or cached_verifier())
    client = SrpClient(user, client_password)
    challenge = server.challenge(client.start())
    return client, server, client.process_challenge(challenge)
