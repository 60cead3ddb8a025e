"""Keys sent to a user in the encoding of that user's own key (docs/INTEROP.md row 3).

Some clients can read only PEM keys: they send their USER_HELLO key as b64u(PEM text) and
crash on, or refuse, the DER keys we send everywhere else (PROTOCOL.md §8 says the same of
servers).  The user side marks such a user's link (``link.pem_keys = True``) when its hello
is accepted; whatever puts a key in a frame for that link passes it through :func:`key_for`.
Same key, other encoding: no signature changes meaning (content_sig never covers a key).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from socp_tw import crypto

__all__ = ["key_for", "reads_pem"]


def reads_pem(link: Any) -> bool:
    """True if the user on ``link`` sent its own key as b64u(PEM)."""
    return getattr(link, "pem_keys", False) is True


@lru_cache(maxsize=4096)
def _as_pem(key_text: str) -> str:
    try:
        return crypto.encode_public_key(crypto.load_public_key(key_text), pem=True)
    except crypto.BadKey:
        return key_text  # not ours to fix: sent as it came


def key_for(link: Any, key_text: str) -> str:
    """``key_text`` as the user on ``link`` reads keys: b64u(PEM) for a PEM user, else unchanged."""
    if not key_text or not reads_pem(link) or crypto.is_pem_b64u(key_text):
        return key_text
    return _as_pem(key_text)
