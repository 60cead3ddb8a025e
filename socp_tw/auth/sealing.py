"""``privkey_store``: the user's RSA-4096 key sealed under a password.

Blob: ``"socp-keystore-v1." + b64u(canonical(header + {"ct"}))``; AES-256-GCM with
key = scrypt(NFC(password), salt, n, r, p, 32), AAD = canonical(header), where header
is every field but ``ct`` (docs/PROTOCOL-EXTENSIONS.md §7.1).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from socp_tw.auth import scrypt
from socp_tw.auth.errors import CorruptKeystore, KeystoreError, WrongPassword
from socp_tw.auth.fields import b64u_field, get_str, load_record, password_bytes
from socp_tw.auth.scrypt import DEFAULT_SCRYPT, MIN_SALT_BYTES, ScryptParams
from socp_tw.wire import b64u_encode, canonical

__all__ = ["KEYSTORE_PREFIX", "KeystoreHeader", "open_private_key", "parse_keystore", "seal_private_key"]

KEYSTORE_PREFIX = "socp-keystore-v1."
_KEYSTORE_FIELDS = frozenset({"v", "kdf", "n", "r", "p", "salt", "aead", "nonce", "ct"})
_KEYSTORE_MAX_LEN = 32 * 1024  # a sealed RSA-4096 PKCS#8 is ~3.4 kB of blob
_NONCE_BYTES = 12
_TAG_BYTES = 16


def _check_rsa_4096(key: object, exc: type[KeystoreError]) -> RSAPrivateKey:
    if not isinstance(key, RSAPrivateKey):
        raise exc("key is not an RSA private key")
    if key.key_size != 4096 or key.public_key().public_numbers().e != 65537:
        raise exc("key is not RSA-4096 with e=65537")
    return key


def seal_private_key(key: RSAPrivateKey, password: str, *, params: ScryptParams = DEFAULT_SCRYPT) -> str:
    """Encrypt ``key`` under ``password``; return the ``privkey_store`` blob.

    Raises :class:`KeystoreError` on a key that is not RSA-4096/e=65537, an empty
    password or out-of-bounds ``params``.
    """
    _check_rsa_4096(key, KeystoreError)
    pw = password_bytes(password, KeystoreError)
    params.check(KeystoreError)
    salt = secrets.token_bytes(MIN_SALT_BYTES)
    nonce = secrets.token_bytes(_NONCE_BYTES)
    header = {
        "v": 1,
        "kdf": "scrypt",
        "n": params.n,
        "r": params.r,
        "p": params.p,
        "salt": b64u_encode(salt),
        "aead": "AES-256-GCM",
        "nonce": b64u_encode(nonce),
    }
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ct = AESGCM(scrypt.derive(pw, salt, params)).encrypt(nonce, der, canonical(header))
    return KEYSTORE_PREFIX + b64u_encode(canonical({**header, "ct": b64u_encode(ct)}))


@dataclass(frozen=True)
class KeystoreHeader:
    """The public, parsed part of a ``privkey_store`` blob."""

    params: ScryptParams
    salt: bytes
    nonce: bytes
    ct: bytes
    aad: bytes


def parse_keystore(blob: str) -> KeystoreHeader:
    """Validate a blob's shape and parameters without decrypting it.

    What a server checks on ``USER_REGISTER``.  Raises :class:`CorruptKeystore`.
    """
    exc = CorruptKeystore
    obj = load_record(blob, KEYSTORE_PREFIX, "key store", _KEYSTORE_MAX_LEN, _KEYSTORE_FIELDS)
    if get_str(obj, "kdf", exc) != "scrypt" or get_str(obj, "aead", exc) != "AES-256-GCM":
        raise exc("key store: unknown kdf or aead")
    params = scrypt.read_params(obj, exc)
    salt = scrypt.read_salt(obj, "key store", exc)
    nonce = b64u_field(obj["nonce"], "nonce", exc)
    if len(nonce) != _NONCE_BYTES:
        raise exc("key store: bad nonce length")
    ct = b64u_field(obj["ct"], "ct", exc)
    if len(ct) <= _TAG_BYTES:
        raise exc("key store: ciphertext too short")
    header = {k: v for k, v in obj.items() if k != "ct"}
    return KeystoreHeader(params, salt, nonce, ct, canonical(header))


def open_private_key(blob: str, password: str) -> RSAPrivateKey:
    """Decrypt a ``privkey_store`` blob.

    Raises :class:`WrongPassword` if authentication fails (a wrong password and a
    tampered blob are indistinguishable by design) and :class:`CorruptKeystore` if
    the blob is malformed, has unacceptable parameters or holds no RSA-4096 key.
    """
    parsed = parse_keystore(blob)
    pw = password_bytes(password, WrongPassword)
    aes_key = scrypt.derive(pw, parsed.salt, parsed.params)
    try:
        der = AESGCM(aes_key).decrypt(parsed.nonce, parsed.ct, parsed.aad)
    except InvalidTag:
        raise WrongPassword("wrong password or corrupted key store") from None
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError):
        raise CorruptKeystore("key store: payload is not a PKCS#8 key") from None
    return _check_rsa_4096(key, CorruptKeystore)
