"""Reading the fields of our versioned records: ``prefix + b64u(canonical JSON)``.

Shared by the key store, the verifier record and the login messages.  base64url and
canonical JSON are :mod:`socp_tw.wire`'s; what this adds is the error each caller
wants, naming only the field (never its content).
"""

from __future__ import annotations

import json
import unicodedata
from typing import Any

from socp_tw import wire
from socp_tw.auth.errors import CorruptKeystore, KeystoreError

__all__ = ["b64u_field", "get_int", "get_str", "load_record", "password_bytes"]


def b64u_field(text: object, what: str, exc: type[KeystoreError]) -> bytes:
    """Decode with :func:`socp_tw.wire.b64u_decode`, raising ``exc`` naming only ``what``.

    What these records have always accepted, which differs from the frame fields'
    reading in two edges: whitespace is refused (a record is one token), and up to
    two trailing ``=`` are ignored whether or not they make a correct padding.
    """
    body = text.rstrip("=") if isinstance(text, str) else ""
    if not isinstance(text, str) or len(text) - len(body) > 2 or any(c.isspace() for c in body):
        raise exc(f"{what}: not base64url")
    try:
        return wire.b64u_decode(body)
    except wire.BadBase64:
        raise exc(f"{what}: not base64url") from None


def password_bytes(password: str, exc: type[KeystoreError]) -> bytes:
    """UTF-8 of the NFC-normalised password."""
    if not isinstance(password, str) or not password:
        raise exc("password must be a non-empty string")
    try:
        return unicodedata.normalize("NFC", password).encode("utf-8")
    except UnicodeEncodeError:
        raise exc("password is not valid Unicode text") from None


def load_record(text: object, prefix: str, what: str, max_len: int, fields: frozenset[str]) -> dict[str, Any]:
    """Parse ``prefix + b64u(JSON object)`` with exactly ``fields`` and ``"v": 1``.

    Raises :class:`CorruptKeystore`; ``what`` names the record in its message.
    """
    exc = CorruptKeystore
    if not isinstance(text, str):
        raise exc(f"{what} must be a string")
    if len(text) > max_len:
        raise exc(f"{what} too long")
    if not text.isascii():
        raise exc(f"{what} is not ASCII")
    if not text.startswith(prefix):
        raise exc(f"{what}: unknown format or version")
    raw = b64u_field(text[len(prefix) :], what, exc)
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise exc(f"{what}: body is not JSON") from None
    if not isinstance(obj, dict):
        raise exc(f"{what}: body is not a JSON object")
    if set(obj) != fields:
        raise exc(f"{what}: unexpected or missing fields")
    if get_int(obj, "v", exc) != 1:
        raise exc(f"{what}: unknown version")
    return obj


def get_int(obj: dict[str, Any], name: str, exc: type[KeystoreError]) -> int:
    """``obj[name]`` if it is an int (a bool is refused), else raise ``exc``."""
    value = obj.get(name)
    if type(value) is not int:  # bool is an int subclass: refuse it
        raise exc(f"{name} must be an integer")
    return value


def get_str(obj: dict[str, Any], name: str, exc: type[KeystoreError]) -> str:
    """``obj[name]`` if it is a string, else raise ``exc``."""
    value = obj.get(name)
    if not isinstance(value, str):
        raise exc(f"{name} must be a string")
    return value
