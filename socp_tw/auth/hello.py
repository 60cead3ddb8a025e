"""The ``USER_HELLO`` proof of key possession and its nonces (PROTOCOL-EXTENSIONS.md §5, §6)."""

from __future__ import annotations

import secrets

from socp_tw.auth.errors import KeystoreError
from socp_tw.wire import b64u_encode

__all__ = ["HELLO_PROOF_CONTEXT", "hello_proof_preimage", "new_nonce"]

HELLO_PROOF_CONTEXT = b"SOCP-HELLO-v1"


def hello_proof_preimage(nonce: str, user_id: str, server_id: str) -> bytes:
    """What a ``USER_HELLO`` proof signs: ``SOCP-HELLO-v1|nonce|user_id|server_id`` (UTF-8).

    Raises :class:`KeystoreError` if a part is not a string or contains ``|``
    (which would make the preimage ambiguous).
    """
    parts = (nonce, user_id, server_id)
    if not all(isinstance(part, str) and "|" not in part for part in parts):
        raise KeystoreError("hello proof fields must be strings without '|'")
    return b"|".join([HELLO_PROOF_CONTEXT, *(part.encode("utf-8") for part in parts)])


def new_nonce() -> str:
    """A fresh hello nonce: b64u of 32 random bytes (43 characters)."""
    return b64u_encode(secrets.token_bytes(32))
