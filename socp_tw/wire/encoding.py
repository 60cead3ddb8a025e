"""Canonical JSON (what signatures cover) and base64url (PROTOCOL.md §1, §2)."""

import base64
import binascii
import json
import re

from socp_tw.wire.errors import BadBase64

__all__ = ["b64u_decode", "b64u_encode", "canonical", "canonical_unicode"]

_B64_RE = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_B64_STD_TO_URL = str.maketrans("+/", "-_")
_ASCII_WS = " \t\n\r\f\v"
_ASCII_WS_DELETE = str.maketrans("", "", _ASCII_WS)


def canonical(obj: object) -> bytes:
    """The bytes transport signatures cover (PROTOCOL.md: canonical(x))."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")


def canonical_unicode(obj: object) -> bytes:
    """:func:`canonical` with ``ensure_ascii=False``: a variant some peers sign."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def b64u_encode(data: bytes) -> str:
    """base64url without padding: what we send."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    """Decode base64url, tolerantly: padding optional, ``+/`` accepted, ASCII whitespace ignored.

    Raises :class:`BadBase64` for anything else (non-str, foreign characters,
    misplaced padding, a length no encoding can produce).
    """
    if not isinstance(text, str):
        raise BadBase64(f"base64 value must be a string, not {type(text).__name__}")
    if not _B64_RE.fullmatch(text):
        text = text.translate(_ASCII_WS_DELETE).translate(_B64_STD_TO_URL)
        if not _B64_RE.fullmatch(text):
            raise BadBase64("base64 value contains invalid characters")
    body = text.rstrip("=")
    if len(body) % 4 == 1:
        raise BadBase64(f"base64 value has an impossible length ({len(body)} characters)")
    if len(text) != len(body) and (len(text) % 4 != 0):
        raise BadBase64("base64 value has wrong padding")
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError) as e:  # pragma: no cover - excluded above
        raise BadBase64(f"base64 value does not decode: {e}") from None
