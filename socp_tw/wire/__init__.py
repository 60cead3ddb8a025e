"""The SOCP v1.3 envelope: parsing, validation and encoding (PROTOCOL.md §1).

Pure functions only: no I/O, no reactor. Strict in what we send, tolerant in what
we accept: every way an incoming frame can be wrong surfaces as one
:class:`FrameError` subclass whose ``code`` goes on the wire in an ``ERROR`` frame,
and nothing else escapes :func:`parse_envelope`.

The package, one concern per module (every name is re-exported here, so callers
keep writing ``wire.X``):

- :mod:`~socp_tw.wire.envelope`: :class:`Envelope`, :func:`parse_envelope`,
  :func:`encode_frame` (the per-frame hot path);
- :mod:`~socp_tw.wire.errors`: the :class:`FrameError` family, one class per code;
- :mod:`~socp_tw.wire.fields`: the ``require_*`` payload validators, UUIDs, ids, time;
- :mod:`~socp_tw.wire.encoding`: canonical JSON and base64url.
"""

from socp_tw.wire.encoding import b64u_decode, b64u_encode, canonical, canonical_unicode
from socp_tw.wire.envelope import (
    MAX_DEPTH,
    MAX_FRAME_BYTES,
    Envelope,
    encode_frame,
    envelope_from_dict,
    parse_envelope,
)
from socp_tw.wire.errors import (
    BadBase64,
    BadFieldType,
    BadTimestamp,
    BadUUID,
    FrameError,
    InvalidSig,
    MissingField,
    NotAnObject,
    NotJSON,
    NotUTF8,
    Oversize,
    RateLimited,
)
from socp_tw.wire.fields import (
    error_payload,
    is_uuid,
    is_uuid4,
    new_uuid4,
    now_ms,
    require_dict,
    require_int,
    require_list,
    require_str,
    require_uuid,
)

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
