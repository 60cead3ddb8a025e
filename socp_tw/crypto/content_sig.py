"""content_sig (PROTOCOL.md §2): each kind's preimage, signing, and verifying every variant in use."""

from collections.abc import Iterator
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from socp_tw.crypto.pss import _verify_first, pss_sign
from socp_tw.wire import BadBase64, b64u_decode, canonical

__all__ = [
    "dm_preimage",
    "file_chunk_preimage",
    "file_start_preimage",
    "keyshare_preimage",
    "public_preimage",
    "sign_content",
    "verify_content_sig",
    "verify_dm_content_sig",
    "verify_public_content_sig",
]


def _utf8(*parts: object) -> bytes:
    return "".join(str(part) for part in parts).encode("utf-8")


def dm_preimage(ciphertext: str, from_: str, to: str, ts: int) -> bytes:
    """DM content_sig preimage: ``ciphertext + from + to + str(ts)`` (§2)."""
    return _utf8(ciphertext, from_, to, ts)


def public_preimage(ciphertext: str, from_: str, ts: int) -> bytes:
    """Public-channel content_sig preimage: ``ciphertext + from + str(ts)`` (§2)."""
    return _utf8(ciphertext, from_, ts)


def keyshare_preimage(shares: list[Any], creator_pub: str) -> bytes:
    """Key-share content_sig preimage: ``canonical(shares) + creator_pub`` (§2)."""
    return canonical(shares) + creator_pub.encode("utf-8")


def file_start_preimage(
    file_id: str, name: str, size: int, sha256: str, from_: str, to: str, ts: int
) -> bytes:
    """FILE_START content_sig preimage: ``file_id + name + str(size) + sha256 + from + to + str(ts)``."""
    return _utf8(file_id, name, size, sha256, from_, to, ts)


def file_chunk_preimage(ciphertext: str, file_id: str, index: int, from_: str, to: str, ts: int) -> bytes:
    """FILE_CHUNK content_sig preimage: ``ciphertext + file_id + str(index) + from + to + str(ts)``."""
    return _utf8(ciphertext, file_id, index, from_, to, ts)


def sign_content(key: RSAPrivateKey, preimage: bytes) -> str:
    """content_sig over a preimage built by one of the ``*_preimage`` functions."""
    return pss_sign(key, preimage)


def _raw_ciphertext_variant(ciphertext: str, *rest: object) -> Iterator[bytes]:
    try:
        raw = b64u_decode(ciphertext)
    except BadBase64:
        return
    yield raw + _utf8(*rest)


def _dm_variants(ciphertext: str, from_: str, to: str, ts: int) -> Iterator[bytes]:
    yield dm_preimage(ciphertext, from_, to, ts)  # 1. the spec (what we send)
    yield from _raw_ciphertext_variant(ciphertext, from_, to, ts)  # 2.
    yield f"{ciphertext}|{from_}|{to}|{ts}".encode()  # 3.
    yield canonical({"ciphertext": ciphertext, "from": from_, "to": to, "ts": ts})  # 4.


def _public_variants(ciphertext: str, from_: str, ts: int) -> Iterator[bytes]:
    yield public_preimage(ciphertext, from_, ts)
    yield from _raw_ciphertext_variant(ciphertext, from_, ts)
    yield f"{ciphertext}|{from_}|{ts}".encode()
    yield canonical({"ciphertext": ciphertext, "from": from_, "ts": ts})


def verify_dm_content_sig(key: RSAPublicKey, ciphertext: str, from_: str, to: str, ts: int, sig: str) -> bool:
    """Check a DM content_sig against every preimage variant 1-5 of §2; never raises.

    "Hashed first" (variant 5) means PSS-SHA256 over the 32-byte SHA-256 digest as
    data, as the reference vectors do.
    """
    return _verify_first(key, sig, _dm_variants(ciphertext, from_, to, ts))


def verify_public_content_sig(key: RSAPublicKey, ciphertext: str, from_: str, ts: int, sig: str) -> bool:
    """Check a public-channel content_sig: spec, raw bytes, pipe, canonical; each also hashed first."""
    return _verify_first(key, sig, _public_variants(ciphertext, from_, ts))


def verify_content_sig(key: RSAPublicKey, preimage: bytes, sig: str) -> bool:
    """Check a content_sig over ``preimage`` or over its SHA-256 digest (key shares, files)."""
    return _verify_first(key, sig, iter((preimage,)))
