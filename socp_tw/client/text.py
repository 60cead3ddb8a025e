"""Text made safe for a terminal: what a remote party controls never moves the cursor."""

from __future__ import annotations

import unicodedata

_BIDI_CONTROLS = {"\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"}


def printable(text: str) -> str:
    """``text`` made safe for a terminal: control characters (ESC included) and bidi
    overrides are shown as ``\\xNN``/``\\uNNNN`` escapes, newlines start an indented line.

    Everything a remote party controls (message text, error details, names) goes through
    this, so nobody can move the cursor, recolour or rewrite the user's screen.
    """
    out = []
    for char in text:
        if char == "\n":
            out.append("\n    ")
        elif char == "\t":
            out.append(char)
        elif char in _BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Cs"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def one_line(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (the last one ``…`` when cut) and escaped like
    :func:`printable`, with newlines shown as ``\\n``: safe inside one line of output."""
    shown = text if len(text) <= limit else text[: limit - 1] + "…"
    return printable(shown).replace("\n    ", "\\n")
