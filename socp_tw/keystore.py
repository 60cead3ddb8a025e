"""Secrets at rest and login primitives (our profile's PROTOCOL §7 extensions).

Three things live here, all pure functions or small state machines with no I/O:

* ``privkey_store``: the user's RSA private key sealed under a password
  (scrypt + AES-256-GCM), a versioned ASCII blob the server stores but cannot open.
* ``pake_password``: an SRP-6a verifier (RFC 5054, 4096-bit group, SHA-256, with
  the password stretched through scrypt), and the client/server halves of the
  login exchange.  The server never sees the password or a password equivalent.
* the preimage a client signs in ``USER_HELLO`` to prove it holds its key.

The byte-exact formats are specified in ``docs/PROTOCOL-EXTENSIONS.md``.
Exception messages never contain passwords, keys or derived secrets.

CPU cost: every scrypt call with :data:`DEFAULT_SCRYPT` takes ~0.4 s and 128 MiB;
a server-side SRP step is two or three 4096-bit modexps (a few ms).  Callers on the
reactor thread run both in a thread pool.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import unicodedata
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = [
    "DEFAULT_SCRYPT",
    "HELLO_PROOF_CONTEXT",
    "KEYSTORE_PREFIX",
    "RFC5054_4096",
    "TEST_SCRYPT",
    "VERIFIER_PREFIX",
    "CorruptKeystore",
    "KeystoreError",
    "KeystoreHeader",
    "LoginError",
    "ScryptParams",
    "SrpClient",
    "SrpGroup",
    "SrpServer",
    "VerifierRecord",
    "WrongPassword",
    "fake_challenge",
    "hello_proof_preimage",
    "make_verifier",
    "new_nonce",
    "open_private_key",
    "parse_keystore",
    "parse_verifier",
    "seal_private_key",
]


# --------------------------------------------------------------------------- errors


class KeystoreError(ValueError):
    """Base class of every error raised by this module."""


class WrongPassword(KeystoreError):
    """AES-GCM authentication failed: wrong password, or a tampered blob."""


class CorruptKeystore(KeystoreError):
    """A blob or verifier that cannot be parsed, or carries unacceptable parameters."""


class LoginError(KeystoreError):
    """An SRP login step failed (bad proof, bad public value, bad parameters, misuse)."""


# --------------------------------------------------------------- encoding helpers
# Private equivalents of socp_tw.wire's helpers: this module stays self-contained.

_B64_CHARS = re.compile(r"[A-Za-z0-9_\-+/]*={0,2}")


def _b64u_encode(data: bytes) -> str:
    """base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64u_decode(text: object, what: str, exc: type[KeystoreError]) -> bytes:
    """Decode base64url, tolerating padding and the standard alphabet.

    Raises ``exc`` naming only the field ``what`` (never its content).
    """
    if not isinstance(text, str) or not _B64_CHARS.fullmatch(text):
        raise exc(f"{what}: not base64url")
    body = text.rstrip("=")
    if len(body) % 4 == 1:
        raise exc(f"{what}: bad base64url length")
    body = body.replace("+", "-").replace("/", "_")
    try:
        return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        raise exc(f"{what}: not base64url") from None


