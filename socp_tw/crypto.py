"""SOCP v1.3 cryptography (PROTOCOL.md §2, §8): keys, RSA-OAEP, RSA-PSS, content_sig.

Pure functions only. Strict in what we send (RSA-4096/e=65537, PSS salt 32,
b64u(DER) keys), tolerant in what we accept (any PSS salt, PEM or DER keys,
padded or not, every content_sig preimage variant seen in the wild). Verifiers
return ``False`` instead of raising: a bad signature is an answer, not a crash.
"""

import functools
import hashlib
from collections.abc import Iterator
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from socp_tw.wire import BadBase64, FrameError, b64u_decode, b64u_encode, canonical, canonical_unicode

__all__ = [
    "OAEP_MAX_PLAINTEXT",
    "PSS_SALT_LENGTH",
    "PUBLIC_EXPONENT",
    "RSA_BITS",
    "BadKey",
    "DecryptError",
    "check_key_strength",
    "dm_preimage",
    "encode_public_key",
    "file_chunk_preimage",
    "file_start_preimage",
    "fingerprint",
    "generate_private_key",
    "is_pem_b64u",
    "keyshare_preimage",
    "load_private_key",
    "load_public_key",
    "oaep_decrypt",
    "oaep_encrypt",
    "private_key_to_pkcs8_der",
    "pss_sign",
    "pss_verify",
    "public_preimage",
    "sign_content",
    "sign_payload",
    "split_plaintext",
    "split_text",
    "verify_content_sig",
    "verify_dm_content_sig",
    "verify_payload",
    "verify_public_content_sig",
]

RSA_BITS = 4096
PUBLIC_EXPONENT = 65537
#: Largest OAEP-SHA256 plaintext for a 4096-bit key: 512 - 2*32 - 2.
OAEP_MAX_PLAINTEXT = 446
PSS_SALT_LENGTH = 32

_MAX_KEY_TEXT = 16384  # a 4096-bit key is ~1 kB even as b64u(PEM)
_PEM_MARK = b"-----BEGIN"
_PEM_MARK_TEXT = "-----BEGIN"

_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_PSS_SEND = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LENGTH)
_PSS_ACCEPT = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.AUTO)
_SHA256 = hashes.SHA256()
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


class BadKey(FrameError):
    """A public or private key is unreadable, not RSA, or not RSA-4096 with e=65537."""

    code = "BAD_KEY"


class DecryptError(Exception):
    """An OAEP ciphertext could not be decrypted (bad base64, wrong key, garbage)."""


def generate_private_key() -> RSAPrivateKey:
    """A fresh RSA-4096, e=65537 key. Slow (~0.5 s): run it in a thread off the reactor."""
    return rsa.generate_private_key(public_exponent=PUBLIC_EXPONENT, key_size=RSA_BITS)


def _public(key: RSAPublicKey | RSAPrivateKey) -> RSAPublicKey:
    return key.public_key() if isinstance(key, RSAPrivateKey) else key


def check_key_strength(key: RSAPublicKey | RSAPrivateKey) -> None:
    """Raise :class:`BadKey` unless ``key`` is RSA with 4096 bits and e=65537 (§2)."""
    if not isinstance(key, (RSAPublicKey, RSAPrivateKey)):
        raise BadKey(f"key must be RSA, not {type(key).__name__}")
    if key.key_size != RSA_BITS:
        raise BadKey(f"RSA key must be {RSA_BITS} bits, not {key.key_size}")
    exponent = _public(key).public_numbers().e
    if exponent != PUBLIC_EXPONENT:
        raise BadKey(f"RSA public exponent must be {PUBLIC_EXPONENT}, not {exponent}")


def load_public_key(text: str) -> RSAPublicKey:
    """Read a peer's public key: b64u(DER SPKI), b64u(PEM), or raw PEM, padded or not.

    PKCS#1 (``RSA PUBLIC KEY``) is accepted too. Raises :class:`BadKey` for
    anything else, including keys that are not RSA-4096/e=65537. Successful
    loads are memoised on the exact text (keys are immutable; failures are not
    cached).
    """
    if not isinstance(text, str):
        raise BadKey(f"public key must be a string, not {type(text).__name__}")
    if not text.strip():
        raise BadKey("public key is empty")
    if len(text) > _MAX_KEY_TEXT:
        raise BadKey(f"public key text is longer than {_MAX_KEY_TEXT} characters")
    return _load_public_key(text)


@functools.lru_cache(maxsize=4096)
def _load_public_key(text: str) -> RSAPublicKey:
    stripped = text.strip()
    try:
        if stripped.startswith(_PEM_MARK_TEXT):
            key = serialization.load_pem_public_key(stripped.encode("ascii"))
        else:
            raw = b64u_decode(stripped)
            if raw.lstrip().startswith(_PEM_MARK):
                key = serialization.load_pem_public_key(raw.strip())
            else:
                key = serialization.load_der_public_key(raw)
    except BadBase64 as e:
        raise BadKey(f"public key is not base64url, DER or PEM: {e.detail}") from None
    except Exception as e:  # cryptography raises ValueError, UnsupportedAlgorithm, ...
        raise BadKey(f"public key does not parse: {e}") from None
    if not isinstance(key, RSAPublicKey):
        raise BadKey(f"public key must be RSA, not {type(key).__name__}")
    check_key_strength(key)
    return key


