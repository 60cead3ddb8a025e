"""The ``ERROR`` codes of malformed frames: one :class:`FrameError` subclass per code.

Everything :func:`socp_tw.wire.parse_envelope` and the payload field validators
refuse surfaces as one of these; the services answer with ``ERROR`` carrying
``code`` and ``detail``.
"""

__all__ = [
    "BadBase64",
    "BadFieldType",
    "BadTimestamp",
    "BadUUID",
    "FrameError",
    "InvalidSig",
    "MissingField",
    "NotAnObject",
    "NotJSON",
    "NotUTF8",
    "Oversize",
    "RateLimited",
]


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
