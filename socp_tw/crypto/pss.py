"""RSASSA-PSS-SHA256 (PROTOCOL.md §1, §2): signing with salt 32, verifying with any salt; transport ``sig``.

Verifiers return ``False`` instead of raising: a bad signature is an answer, not a crash.
"""

import hashlib
from collections.abc import Iterator
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from socp_tw.crypto.keys import _public
from socp_tw.wire import BadBase64, b64u_decode, b64u_encode, canonical, canonical_unicode

__all__ = ["PSS_SALT_LENGTH", "pss_sign", "pss_verify", "sign_payload", "verify_payload"]

PSS_SALT_LENGTH = 32

_PSS_SEND = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LENGTH)
_PSS_ACCEPT = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
_SHA256 = hashes.SHA256()


def pss_sign(key: RSAPrivateKey, data: bytes) -> str:
    """b64u RSASSA-PSS signature: SHA-256, MGF1-SHA-256, salt 32 (what every peer accepts)."""
    return b64u_encode(key.sign(data, _PSS_SEND, _SHA256))


def _decode_sig(signature: object) -> bytes | None:
    try:
        return b64u_decode(signature)  # type: ignore[arg-type]
    except BadBase64:
        return None


def _verify_raw(key: RSAPublicKey, data: bytes, raw_sig: bytes) -> bool:
    if len(raw_sig) != (key.key_size + 7) // 8:  # cheap early reject
        return False
    try:
        key.verify(raw_sig, data, _PSS_ACCEPT, _SHA256)
    except InvalidSignature:
        return False
    return True


def _verify_first(key: RSAPublicKey | RSAPrivateKey, signature: object, preimages: Iterator[bytes]) -> bool:
    """True if ``signature`` matches a preimage, tried as-is first, then SHA-256-hashed.

    Decodes the signature once; preimages are built lazily, stopping at the first match.
    """
    raw_sig = _decode_sig(signature)
    if raw_sig is None:
        return False
    try:
        public = _public(key)
        tried = []
        for data in preimages:
            if _verify_raw(public, data, raw_sig):
                return True
            tried.append(data)
        return any(_verify_raw(public, hashlib.sha256(data).digest(), raw_sig) for data in tried)
    except Exception:  # wrong key type, unencodable text...: not a valid signature
        return False


def pss_verify(key: RSAPublicKey, data: bytes, signature: str) -> bool:
    """Check a b64u PSS-SHA256 signature with any salt length; never raises."""
    raw_sig = _decode_sig(signature)
    if raw_sig is None:
        return False
    try:
        return _verify_raw(_public(key), bytes(data), raw_sig)
    except Exception:
        return False


def sign_payload(key: RSAPrivateKey, payload: dict[str, Any]) -> str:
    """Transport ``sig`` of a frame: PSS over canonical(payload) (§1)."""
    return pss_sign(key, canonical(payload))


def _payload_forms(payload: dict[str, Any], ascii_form: bytes | None) -> Iterator[bytes]:
    if ascii_form is None:
        ascii_form = canonical(payload)
    yield ascii_form
    unicode_form = canonical_unicode(payload)
    if unicode_form != ascii_form:
        yield unicode_form


def verify_payload(
    key: RSAPublicKey, payload: dict[str, Any], sig: str, canonical_form: bytes | None = None
) -> bool:
    """Check a transport ``sig``: canonical(payload), then its ``ensure_ascii=False`` form.

    ``canonical_form`` is ``canonical(payload)`` when the caller already has it.
    """
    raw_sig = _decode_sig(sig)
    if raw_sig is None:
        return False
    try:
        public = _public(key)
        return any(_verify_raw(public, data, raw_sig) for data in _payload_forms(payload, canonical_form))
    except Exception:  # unserialisable payload, wrong key type
        return False
