"""Display names (``/nick``, docs/PROTOCOL-EXTENSIONS.md): the rules both sides apply.

A name is 1 to 32 characters after NFC normalisation and trimming, with no whitespace
inside and no control, format (bidi overrides, zero-width), surrogate or private-use
characters: it has to fit on one line of anybody's terminal and look like what it is.
"""

from __future__ import annotations

import unicodedata

MAX_NAME_CHARS = 32
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"}


def name_problem(text: str) -> str | None:
    """Why ``text`` is not an acceptable name (plain words), or None when it is."""
    name = unicodedata.normalize("NFC", text.strip())
    if not name:
        return "a name cannot be empty"
    if len(name) > MAX_NAME_CHARS:
        return f"a name has at most {MAX_NAME_CHARS} characters"
    if any(unicodedata.category(c) in _REFUSED_CATEGORIES or c.isspace() for c in name):
        return "a name cannot contain spaces or control characters"
    return None


def clean_name(text: object) -> str | None:
    """``text`` as a name (NFC, trimmed), or None when it is not an acceptable one."""
    if not isinstance(text, str) or name_problem(text) is not None:
        return None
    return unicodedata.normalize("NFC", text.strip())