def _canonical(obj: Any) -> bytes:
    """PROTOCOL's canonical JSON: sorted keys, no spaces, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")


def _password_bytes(password: str, exc: type[KeystoreError]) -> bytes:
    """UTF-8 of the NFC-normalised password."""
    if not isinstance(password, str) or not password:
        raise exc("password must be a non-empty string")
    try:
        return unicodedata.normalize("NFC", password).encode("utf-8")
    except UnicodeEncodeError:
        raise exc("password is not valid Unicode text") from None


def _load_prefixed_json(
    text: object, prefix: str, what: str, max_len: int, exc: type[KeystoreError]
) -> dict[str, Any]:
    """Parse ``prefix + b64u(JSON object)`` into the object."""
    if not isinstance(text, str):
        raise exc(f"{what} must be a string")
    if len(text) > max_len:
        raise exc(f"{what} too long")
    if not text.isascii():
        raise exc(f"{what} is not ASCII")
    if not text.startswith(prefix):
        raise exc(f"{what}: unknown format or version")
    raw = _b64u_decode(text[len(prefix) :], what, exc)
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise exc(f"{what}: body is not JSON") from None
    if not isinstance(obj, dict):
        raise exc(f"{what}: body is not a JSON object")
    return obj


def _get_int(obj: dict[str, Any], name: str, exc: type[KeystoreError]) -> int:
    value = obj.get(name)
    if type(value) is not int:  # bool is an int subclass: refuse it
        raise exc(f"{name} must be an integer")
    return value


def _get_str(obj: dict[str, Any], name: str, exc: type[KeystoreError]) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise exc(f"{name} must be a string")
    return value


# ----------------------------------------------------------------------- scrypt


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


def _scrypt(password: bytes, salt: bytes, params: ScryptParams) -> bytes:
    return Scrypt(salt=salt, length=32, n=params.n, r=params.r, p=params.p).derive(password)


# ------------------------------------------------------------- privkey_store blob


KEYSTORE_PREFIX = "socp-keystore-v1."
_KEYSTORE_FIELDS = frozenset({"v", "kdf", "n", "r", "p", "salt", "aead", "nonce", "ct"})
_KEYSTORE_MAX_LEN = 32 * 1024  # a sealed RSA-4096 PKCS#8 is ~3.4 kB of blob
_NONCE_BYTES = 12
_TAG_BYTES = 16


def _check_rsa_4096(key: object, exc: type[KeystoreError]) -> RSAPrivateKey:
    if not isinstance(key, RSAPrivateKey):
        raise exc("key is not an RSA private key")
    if key.key_size != 4096 or key.public_key().public_numbers().e != 65537:
        raise exc("key is not RSA-4096 with e=65537")
    return key


def seal_private_key(key: RSAPrivateKey, password: str, *, params: ScryptParams = DEFAULT_SCRYPT) -> str:
    """Encrypt ``key`` under ``password``; return the ``privkey_store`` blob.

    Blob: ``"socp-keystore-v1." + b64u(canonical(header + {"ct"}))``; AES-256-GCM with
    key = scrypt(NFC(password), salt, n, r, p, 32), AAD = canonical(header), where
    header is every field but ``ct``.  Raises :class:`KeystoreError` on a key that is
    not RSA-4096/e=65537, an empty password or out-of-bounds ``params``.
    """
    _check_rsa_4096(key, KeystoreError)
    pw = _password_bytes(password, KeystoreError)
    params.check(KeystoreError)
    salt = secrets.token_bytes(MIN_SALT_BYTES)
    nonce = secrets.token_bytes(_NONCE_BYTES)
    header = {
        "v": 1,
        "kdf": "scrypt",
        "n": params.n,
        "r": params.r,
        "p": params.p,
        "salt": _b64u_encode(salt),
        "aead": "AES-256-GCM",
        "nonce": _b64u_encode(nonce),
    }
    der = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    ct = AESGCM(_scrypt(pw, salt, params)).encrypt(nonce, der, _canonical(header))
    return KEYSTORE_PREFIX + _b64u_encode(_canonical({**header, "ct": _b64u_encode(ct)}))


@dataclass(frozen=True)
class KeystoreHeader:
    """The public, parsed part of a ``privkey_store`` blob."""

    params: ScryptParams
    salt: bytes
    nonce: bytes
    ct: bytes
    aad: bytes


def parse_keystore(blob: str) -> KeystoreHeader:
    """Validate a blob's shape and parameters without decrypting it.

    What a server checks on ``USER_REGISTER``.  Raises :class:`CorruptKeystore`.
    """
    exc = CorruptKeystore
    obj = _load_prefixed_json(blob, KEYSTORE_PREFIX, "key store", _KEYSTORE_MAX_LEN, exc)
    if set(obj) != _KEYSTORE_FIELDS:
        raise exc("key store: unexpected or missing fields")
    if _get_int(obj, "v", exc) != 1:
        raise exc("key store: unknown version")
    if _get_str(obj, "kdf", exc) != "scrypt" or _get_str(obj, "aead", exc) != "AES-256-GCM":
        raise exc("key store: unknown kdf or aead")
    params = ScryptParams(_get_int(obj, "n", exc), _get_int(obj, "r", exc), _get_int(obj, "p", exc))
    params.check(exc)
    salt = _b64u_decode(obj["salt"], "salt", exc)
    if not MIN_SALT_BYTES <= len(salt) <= MAX_SALT_BYTES:
        raise exc("key store: bad salt length")
    nonce = _b64u_decode(obj["nonce"], "nonce", exc)
    if len(nonce) != _NONCE_BYTES:
        raise exc("key store: bad nonce length")
    ct = _b64u_decode(obj["ct"], "ct", exc)
    if len(ct) <= _TAG_BYTES:
        raise exc("key store: ciphertext too short")
    header = {k: v for k, v in obj.items() if k != "ct"}
    return KeystoreHeader(params, salt, nonce, ct, _canonical(header))


def open_private_key(blob: str, password: str) -> RSAPrivateKey:
    """Decrypt a ``privkey_store`` blob.

    Raises :class:`WrongPassword` if authentication fails (a wrong password and a
    tampered blob are indistinguishable by design) and :class:`CorruptKeystore` if
    the blob is malformed, has unacceptable parameters or holds no RSA-4096 key.
    """
    parsed = parse_keystore(blob)
    pw = _password_bytes(password, WrongPassword)
    aes_key = _scrypt(pw, parsed.salt, parsed.params)
    try:
        der = AESGCM(aes_key).decrypt(parsed.nonce, parsed.ct, parsed.aad)
    except InvalidTag:
        raise WrongPassword("wrong password or corrupted key store") from None
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError):
        raise CorruptKeystore("key store: payload is not a PKCS#8 key") from None
    return _check_rsa_4096(key, CorruptKeystore)


# ----------------------------------------------------------------- SRP-6a core
# Parameterised by group and hash so the RFC 5054 Appendix B vector (SHA-1,
# 1024-bit group) can check the same code our profile uses with SHA-256/4096.


@dataclass(frozen=True)
class SrpGroup:
    """An SRP group: safe prime, generator, hash name (hashlib) and our label."""

    name: str
    prime: int
    generator: int
    hash_name: str

    @property
    def length(self) -> int:
        """Bytes in PAD(): the length of the prime."""
        return (self.prime.bit_length() + 7) // 8


# RFC 5054 Appendix A, 4096-bit group (the RFC 3526 MODP-4096 prime), g = 5.
_RFC5054_4096_HEX = """
FFFFFFFF FFFFFFFF C90FDAA2 2168C234 C4C6628B 80DC1CD1 29024E08 8A67CC74 020BBEA6 3B139B22
514A0879 8E3404DD EF9519B3 CD3A431B 302B0A6D F25F1437 4FE1356D 6D51C245 E485B576 625E7EC6
F44C42E9 A637ED6B 0BFF5CB6 F406B7ED EE386BFB 5A899FA5 AE9F2411 7C4B1FE6 49286651 ECE45B3D
C2007CB8 A163BF05 98DA4836 1C55D39A 69163FA8 FD24CF5F 83655D23 DCA3AD96 1C62F356 208552BB
9ED52907 7096966D 670C354E 4ABC9804 F1746C08 CA18217C 32905E46 2E36CE3B E39E772C 180E8603
9B2783A2 EC07A28F B5C55DF0 6F4C52C9 DE2BCBF6 95581718 3995497C EA956AE5 15D22618 98FA0510
15728E5A 8AAAC42D AD33170D 04507A33 A85521AB DF1CBA64 ECFB8504 58DBEF0A 8AEA7157 5D060C7D
B3970F85 A6E1E4C7 ABF5AE8C DB0933D7 1E8C94E0 4A25619D CEE3D226 1AD2EE6B F12FFA06 D98A0864
D8760273 3EC86A64 521F2B18 177B200C BBE11757 7A615D6C 770988C0 BAD946E2 08E24FA0 74E5AB31
43DB5BFC E0FD108E 4B82D120 A9210801 1A723C12 A787E6D7 88719A10 BDBA5B26 99C32718 6AF4E23C
1A946834 B6150BDA 2583E9CA 2AD44CE8 DBBBC2DB 04DE8EF9 2E8EFC14 1FBECAA6 287C5947 4E6BC05D
99B2964F A090C3A2 233BA186 515BE7ED 1F612970 CEE2D7AF B81BDD76 2170481C D0069127 D5B05AA9
93B4EA98 8D8FDDC1 86FFB7DC 90A6C08F 4DF435C9 34063199 FFFFFFFF FFFFFFFF
"""

RFC5054_4096 = SrpGroup(
    name="rfc5054-4096",
    prime=int("".join(_RFC5054_4096_HEX.split()), 16),
    generator=5,
    hash_name="sha256",
)

_SECRET_EXPONENT_BITS = 512


def _pad(group: SrpGroup, value: int) -> bytes:
    """PAD(): big-endian, left-padded with zeros to the length of the prime."""
    return value.to_bytes(group.length, "big")


def _h(group: SrpGroup, *parts: bytes) -> bytes:
    h = hashlib.new(group.hash_name)
    for part in parts:
        h.update(part)
    return h.digest()


def _h_int(group: SrpGroup, *parts: bytes) -> int:
    return int.from_bytes(_h(group, *parts), "big")


def _srp_k(group: SrpGroup) -> int:
    """k = H(N | PAD(g))."""
    return _h_int(group, _pad(group, group.prime), _pad(group, group.generator))


def _srp_u(group: SrpGroup, a_pub: int, b_pub: int) -> int:
    """u = H(PAD(A) | PAD(B))."""
    return _h_int(group, _pad(group, a_pub), _pad(group, b_pub))


def _srp_verifier(group: SrpGroup, x: int) -> int:
    """v = g^x mod N."""
    return pow(group.generator, x, group.prime)


def _srp_client_public(group: SrpGroup, a: int) -> int:
    """A = g^a mod N."""
    return pow(group.generator, a, group.prime)


def _srp_server_public(group: SrpGroup, v: int, b: int) -> int:
    """B = (k*v + g^b) mod N."""
    return (_srp_k(group) * v + pow(group.generator, b, group.prime)) % group.prime


def _srp_client_premaster(group: SrpGroup, b_pub: int, x: int, a: int, u: int) -> int:
    """S = (B - k*g^x) ^ (a + u*x) mod N."""
    n = group.prime
    base = (b_pub - _srp_k(group) * pow(group.generator, x, n)) % n
    return pow(base, a + u * x, n)


def _srp_server_premaster(group: SrpGroup, a_pub: int, v: int, u: int, b: int) -> int:
    """S = (A * v^u) ^ b mod N."""
    n = group.prime
    return pow(a_pub * pow(v, u, n) % n, b, n)


def _srp_session_key(group: SrpGroup, s: int) -> bytes:
    """K = H(PAD(S))."""
    return _h(group, _pad(group, s))


def _srp_m1(group: SrpGroup, a_pub: int, b_pub: int, k_session: bytes) -> bytes:
    """M1 = H(PAD(A) | PAD(B) | K)."""
    return _h(group, _pad(group, a_pub), _pad(group, b_pub), k_session)


def _srp_m2(group: SrpGroup, a_pub: int, m1: bytes, k_session: bytes) -> bytes:
    """M2 = H(PAD(A) | M1 | K)."""
    return _h(group, _pad(group, a_pub), m1, k_session)


def _secret_exponent() -> int:
    """A private exponent a or b: uniform in [1, 2**512)."""
    return secrets.randbelow(2**_SECRET_EXPONENT_BITS - 1) + 1


def _srp_x(user_id: str, password: bytes, salt: bytes, params: ScryptParams) -> int:
    """x = H(salt | scrypt(NFC(password), salt | UTF-8(user_id), n, r, p, 32))."""
    stretched = _scrypt(password, salt + user_id.encode("utf-8"), params)
    return _h_int(RFC5054_4096, salt, stretched)


def _public_value(text: object, what: str, group: SrpGroup) -> int:
    """Decode b64u(A or B); it must fit in len(N) bytes and be in [1, N-1]."""
    raw = _b64u_decode(text, what, LoginError)
    if not raw or len(raw) > group.length:
        raise LoginError(f"{what}: bad length")
    value = int.from_bytes(raw, "big")
    if value >= group.prime or value % group.prime == 0:
        raise LoginError(f"{what}: out of range")
    return value


# -------------------------------------------------------------- verifier record


VERIFIER_PREFIX = "socp-srp6a-v1."
_VERIFIER_FIELDS = frozenset({"v", "group", "hash", "kdf", "n", "r", "p", "salt", "verifier"})
_VERIFIER_MAX_LEN = 4096


@dataclass(frozen=True)
class VerifierRecord:
    """A parsed ``pake_password``: what the server keeps per user."""

    params: ScryptParams
    salt: bytes
    verifier: int
    group: SrpGroup = RFC5054_4096


def make_verifier(user_id: str, password: str, *, params: ScryptParams = DEFAULT_SCRYPT) -> str:
    """Compute the ``pake_password`` field for ``user_id`` (client side, at registration).

    ``"socp-srp6a-v1." + b64u(canonical({"v":1,"group":"rfc5054-4096","hash":"SHA-256",
    "kdf":"scrypt","n","r","p","salt","verifier"}))``, ``verifier`` = b64u(PAD(v)).
    """
    if not isinstance(user_id, str) or not user_id:
        raise KeystoreError("user_id must be a non-empty string")
    pw = _password_bytes(password, KeystoreError)
    params.check(KeystoreError)
    group = RFC5054_4096
    salt = secrets.token_bytes(MIN_SALT_BYTES)
    v = _srp_verifier(group, _srp_x(user_id, pw, salt, params))
    body = {
        "v": 1,
        "group": group.name,
        "hash": "SHA-256",
        "kdf": "scrypt",
        "n": params.n,
        "r": params.r,
        "p": params.p,
        "salt": _b64u_encode(salt),
        "verifier": _b64u_encode(_pad(group, v)),
    }
    return VERIFIER_PREFIX + _b64u_encode(_canonical(body))


def parse_verifier(text: str) -> VerifierRecord:
    """Parse and validate a ``pake_password``; raises :class:`CorruptKeystore`."""
    exc = CorruptKeystore
    obj = _load_prefixed_json(text, VERIFIER_PREFIX, "verifier", _VERIFIER_MAX_LEN, exc)
    if set(obj) != _VERIFIER_FIELDS:
        raise exc("verifier: unexpected or missing fields")
    if _get_int(obj, "v", exc) != 1:
        raise exc("verifier: unknown version")
    group = RFC5054_4096
    if (
        _get_str(obj, "group", exc) != group.name
        or _get_str(obj, "hash", exc) != "SHA-256"
        or _get_str(obj, "kdf", exc) != "scrypt"
    ):
        raise exc("verifier: unknown group, hash or kdf")
    params = ScryptParams(_get_int(obj, "n", exc), _get_int(obj, "r", exc), _get_int(obj, "p", exc))
    params.check(exc)
    salt = _b64u_decode(obj["salt"], "salt", exc)
    if not MIN_SALT_BYTES <= len(salt) <= MAX_SALT_BYTES:
        raise exc("verifier: bad salt length")
    raw = _b64u_decode(obj["verifier"], "verifier", exc)
    if not raw or len(raw) > group.length:
        raise exc("verifier: bad length")
    v = int.from_bytes(raw, "big")
    if not 1 <= v < group.prime:
        raise exc("verifier: out of range")
    return VerifierRecord(params=params, salt=salt, verifier=v, group=group)


# ------------------------------------------------------------------- SRP roles


def _challenge_dict(salt: bytes, params: ScryptParams, b_pub: int, group: SrpGroup) -> dict:
    return {
        "salt": _b64u_encode(salt),
        "kdf": "scrypt",
        "n": params.n,
        "r": params.r,
        "p": params.p,
        "B": _b64u_encode(_pad(group, b_pub)),
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
        self._password: bytes | None = _password_bytes(password, LoginError)
        self._a = _secret_exponent()
        self._a_pub = _srp_client_public(self._group, self._a)
        self._m2: bytes | None = None
        self.session_key: bytes | None = None

    def start(self) -> str:
        """A, as b64u(PAD(A))."""
        return _b64u_encode(_pad(self._group, self._a_pub))

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
        params = ScryptParams(
            _get_int(challenge, "n", LoginError),
            _get_int(challenge, "r", LoginError),
            _get_int(challenge, "p", LoginError),
        )
        params.check(LoginError)
        salt = _b64u_decode(challenge.get("salt"), "salt", LoginError)
        if not MIN_SALT_BYTES <= len(salt) <= MAX_SALT_BYTES:
            raise LoginError("challenge: bad salt length")
        b_pub = _public_value(challenge.get("B"), "B", group)
        u = _srp_u(group, self._a_pub, b_pub)
        if u == 0:
            raise LoginError("challenge: u is zero")
        password, self._password = self._password, None
        x = _srp_x(self._user_id, password, salt, params)
        s = _srp_client_premaster(group, b_pub, x, self._a, u)
        k_session = _srp_session_key(group, s)
        m1 = _srp_m1(group, self._a_pub, b_pub, k_session)
        self._m2 = _srp_m2(group, self._a_pub, m1, k_session)
        self.session_key = k_session
        return _b64u_encode(m1)

    def verify_server(self, m2: str) -> bool:
        """True iff ``m2`` is the server's proof that it knows the verifier."""
        if self._m2 is None:
            return False
        try:
            got = _b64u_decode(m2, "M2", LoginError)
        except LoginError:
            return False
        return hmac.compare_digest(got, self._m2)


