"""The errors of :mod:`socp_tw.auth`: one base class, three kinds callers tell apart."""

from __future__ import annotations

__all__ = ["CorruptKeystore", "KeystoreError", "LoginError", "WrongPassword"]


class KeystoreError(ValueError):
    """Base class of every error raised by :mod:`socp_tw.auth`."""


class WrongPassword(KeystoreError):
    """AES-GCM authentication failed: wrong password, or a tampered blob."""


class CorruptKeystore(KeystoreError):
    """A blob or verifier that cannot be parsed, or carries unacceptable parameters."""


class LoginError(KeystoreError):
    """An SRP login step failed (bad proof, bad public value, bad parameters, misuse)."""
