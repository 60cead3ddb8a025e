"""RSA-OAEP-SHA256 (PROTOCOL.md §2): one block at a time, and cutting plaintext into blocks."""

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

from socp_tw.crypto.keys import _public
from socp_tw.wire import BadBase64, b64u_decode, b64u_encode

__all__ = [
    "OAEP_MAX_PLAINTEXT",
    "DecryptError",
    "oaep_decrypt",
    "oaep_encrypt",
    "split_plaintext",
    "split_text",
]

#: Largest OAEP-SHA256 plaintext for a 4096-bit key: 512 - 2*32 - 2.
OAEP_MAX_PLAINTEXT = 446

_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class DecryptError(Exception):
    """An OAEP ciphertext could not be decrypted (bad base64, wrong key, garbage)."""


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
