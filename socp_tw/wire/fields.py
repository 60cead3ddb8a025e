"""Payload field validators (``require_*``), UUID checks, ids, time and the ``ERROR`` payload.

Handlers read every payload field through these, so a wrong field is always
answered with the same :class:`~socp_tw.wire.errors.FrameError` code and a detail
that names it.
"""

import math
import re
import time
import uuid
from typing import Any

from socp_tw.wire.errors import BadFieldType, BadUUID, MissingField

__all__ = [
    "error_payload",
    "is_uuid",
    "is_uuid4",
    "json_type",
    "new_uuid4",
    "now_ms",
    "require_dict",
    "require_int",
    "require_list",
    "require_str",
    "require_uuid",
]

_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_UUID4_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
)


def json_type(value: object) -> str:
    """Name a decoded JSON value's type the way a peer would understand it."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def is_uuid(text: object) -> bool:
    """True for any UUID in 8-4-4-4-12 hex form, any case, version or variant (tolerant)."""
    return isinstance(text, str) and _UUID_RE.fullmatch(text) is not None


def is_uuid4(text: object) -> bool:
    """True only for a version-4, RFC 4122 variant UUID: what we generate and require of our ids."""
    return isinstance(text, str) and _UUID4_RE.fullmatch(text) is not None


def new_uuid4() -> str:
    """A fresh random UUID v4, lower case."""
    return str(uuid.uuid4())


def now_ms(seconds: float | None = None) -> int:
    """Unix time in integer milliseconds (of ``seconds`` if given, else of now)."""
    return int((time.time() if seconds is None else seconds) * 1000)


def _payload_value(payload: dict[str, Any], field: str) -> Any:
    if not isinstance(payload, dict):
        raise BadFieldType(f"payload must be an object to read {field!r}", field)
    value = payload.get(field)
    if value is None:
        raise MissingField(f"payload field {field!r} is missing", field)
    return value


def require_str(
    payload: dict[str, Any], field: str, *, max_len: int = 65536, allow_empty: bool = False
) -> str:
    """Return ``payload[field]`` if it is a string of at most ``max_len`` characters."""
    value = _payload_value(payload, field)
    if not isinstance(value, str):
        raise BadFieldType(f"payload field {field!r} must be a string, not {json_type(value)}", field)
    if len(value) > max_len:
        raise BadFieldType(f"payload field {field!r} is longer than {max_len} characters", field)
    if not value and not allow_empty:
        raise BadFieldType(f"payload field {field!r} must not be empty", field)
    return value


def require_int(
    payload: dict[str, Any], field: str, *, minimum: int | None = 0, maximum: int | None = None
) -> int:
    """Return ``payload[field]`` as an int within bounds; booleans are refused.

    An integral float (``3.0``, as some peers emit) is accepted and converted.
    """
    value = _payload_value(payload, field)
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadFieldType(f"payload field {field!r} must be an integer, not {json_type(value)}", field)
    if minimum is not None and value < minimum:
        raise BadFieldType(f"payload field {field!r} must be >= {minimum}", field)
    if maximum is not None and value > maximum:
        raise BadFieldType(f"payload field {field!r} must be <= {maximum}", field)
    return value


def require_uuid(payload: dict[str, Any], field: str) -> str:
    """Return ``payload[field]`` if it is a UUID string (tolerant form, see :func:`is_uuid`)."""
    value = require_str(payload, field, max_len=128)
    if not is_uuid(value):
        raise BadUUID(f"payload field {field!r} must be a UUID", field)
    return value


def require_list(payload: dict[str, Any], field: str, *, max_len: int = 10000) -> list[Any]:
    """Return ``payload[field]`` if it is an array of at most ``max_len`` items."""
    value = _payload_value(payload, field)
    if not isinstance(value, list):
        raise BadFieldType(f"payload field {field!r} must be an array, not {json_type(value)}", field)
    if len(value) > max_len:
        raise BadFieldType(f"payload field {field!r} has more than {max_len} items", field)
    return value


def require_dict(payload: dict[str, Any], field: str) -> dict[str, Any]:
    """Return ``payload[field]`` if it is an object."""
    value = _payload_value(payload, field)
    if not isinstance(value, dict):
        raise BadFieldType(f"payload field {field!r} must be an object, not {json_type(value)}", field)
    return value


def error_payload(code: str, detail: str) -> dict[str, str]:
    """The payload of an ``ERROR`` frame."""
    return {"code": code, "detail": detail}
