"""RSA-4096 keys (PROTOCOL.md §2, §8): generating, loading tolerantly, encoding strictly, fingerprints."""

import functools
import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from socp_tw.wire import BadBase64, FrameError, b64u_decode, b64u_encode

__all__ = [
    "PUBLIC_EXPONENT",
    "RSA_BITS",
    "BadKey",
    "check_key_strength",
    "encode_public_key",
    "fingerprint",
    "generate_private_key",
    "is_pem_b64u",
    "load_private_key",
    "load_public_key",
    "private_key_to_pkcs8_der",
]

RSA_BITS = 4096
PUBLIC_EXPONENT = 65537

_MAX_KEY_TEXT = 16384  # a 4096-bit key is ~1 kB even as b64u(PEM)
_PEM_MARK = b"-----BEGIN"
_PEM_MARK_TEXT = "-----BEGIN"

_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo


class BadKey(FrameError):
    """A public or private key is unreadable, not RSA, or not RSA-4096 with e=65537."""

    code = "BAD_KEY"


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


def fingerprint(key_or_text: RSAPublicKey | RSAPrivateKey | str) -> str:
    """Short human fingerprint: first 16 hex digits of sha256(DER SPKI), as ``ab12:cd34:ef56:7890``.

    A string is read with :func:`load_public_key` (so it may raise :class:`BadKey`).
    """
    return digest_fingerprint(spki_digest(key_or_text))


def spki_digest(key_or_text: RSAPublicKey | RSAPrivateKey | str) -> bytes:
    """sha256 of the key's DER SubjectPublicKeyInfo, whatever encoding it came in (a string is
    read with :func:`load_public_key`, so it may raise :class:`BadKey`)."""
    key = load_public_key(key_or_text) if isinstance(key_or_text, str) else _public(key_or_text)
    return hashlib.sha256(key.public_bytes(serialization.Encoding.DER, _SPKI)).digest()


def digest_fingerprint(digest: bytes) -> str:
    """:func:`fingerprint` of a key known by its :func:`spki_digest` only."""
    text = digest.hex()[:16]
    return ":".join(text[i : i + 4] for i in range(0, 16, 4))
