"""The SRP-6a core (RFC 5054): the group, the math, and our profile's x.

Parameterised by group and hash so the RFC 5054 Appendix B vector (SHA-1, 1024-bit
group) checks the same code our profile uses with SHA-256 and the 4096-bit group.
Kept here rather than taken from PyPI: no SRP package there speaks this profile's
x (scrypt-stretched) and M1 (``H(PAD(A) | PAD(B) | K)``).  The roles that use this
core are in :mod:`socp_tw.auth.login`.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from socp_tw.auth import scrypt
from socp_tw.auth.errors import LoginError
from socp_tw.auth.fields import b64u_field
from socp_tw.auth.scrypt import ScryptParams

__all__ = [
    "RFC5054_4096",
    "SrpGroup",
    "client_premaster",
    "client_public",
    "k",
    "m1",
    "m2",
    "pad",
    "public_value",
    "secret_exponent",
    "server_premaster",
    "server_public",
    "session_key",
    "u",
    "verifier",
    "x",
]


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


def pad(group: SrpGroup, value: int) -> bytes:
    """PAD(): big-endian, left-padded with zeros to the length of the prime."""
    return value.to_bytes(group.length, "big")


def _h(group: SrpGroup, *parts: bytes) -> bytes:
    h = hashlib.new(group.hash_name)
    for part in parts:
        h.update(part)
    return h.digest()


def _h_int(group: SrpGroup, *parts: bytes) -> int:
    return int.from_bytes(_h(group, *parts), "big")


def k(group: SrpGroup) -> int:
    """k = H(N | PAD(g))."""
    return _h_int(group, pad(group, group.prime), pad(group, group.generator))


def u(group: SrpGroup, a_pub: int, b_pub: int) -> int:
    """u = H(PAD(A) | PAD(B))."""
    return _h_int(group, pad(group, a_pub), pad(group, b_pub))


def verifier(group: SrpGroup, x: int) -> int:
    """v = g^x mod N."""
    return pow(group.generator, x, group.prime)


def client_public(group: SrpGroup, a: int) -> int:
    """A = g^a mod N."""
    return pow(group.generator, a, group.prime)


def server_public(group: SrpGroup, v: int, b: int) -> int:
    """B = (k*v + g^b) mod N."""
    return (k(group) * v + pow(group.generator, b, group.prime)) % group.prime


def client_premaster(group: SrpGroup, b_pub: int, x: int, a: int, u: int) -> int:
    """S = (B - k*g^x) ^ (a + u*x) mod N."""
    n = group.prime
    base = (b_pub - k(group) * pow(group.generator, x, n)) % n
    return pow(base, a + u * x, n)


def server_premaster(group: SrpGroup, a_pub: int, v: int, u: int, b: int) -> int:
    """S = (A * v^u) ^ b mod N."""
    n = group.prime
    return pow(a_pub * pow(v, u, n) % n, b, n)


def session_key(group: SrpGroup, s: int) -> bytes:
    """K = H(PAD(S))."""
    return _h(group, pad(group, s))


def m1(group: SrpGroup, a_pub: int, b_pub: int, k_session: bytes) -> bytes:
    """M1 = H(PAD(A) | PAD(B) | K)."""
    return _h(group, pad(group, a_pub), pad(group, b_pub), k_session)


def m2(group: SrpGroup, a_pub: int, m1: bytes, k_session: bytes) -> bytes:
    """M2 = H(PAD(A) | M1 | K)."""
    return _h(group, pad(group, a_pub), m1, k_session)


def secret_exponent() -> int:
    """A private exponent a or b: uniform in [1, 2**512)."""
    return secrets.randbelow(2**_SECRET_EXPONENT_BITS - 1) + 1


def x(user_id: str, password: bytes, salt: bytes, params: ScryptParams) -> int:
    """x = H(salt | scrypt(NFC(password), salt | UTF-8(user_id), n, r, p, 32)) in our group."""
    stretched = scrypt.derive(password, salt + user_id.encode("utf-8"), params)
    return _h_int(RFC5054_4096, salt, stretched)


def public_value(text: object, what: str, group: SrpGroup) -> int:
    """Decode b64u(A or B); it must fit in len(N) bytes and be in [1, N-1]."""
    raw = b64u_field(text, what, LoginError)
    if not raw or len(raw) > group.length:
        raise LoginError(f"{what}: bad length")
    value = int.from_bytes(raw, "big")
    if value >= group.prime or value % group.prime == 0:
        raise LoginError(f"{what}: out of range")
    return value
