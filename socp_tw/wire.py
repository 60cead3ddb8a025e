"""The SOCP v1.3 envelope: parsing, validation and encoding (PROTOCOL.md §1).

Pure functions only: no I/O, no reactor. Strict in what we send, tolerant in what
we accept: every way an incoming frame can be wrong surfaces as one
:class:`FrameError` subclass whose ``code`` goes on the wire in an ``ERROR`` frame,
and nothing else escapes :func:`parse_envelope`.
"""

import base64
import binascii
import json
import math
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "MAX_FRAME_BYTES",
    "BadBase64",
    "BadFieldType",
    "BadTimestamp",
    "BadUUID",
    "Envelope",
    "FrameError",
    "InvalidSig",
    "MissingField",
    "NotAnObject",
    "NotJSON",
    "NotUTF8",
    "Oversize",
    "RateLimited",
    "b64u_decode",
    "b64u_encode",
    "canonical",
    "canonical_unicode",
    "encode_frame",
    "envelope_from_dict",
    "error_payload",
    "is_uuid",
    "is_uuid4",
    "new_uuid4",
    "now_ms",
    "parse_envelope",
    "require_dict",
    "require_int",
    "require_list",
    "require_str",
    "require_uuid",
]

#: Default largest frame (one WebSocket text message) we accept, in bytes.
MAX_FRAME_BYTES: int = 256 * 1024

#: Deepest nesting accepted inside a frame. Real payloads nest 3-4 levels; the cap
#: keeps a hostile frame from hitting the recursion limit later, when a handler
#: re-serialises the payload (canonical(), forwarding).
MAX_DEPTH: int = 32

_MAX_TS = 10**14  # exclusive; ~ year 5138 in ms, far below 2**53
_TYPE_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
_UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_UUID4_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-4[0-9a-fA-F]{3}-[89abAB][0-9a-fA-F]{3}-[0-9a-fA-F]{12}"
)
_B64_RE = re.compile(r"[A-Za-z0-9_-]*={0,2}")
_B64_STD_TO_URL = str.maketrans("+/", "-_")
_ASCII_WS = " \t\n\r\f\v"
_ASCII_WS_DELETE = str.maketrans("", "", _ASCII_WS)
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
# A JSON escape that can decode to a surrogate code point (\uD800-\uDFFF).
_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")

# Frame types whose envelope is allowed to be sparse (PROTOCOL.md §1, §4).
_JOIN = "SERVER_HELLO_JOIN"
_CLOSE = "CTRL_CLOSE"
_HEARTBEAT = "HEARTBEAT"


class FrameError(ValueError):
    """A frame is malformed; ``code`` is the ``ERROR`` code to answer with.

    ``detail`` is human readable and names the offending field; ``field`` is that
    field's name (``None`` when the frame as a whole is wrong).
    """

    code: str = "BAD_FRAME"

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, detail={self.detail!r}, field={self.field!r})"


class NotUTF8(FrameError):
    """The frame is not valid UTF-8 (or carries a lone surrogate escape)."""

    code = "BAD_ENCODING"


class NotJSON(FrameError):
    """The frame is not parseable JSON (NaN/Infinity and absurd nesting included)."""

    code = "BAD_JSON"


class NotAnObject(FrameError):
    """The frame is JSON but not a JSON object."""

    code = "BAD_FRAME"


class MissingField(FrameError):
    """A required field is absent (or null)."""

    code = "MISSING_FIELD"


class BadFieldType(FrameError):
    """A field has the wrong type, length or shape."""

    code = "BAD_FIELD"


class BadUUID(FrameError):
    """A field that must hold a UUID does not."""

    code = "BAD_UUID"


class BadTimestamp(FrameError):
    """``ts`` is not a finite number of milliseconds in [0, 10**14)."""

    code = "BAD_TS"


class Oversize(FrameError):
    """The frame is larger than the configured limit."""

    code = "TOO_LARGE"


class BadBase64(FrameError):
    """A base64url field does not decode."""

    code = "BAD_BASE64"


class InvalidSig(FrameError):
    """A signature (content_sig, or a key share's) does not verify: the frame is dropped."""

    code = "INVALID_SIG"


