"""The SOCP v1.3 envelope: parsing and validating a frame, and encoding one (PROTOCOL.md §1).

The per-frame hot path: :func:`parse_envelope` on every frame received,
:func:`encode_frame` on every frame sent.
"""

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from socp_tw.wire.errors import (
    BadFieldType,
    BadTimestamp,
    BadUUID,
    MissingField,
    NotAnObject,
    NotJSON,
    NotUTF8,
    Oversize,
)
from socp_tw.wire.fields import is_uuid
from socp_tw.wire.fields import json_type as _json_type

__all__ = ["MAX_DEPTH", "MAX_FRAME_BYTES", "Envelope", "encode_frame", "envelope_from_dict", "parse_envelope"]

#: Default largest frame (one WebSocket text message) we accept, in bytes.
MAX_FRAME_BYTES: int = 256 * 1024

#: Deepest nesting accepted inside a frame. Real payloads nest 3-4 levels; the cap
#: keeps a hostile frame from hitting the recursion limit later, when a handler
#: re-serialises the payload (canonical(), forwarding).
MAX_DEPTH: int = 32

_MAX_TS = 10**14  # exclusive; ~ year 5138 in ms, far below 2**53
_TYPE_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
_SURROGATE_RE = re.compile("[\ud800-\udfff]")
# A JSON escape that can decode to a surrogate code point (\uD800-\uDFFF).
_SURROGATE_ESCAPE_RE = re.compile(r"\\u[dD][89a-fA-F]")

# Frame types whose envelope is allowed to be sparse (PROTOCOL.md §1, §4).
_JOIN = "SERVER_HELLO_JOIN"
_CLOSE = "CTRL_CLOSE"
_HEARTBEAT = "HEARTBEAT"


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
