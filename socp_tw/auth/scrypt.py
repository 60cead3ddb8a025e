"""scrypt (RFC 7914) cost parameters, the bounds we accept, and the derivation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from socp_tw.auth.errors import CorruptKeystore, KeystoreError
from socp_tw.auth.fields import b64u_field, get_int

__all__ = [
    "DEFAULT_SCRYPT",
    "MAX_SALT_BYTES",
    "MIN_SALT_BYTES",
    "MIN_SCRYPT_N",
    "TEST_SCRYPT",
    "ScryptParams",
    "derive",
    "read_params",
    "read_salt",
]

MIN_SCRYPT_N = 2**10
MAX_SCRYPT_N = 2**20
MAX_SCRYPT_R = 32
MAX_SCRYPT_P = 16
MAX_SCRYPT_MEMORY = 2**28  # bytes, 128 * n * r: 256 MiB
MAX_SCRYPT_WORK = 2**23  # n * r * p: 8x the default cost
MIN_SALT_BYTES = 16
MAX_SALT_BYTES = 64


@dataclass(frozen=True)
class ScryptParams:
    """scrypt cost parameters (RFC 7914): ``n`` CPU/memory cost, ``r`` block size, ``p`` lanes."""

    n: int = 2**17
    r: int = 8
    p: int = 1

    def check(self, exc: type[KeystoreError] = CorruptKeystore) -> None:
        """Raise ``exc`` unless the parameters are within our accepted bounds.

        The bounds stop a hostile blob or challenge from making us burn memory or
        CPU: ``n`` a power of two in [2**10, 2**20], 1 <= r <= 32, 1 <= p <= 16,
        ``128*n*r`` <= 256 MiB and ``n*r*p`` <= 2**23.
        """
        n, r, p = self.n, self.r, self.p
        if not all(type(v) is int for v in (n, r, p)):
            raise exc("scrypt parameters must be integers")
        if n < MIN_SCRYPT_N or n > MAX_SCRYPT_N or n & (n - 1):
            raise exc("scrypt n must be a power of 2 in [2**10, 2**20]")
        if not 1 <= r <= MAX_SCRYPT_R or not 1 <= p <= MAX_SCRYPT_P:
            raise exc("scrypt r or p out of bounds")
        if 128 * n * r > MAX_SCRYPT_MEMORY or n * r * p > MAX_SCRYPT_WORK:
            raise exc("scrypt parameters too expensive")


DEFAULT_SCRYPT = ScryptParams()
"""What we send: 128 MiB, ~0.4 s per derivation."""

TEST_SCRYPT = ScryptParams(n=2**10, r=8, p=1)
"""Fast parameters for tests only (1 MiB, ~3 ms). Never use them for real keys."""


def derive(password: bytes, salt: bytes, params: ScryptParams) -> bytes:
    """scrypt(password, salt, n, r, p) to 32 bytes; the caller has checked ``params``."""
    return Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p).derive(password)


def read_params(obj: dict[str, Any], exc: type[KeystoreError]) -> ScryptParams:
    """The checked ``n``, ``r``, ``p`` of a record or challenge; raises ``exc``."""
    params = ScryptParams(get_int(obj, "n", exc), get_int(obj, "r", exc), get_int(obj, "p", exc))
    params.check(exc)
    return params


def read_salt(obj: dict[str, Any], what: str, exc: type[KeystoreError]) -> bytes:
    """The ``salt`` of a record or challenge (16 to 64 bytes); ``what`` names the record."""
    salt = b64u_field(obj.get("salt"), "salt", exc)
    if not MIN_SALT_BYTES <= len(salt) <= MAX_SALT_BYTES:
        raise exc(f"{what}: bad salt length")
    return salt