def encode_public_key(key: RSAPublicKey | RSAPrivateKey, *, pem: bool = False) -> str:
    """Our wire form of a public key: b64u(DER SPKI), or b64u(PEM text) for PEM-only peers (§8)."""
    encoding = serialization.Encoding.PEM if pem else serialization.Encoding.DER
    return b64u_encode(_public(key).public_bytes(encoding, _SPKI))


def is_pem_b64u(text: str) -> bool:
    """True if a peer sent its key as b64u(PEM text), so we mirror that encoding (§8).

    Raw PEM and b64u(DER) both give ``False``; so does anything unreadable.
    """
    if not isinstance(text, str):
        return False
    try:
        return b64u_decode(text.strip()).lstrip().startswith(_PEM_MARK)
    except BadBase64:
        return False


def private_key_to_pkcs8_der(key: RSAPrivateKey) -> bytes:
    """Unencrypted PKCS#8 DER of ``key`` (for storage that encrypts it separately)."""
    return key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_private_key(data: bytes | str) -> RSAPrivateKey:
    """Read an unencrypted private key: PKCS#8 PEM or DER, or PKCS#1 PEM; strength-checked.

    Raises :class:`BadKey` for anything else (password-protected keys included).
    """
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    if not isinstance(data, (bytes, bytearray)) or not data.strip():
        raise BadKey("private key is empty or not bytes/str")
    try:
        if data.lstrip().startswith(_PEM_MARK):
            key = serialization.load_pem_private_key(bytes(data).strip(), password=None)
        else:
            key = serialization.load_der_private_key(bytes(data), password=None)
    except Exception as e:  # ValueError, TypeError (encrypted), UnsupportedAlgorithm
        raise BadKey(f"private key does not parse: {e}") from None
    if not isinstance(key, RSAPrivateKey):
        raise BadKey(f"private key must be RSA, not {type(key).__name__}")
    check_key_strength(key)
    return key


def oaep_encrypt(key: RSAPublicKey, plaintext: bytes) -> str:
    """RSA-OAEP-SHA256 encrypt one block, b64u. ``ValueError`` over 446 bytes: split first."""
    if len(plaintext) > OAEP_MAX_PLAINTEXT:
        raise ValueError(f"OAEP plaintext is {len(plaintext)} bytes; the limit is {OAEP_MAX_PLAINTEXT}")
    return b64u_encode(_public(key).encrypt(bytes(plaintext), _OAEP))


def oaep_decrypt(key: RSAPrivateKey, ciphertext: str) -> bytes:
    """Decrypt one b64u RSA-OAEP-SHA256 block; :class:`DecryptError` on any failure."""
    try:
        raw = b64u_decode(ciphertext)
    except BadBase64 as e:
        raise DecryptError(f"ciphertext is not base64url: {e.detail}") from None
    try:
        return key.decrypt(raw, _OAEP)
    except Exception as e:  # ValueError for wrong key/garbage; opaque by design
        raise DecryptError(f"ciphertext does not decrypt with this key ({type(e).__name__})") from None


def _utf8_cuts(data: bytes, limit: int) -> list[bytes] | None:
    """Split valid UTF-8 ``data`` at character boundaries; None if a character can't fit."""
    parts = []
    start, size = 0, len(data)
    while size - start > limit:
        end = start + limit
        while end > start and (data[end] & 0xC0) == 0x80:  # continuation byte: back off
            end -= 1
        if end == start:
            return None
        parts.append(data[start:end])
        start = end
    parts.append(data[start:])
    return parts


def split_plaintext(data: bytes, limit: int = OAEP_MAX_PLAINTEXT) -> list[bytes]:
    """Cut ``data`` into blocks of at most ``limit`` bytes for OAEP; ``b""`` gives ``[b""]``.

    Valid UTF-8 input is cut only between characters, so each block decodes on its
    own (some clients decrypt and display block by block). Other data is cut
    every ``limit`` bytes.
    """
    if limit < 1:
        raise ValueError("limit must be at least 1 byte")
    data = bytes(data)
    if len(data) <= limit:
        return [data]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    else:
        parts = _utf8_cuts(data, limit)
        if parts is not None:
            return parts
    return [data[i : i + limit] for i in range(0, len(data), limit)]


def split_text(text: str, limit: int = OAEP_MAX_PLAINTEXT) -> list[str]:
    """Cut ``text`` into pieces whose UTF-8 encoding is at most ``limit`` bytes; ``""`` gives ``[""]``.

    Raises ``ValueError`` if ``limit`` cannot hold one character (below 4 bytes).
    """
    if limit < 1:
        raise ValueError("limit must be at least 1 byte")
    parts = _utf8_cuts(text.encode("utf-8"), limit)
    if parts is None:
        raise ValueError(f"a character of this text does not fit in {limit} bytes")
    return [part.decode("utf-8") for part in parts]


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


def fingerprint(key_or_text: RSAPublicKey | RSAPrivateKey | str) -> str:
    """Short human fingerprint: first 16 hex digits of sha256(DER SPKI), as ``ab12:cd34:ef56:7890``.

    A string is read with :func:`load_public_key` (so it may raise :class:`BadKey`).
    """
    key = load_public_key(key_or_text) if isinstance(key_or_text, str) else _public(key_or_text)
    der = key.public_bytes(serialization.Encoding.DER, _SPKI)
    digest = hashlib.sha256(der).hexdigest()[:16]
    return ":".join(digest[i : i + 4] for i in range(0, 16, 4))