class RateLimited(FrameError):
    """The sender is over one of its rate limits (login attempts, file frames...)."""

    code = "RATE_LIMITED"


@dataclass(frozen=True, slots=True)
class Envelope:
    """One validated SOCP frame. ``ts`` is always int ms; ``sig`` is "" when absent."""

    type: str
    from_: str
    to: str
    ts: int
    payload: dict[str, Any]
    sig: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the wire form (key ``"from"``), e.g. to forward a frame unchanged."""
        return {
            "type": self.type,
            "from": self.from_,
            "to": self.to,
            "ts": self.ts,
            "payload": self.payload,
            "sig": self.sig,
        }


def parse_envelope(data: bytes | str, max_bytes: int = MAX_FRAME_BYTES) -> Envelope:
    """Decode and validate one frame; raise only :class:`FrameError` subclasses.

    Order: size (on the raw bytes), UTF-8, JSON, object, fields. A ``str`` (an
    already-decoded WebSocket text message) is measured by its UTF-8 length.
    """
    if isinstance(data, str):
        if len(data) > max_bytes:
            raise Oversize(f"frame is over {max_bytes} bytes")
        try:
            size = len(data.encode("utf-8"))
        except UnicodeEncodeError as e:
            raise NotUTF8(f"frame text is not valid Unicode: {e.reason} at {e.start}") from None
        if size > max_bytes:
            raise Oversize(f"frame is {size} bytes, over the {max_bytes} byte limit")
        text = data
    elif isinstance(data, (bytes, bytearray, memoryview)):
        if len(data) > max_bytes:
            raise Oversize(f"frame is {len(data)} bytes, over the {max_bytes} byte limit")
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as e:
            raise NotUTF8(f"frame is not valid UTF-8: {e.reason} at byte {e.start}") from None
    else:
        raise NotUTF8(f"frame must be bytes or str, not {type(data).__name__}")
    if text.startswith("\ufeff"):  # tolerate a byte-order mark
        text = text[1:]
    try:
        obj = _DECODER.decode(text)
    except RecursionError:
        raise NotJSON("frame is nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, our hooks, huge integer literals
        raise NotJSON(f"frame is not valid JSON: {e}") from None
    return _envelope(obj, check_strings=_SURROGATE_ESCAPE_RE.search(text) is not None)


def envelope_from_dict(obj: object) -> Envelope:
    """Validate an already-decoded JSON value as an envelope (see :func:`parse_envelope`)."""
    return _envelope(obj, check_strings=True)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


#: One decoder for every frame: ``json.loads`` with hooks builds a decoder (and its scanner) per
#: call, ~1.5 us of a DM frame's ~9 us parse.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_parse_float)


def _check_tree(obj: object, field: str, check_strings: bool) -> None:
    """Bound nesting depth and (if asked) reject lone surrogates, iteratively."""
    stack: list[tuple[object, int]] = [(obj, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            if check_strings and _SURROGATE_RE.search(node):
                raise NotUTF8(f"field {field!r} contains a lone surrogate", field)
        elif isinstance(node, (dict, list)):
            if depth >= MAX_DEPTH:
                raise BadFieldType(f"field {field!r} is nested deeper than {MAX_DEPTH} levels", field)
            if isinstance(node, dict):
                for key, value in node.items():
                    if check_strings and isinstance(key, str) and _SURROGATE_RE.search(key):
                        raise NotUTF8(f"field {field!r} contains a lone surrogate", field)
                    stack.append((value, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in node)


def _envelope(obj: object, check_strings: bool) -> Envelope:
    if not isinstance(obj, dict):
        raise NotAnObject(f"frame must be a JSON object, not {_json_type(obj)}")
    sparse = obj.get("type") == _CLOSE

    # type
    ftype = obj.get("type")
    if ftype is None:
        raise MissingField("field 'type' is missing", "type")
    if not isinstance(ftype, str):
        raise BadFieldType(f"field 'type' must be a string, not {_json_type(ftype)}", "type")
    if not _TYPE_RE.fullmatch(ftype):
        raise BadFieldType("field 'type' must be 1-64 ASCII letters, digits or underscores", "type")

    # from
    sender = obj.get("from")
    if sender is None:
        if not sparse:
            raise MissingField("field 'from' is missing", "from")
        sender = ""
    if not isinstance(sender, str):
        raise BadFieldType(f"field 'from' must be a string, not {_json_type(sender)}", "from")
    if len(sender) > 128:
        raise BadFieldType("field 'from' is longer than 128 characters", "from")
    if not (ftype == _JOIN or (sparse and sender in ("", "*")) or is_uuid(sender)):
        raise BadUUID("field 'from' must be a UUID", "from")

    # to
    to = obj.get("to")
    if to is None:
        if not sparse:
            raise MissingField("field 'to' is missing", "to")
        to = ""
    if not isinstance(to, str):
        raise BadFieldType(f"field 'to' must be a string, not {_json_type(to)}", "to")
    if len(to) > 255:
        raise BadFieldType("field 'to' is longer than 255 characters", "to")

    # ts
    ts = obj.get("ts")
    if ts is None:
        if not sparse:
            raise MissingField("field 'ts' is missing", "ts")
        ts = 0
    if isinstance(ts, bool) or not isinstance(ts, (int, float)):
        raise BadTimestamp(f"field 'ts' must be a number of milliseconds, not {_json_type(ts)}", "ts")
    # Compare before converting: int(nan) raises and math.isfinite(10**400) overflows.
    if not (0 <= ts < _MAX_TS):  # False for NaN too
        raise BadTimestamp("field 'ts' must be finite, >= 0 and < 10**14 milliseconds", "ts")
    ts = int(ts)

    # payload
    payload = obj.get("payload")
    if payload is None:
        if not (sparse or ftype == _HEARTBEAT):
            raise MissingField("field 'payload' is missing", "payload")
        payload = {}
    if not isinstance(payload, dict):
        raise BadFieldType(f"field 'payload' must be an object, not {_json_type(payload)}", "payload")
    _check_tree(payload, "payload", check_strings)

    # sig
    sig = obj.get("sig")
    if sig is None:
        sig = ""
    if not isinstance(sig, str):
        raise BadFieldType(f"field 'sig' must be a string, not {_json_type(sig)}", "sig")

    if check_strings:
        for name, value in (("from", sender), ("to", to), ("sig", sig)):
            if _SURROGATE_RE.search(value):
                raise NotUTF8(f"field {name!r} contains a lone surrogate", name)
    return Envelope(ftype, sender, to, ts, payload, sig)


def _json_type(value: object) -> str:
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


def encode_frame(type: str, from_: str, to: str, ts: int, payload: dict[str, Any], sig: str = "") -> bytes:
    """Serialise one frame as compact UTF-8 JSON, ready for a WebSocket text message.

    Strict in what we send: ``ts`` must be an int (never a float or bool) and the
    payload may not hold NaN/Infinity. ``sig`` is always present (``""`` if unsigned).
    """
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise TypeError(f"ts must be int milliseconds, not {ts!r}")
    frame = {"type": type, "from": from_, "to": to, "ts": ts, "payload": payload, "sig": sig}
    try:
        return json.dumps(frame, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (only reachable from locally built data): escape it.
        return json.dumps(frame, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


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
        raise BadFieldType(f"payload field {field!r} must be a string, not {_json_type(value)}", field)
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
        raise BadFieldType(f"payload field {field!r} must be an integer, not {_json_type(value)}", field)
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
        raise BadFieldType(f"payload field {field!r} must be an array, not {_json_type(value)}", field)
    if len(value) > max_len:
        raise BadFieldType(f"payload field {field!r} has more than {max_len} items", field)
    return value


def require_dict(payload: dict[str, Any], field: str) -> dict[str, Any]:
    """Return ``payload[field]`` if it is an object."""
    value = _payload_value(payload, field)
    if not isinstance(value, dict):
        raise BadFieldType(f"payload field {field!r} must be an object, not {_json_type(value)}", field)
    return value


def error_payload(code: str, detail: str) -> dict[str, str]:
    """The payload of an ``ERROR`` frame."""
    return {"code": code, "detail": detail}
