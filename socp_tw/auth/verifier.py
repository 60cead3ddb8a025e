"""``pake_password``: the SRP verifier record the server keeps per user.

``"socp-srp6a-v1." + b64u(canonical({"v":1,"group":"rfc5054-4096","hash":"SHA-256",
"kdf":"scrypt","n","r","p","salt","verifier"}))``, ``verifier`` = b64u(PAD(v))
(docs/PROTOCOL-EXTENSIONS.md §7.2).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from socp_tw.auth import scrypt, srp
from socp_tw.auth.errors import CorruptKeystore, KeystoreError
from socp_tw.auth.fields import b64u_field, get_str, load_record, password_bytes
from socp_tw.auth.scrypt import DEFAULT_SCRYPT, MIN_SALT_BYTES, ScryptParams
from socp_tw.auth.srp import RFC5054_4096, SrpGroup
from socp_tw.wire import b64u_encode, canonical

__all__ = ["VERIFIER_PREFIX", "VerifierRecord", "make_verifier", "parse_verifier"]

VERIFIER_PREFIX = "socp-srp6a-v1."
_VERIFIER_FIELDS = frozenset({"v", "group", "hash", "kdf", "n", "r", "p", "salt", "verifier"})
_VERIFIER_MAX_LEN = 4096


@dataclass(frozen=True)
class VerifierRecord:
    """A parsed ``pake_password``."""

    params: ScryptParams
    salt: bytes
    verifier: int
    group: SrpGroup = RFC5054_4096


def make_verifier(user_id: str, password: str, *, params: ScryptParams = DEFAULT_SCRYPT) -> str:
    """Compute the ``pake_password`` field for ``user_id`` (client side, at registration)."""
    if not isinstance(user_id, str) or not user_id:
        raise KeystoreError("user_id must be a non-empty string")
    pw = password_bytes(password, KeystoreError)
    params.check(KeystoreError)
    group = RFC5054_4096
    salt = secrets.token_bytes(MIN_SALT_BYTES)
    v = srp.verifier(group, srp.x(user_id, pw, salt, params))
    body = {
        "v": 1,
        "group": group.name,
        "hash": "SHA-256",
        "kdf": "scrypt",
        "n": params.n,
        "r": params.r,
        "p": params.p,
        "salt": b64u_encode(salt),
        "verifier": b64u_encode(srp.pad(group, v)),
    }
    return VERIFIER_PREFIX + b64u_encode(canonical(body))


def parse_verifier(text: str) -> VerifierRecord:
    """Parse and validate a ``pake_password``; raises :class:`CorruptKeystore`."""
    exc = CorruptKeystore
    obj = load_record(text, VERIFIER_PREFIX, "verifier", _VERIFIER_MAX_LEN, _VERIFIER_FIELDS)
    group = RFC5054_4096
    if (
        get_str(obj, "group", exc) != group.name
        or get_str(obj, "hash", exc) != "SHA-256"
        or get_str(obj, "kdf", exc) != "scrypt"
    ):
        raise exc("verifier: unknown group, hash or kdf")
    params = scrypt.read_params(obj, exc)
    salt = scrypt.read_salt(obj, "verifier", exc)
    raw = b64u_field(obj["verifier"], "verifier", exc)
    if not raw or len(raw) > group.length:
        raise exc("verifier: bad length")
    v = int.from_bytes(raw, "big")
    if not 1 <= v < group.prime:
        raise exc("verifier: out of range")
    return VerifierRecord(params=params, salt=salt, verifier=v, group=group)
