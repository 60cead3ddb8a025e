"""Signing in tests: a signer that never signs, and a check of a server frame's transport signature."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from zope.interface import implementer

from socp_tw import crypto
from socp_tw.interfaces import ISigner

__all__ = ["NeverSigner", "verify_server_frame"]


@implementer(ISigner)
class NeverSigner:
    """Enough of ISigner for a hub that never signs: ``frame`` never fires, ``frame_now`` is empty."""

    public_key_text = ""

    def __init__(self, server_id: str = "00000000-0000-4000-8000-000000000000") -> None:
        self.server_id = server_id

    def frame(self, type: str, to: str, payload: dict, ts: int | None = None) -> Deferred:
        return Deferred()

    def frame_now(self, type: str, to: str, payload: dict, ts: int | None = None) -> bytes:
        return b""

    def sign_content_now(self, preimage: bytes) -> str:
        return ""


def verify_server_frame(frame: dict, public_key_text: str) -> bool:
    """True if ``frame``'s transport signature verifies with ``public_key_text``."""
    return crypto.verify_payload(crypto.load_public_key(public_key_text), frame["payload"], frame["sig"])
