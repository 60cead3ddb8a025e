"""The two halves of one SRP-6a login (docs/PROTOCOL-EXTENSIONS.md §4, §8).

The client sends A, the server answers a challenge ``{salt, kdf, n, r, p, B}``, the
client proves with M1 and the server answers M2.  The server never sees the
password or a password equivalent; an unknown user gets a :func:`fake_challenge`.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from socp_tw.auth import scrypt, srp
from socp_tw.auth.errors import LoginError
from socp_tw.auth.fields import b64u_field, password_bytes
from socp_tw.auth.scrypt import DEFAULT_SCRYPT, MIN_SALT_BYTES, ScryptParams
from socp_tw.auth.srp import RFC5054_4096, SrpGroup
from socp_tw.auth.verifier import VerifierRecord, parse_verifier
from socp_tw.wire import b64u_encode

__all__ = ["SrpClient", "SrpServer", "fake_challenge"]


def _challenge_dict(salt: bytes, params: ScryptParams, b_pub: int, group: SrpGroup) -> dict[str, Any]:
    return {
        "salt": b64u_encode(salt),
        "kdf": "scrypt",
        "n": params.n,
        "r": params.r,
        "p": params.p,
        "B": b64u_encode(srp.pad(group, b_pub)),
    }


class SrpClient:
    """The user's half of a login: ``start()`` → A, ``process_challenge()`` → M1.

    ``process_challenge`` runs scrypt (~0.4 s with default parameters): run it off
    the reactor thread.  After it, :attr:`session_key` holds K.
    """

    def __init__(self, user_id: str, password: str) -> None:
        if not isinstance(user_id, str) or not user_id:
            raise LoginError("user_id must be a non-empty string")
        self._group = RFC5054_4096
        self._user_id = user_id
        self._password: bytes | None = password_bytes(password, LoginError)
        self._a = srp.secret_exponent()
        self._a_pub = srp.client_public(self._group, self._a)
        self._m2: bytes | None = None
        self.session_key: bytes | None = None

    def start(self) -> str:
        """A, as b64u(PAD(A))."""
        return b64u_encode(srp.pad(self._group, self._a_pub))

    def process_challenge(self, challenge: dict) -> str:
        """Answer the server's challenge ``{salt, kdf, n, r, p, B, ...}`` with b64u(M1).

        Raises :class:`LoginError` on a malformed challenge, out-of-bounds scrypt
        parameters, B ≡ 0 (mod N), u = 0, or a second call.
        """
        if self._password is None:
            raise LoginError("challenge already processed")
        if not isinstance(challenge, dict):
            raise LoginError("challenge must be an object")
        group = self._group
        if challenge.get("kdf") != "scrypt":
            raise LoginError("challenge: unknown kdf")
        params = scrypt.read_params(challenge, LoginError)
        salt = scrypt.read_salt(challenge, "challenge", LoginError)
        b_pub = srp.public_value(challenge.get("B"), "B", group)
        u = srp.u(group, self._a_pub, b_pub)
        if u == 0:
            raise LoginError("challenge: u is zero")
        password, self._password = self._password, None
        x = srp.x(self._user_id, password, salt, params)
        s = srp.client_premaster(group, b_pub, x, self._a, u)
        k_session = srp.session_key(group, s)
        m1 = srp.m1(group, self._a_pub, b_pub, k_session)
        self._m2 = srp.m2(group, self._a_pub, m1, k_session)
        self.session_key = k_session
        return b64u_encode(m1)

    def verify_server(self, m2: str) -> bool:
        """True iff ``m2`` is the server's proof that it knows the verifier."""
        if self._m2 is None:
            return False
        try:
            got = b64u_field(m2, "M2", LoginError)
        except LoginError:
            return False
        return hmac.compare_digest(got, self._m2)


class SrpServer:
    """The server's half of one login attempt: ``challenge(A)`` → dict, ``verify(M1)`` → M2.

    One object per attempt; each method may be called once.  After a successful
    ``verify``, :attr:`session_key` holds K.  A verifier string that does not parse
    raises :class:`~socp_tw.auth.errors.CorruptKeystore`.
    """

    def __init__(self, verifier: str | VerifierRecord) -> None:
        if isinstance(verifier, str):
            verifier = parse_verifier(verifier)
        if not isinstance(verifier, VerifierRecord):
            raise LoginError("verifier must be a string or a VerifierRecord")
        self._record = verifier
        self._expected_m1: bytes | None = None
        self._m2: bytes | None = None
        self._challenged = False
        self._done = False
        self._k_session: bytes | None = None
        self.session_key: bytes | None = None

    def challenge(self, a_b64u: str) -> dict[str, Any]:
        """Take A, return ``{salt, kdf, n, r, p, B}``; raises :class:`LoginError` on a bad A."""
        if self._challenged:
            raise LoginError("challenge already issued")
        self._challenged = True
        rec = self._record
        group = rec.group
        a_pub = srp.public_value(a_b64u, "A", group)
        while True:
            b = srp.secret_exponent()
            b_pub = srp.server_public(group, rec.verifier, b)
            u = srp.u(group, a_pub, b_pub)
            if b_pub != 0 and u != 0:  # both astronomically unlikely
                break
        s = srp.server_premaster(group, a_pub, rec.verifier, u, b)
        k_session = srp.session_key(group, s)
        self._expected_m1 = srp.m1(group, a_pub, b_pub, k_session)
        self._m2 = srp.m2(group, a_pub, self._expected_m1, k_session)
        self._k_session = k_session
        return _challenge_dict(rec.salt, rec.params, b_pub, group)

    def verify(self, m1_b64u: str) -> str:
        """Check the client's M1; return b64u(M2) or raise :class:`LoginError`."""
        if self._expected_m1 is None or self._m2 is None:
            raise LoginError("no challenge issued")
        if self._done:
            raise LoginError("login attempt already used")
        self._done = True
        try:
            got = b64u_field(m1_b64u, "M1", LoginError)
        except LoginError:
            got = b""
        if not hmac.compare_digest(got, self._expected_m1):
            raise LoginError("bad password proof")
        self.session_key = self._k_session
        return b64u_encode(self._m2)


def fake_challenge(user_id: str, server_secret: bytes) -> dict[str, Any]:
    """A plausible challenge for an unknown ``user_id`` (enumeration resistance).

    salt = HMAC-SHA256(server_secret, UTF-8(user_id))[:16] (stable across attempts,
    like a real user's), default scrypt parameters, B = k*v' + g^b with a fake
    verifier v' derived from the secret, so the work and the distribution of B
    resemble a real challenge.  Any proof that follows must fail with LOGIN_FAILED.
    """
    if not isinstance(user_id, str) or not isinstance(server_secret, bytes):
        raise LoginError("user_id must be a string and server_secret bytes")
    group = RFC5054_4096
    uid = user_id.encode("utf-8")
    salt = hmac.new(server_secret, uid, hashlib.sha256).digest()[:MIN_SALT_BYTES]
    fake_x = hmac.new(server_secret, b"SOCP-fake-verifier|" + uid, hashlib.sha256).digest()
    fake_v = srp.verifier(group, int.from_bytes(fake_x, "big"))
    b_pub = srp.server_public(group, fake_v, srp.secret_exponent())
    return _challenge_dict(salt, DEFAULT_SCRYPT, b_pub, group)