class SrpServer:
    """The server's half of one login attempt: ``challenge(A)`` → dict, ``verify(M1)`` → M2.

    One object per attempt; each method may be called once.  After a successful
    ``verify``, :attr:`session_key` holds K.  A verifier string that does not parse
    raises :class:`CorruptKeystore`.
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

    def challenge(self, a_b64u: str) -> dict:
        """Take A, return ``{salt, kdf, n, r, p, B}``; raises :class:`LoginError` on a bad A."""
        if self._challenged:
            raise LoginError("challenge already issued")
        self._challenged = True
        rec = self._record
        group = rec.group
        a_pub = _public_value(a_b64u, "A", group)
        while True:
            b = _secret_exponent()
            b_pub = _srp_server_public(group, rec.verifier, b)
            u = _srp_u(group, a_pub, b_pub)
            if b_pub != 0 and u != 0:  # both astronomically unlikely
                break
        s = _srp_server_premaster(group, a_pub, rec.verifier, u, b)
        k_session = _srp_session_key(group, s)
        self._expected_m1 = _srp_m1(group, a_pub, b_pub, k_session)
        self._m2 = _srp_m2(group, a_pub, self._expected_m1, k_session)
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
            got = _b64u_decode(m1_b64u, "M1", LoginError)
        except LoginError:
            got = b""
        if not hmac.compare_digest(got, self._expected_m1):
            raise LoginError("bad password proof")
        self.session_key = self._k_session
        return _b64u_encode(self._m2)


def fake_challenge(user_id: str, server_secret: bytes) -> dict:
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
    fake_v = _srp_verifier(group, int.from_bytes(fake_x, "big"))
    b_pub = _srp_server_public(group, fake_v, _secret_exponent())
    return _challenge_dict(salt, DEFAULT_SCRYPT, b_pub, group)


# ------------------------------------------------------------- key possession


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
    return _b64u_encode(secrets.token_bytes(32))
