"""Tests for socp_tw.auth.srp: the SRP-6a core against RFC 5054 and our worked example."""

from __future__ import annotations

import hashlib

from twisted.trial.unittest import SynchronousTestCase

from socp_tw.auth import srp
from socp_tw.auth.scrypt import TEST_SCRYPT
from socp_tw.auth.srp import RFC5054_4096, SrpGroup
from socp_tw.test.auth.support import PASSWORD, USER, N


# RFC 5054 Appendix A (1024-bit group, g = 2) and Appendix B (SHA-1 test vector).
def _hex(text: str) -> int:
    return int("".join(text.split()), 16)


RFC5054_1024 = SrpGroup(
    name="rfc5054-1024",
    prime=_hex(
        """EEAF0AB9 ADB38DD6 9C33F80A FA8FC5E8 60726187 75FF3C0B 9EA2314C 9C256576
        D674DF74 96EA81D3 383B4813 D692C6E0 E0D5D8E2 50B98BE4 8E495C1D 6089DAD1
        5DC7D7B4 6154D6B6 CE8EF4AD 69B15D49 82559B29 7BCF1885 C529F566 660E57EC
        68EDBC3C 05726CC0 2FD4CBF4 976EAA9A FD5138FE 8376435B 9FC61D2F C0EB06E3"""
    ),
    generator=2,
    hash_name="sha1",
)
RFC_I = b"alice"
RFC_P = b"password123"
RFC_S = bytes.fromhex("BEB25379D1A8581EB5A727673A2441EE")
RFC_K = _hex("7556AA04 5AEF2CDD 07ABAF0F 665C3E81 8913186F")
RFC_X = _hex("94B7555A ABE9127C C58CCF49 93DB6CF8 4D16C124")
RFC_V = _hex(
    """7E273DE8 696FFC4F 4E337D05 B4B375BE B0DDE156 9E8FA00A 9886D812 9BADA1F1
    822223CA 1A605B53 0E379BA4 729FDC59 F105B478 7E5186F5 C671085A 1447B52A
    48CF1970 B4FB6F84 00BBF4CE BFBB1681 52E08AB5 EA53D15C 1AFF87B2 B9DA6E04
    E058AD51 CC72BFC9 033B564E 26480D78 E955A5E2 9E7AB245 DB2BE315 E2099AFB"""
)
RFC_A_PRIV = _hex("60975527 035CF2AD 1989806F 0407210B C81EDC04 E2762A56 AFD529DD DA2D4393")
RFC_B_PRIV = _hex("E487CB59 D31AC550 471E81F0 0F6928E0 1DDA08E9 74A004F4 9E61F5D1 05284D20")
RFC_A = _hex(
    """61D5E490 F6F1B795 47B0704C 436F523D D0E560F0 C64115BB 72557EC4 4352E890
    3211C046 92272D8B 2D1A5358 A2CF1B6E 0BFCF99F 921530EC 8E393561 79EAE45E
    42BA92AE ACED8251 71E1E8B9 AF6D9C03 E1327F44 BE087EF0 6530E69F 66615261
    EEF54073 CA11CF58 58F0EDFD FE15EFEA B349EF5D 76988A36 72FAC47B 0769447B"""
)
RFC_B = _hex(
    """BD0C6151 2C692C0C B6D041FA 01BB152D 4916A1E7 7AF46AE1 05393011 BAF38964
    DC46A067 0DD125B9 5A981652 236F99D9 B681CBF8 7837EC99 6C6DA044 53728610
    D0C6DDB5 8B318885 D7D82C7F 8DEB75CE 7BD4FBAA 37089E6F 9C6059F3 88838E7A
    00030B33 1EB76840 910440B1 B27AAEAE EB4012B7 D7665238 A8E3FB00 4B117B58"""
)
RFC_U = _hex("CE38B959 3487DA98 554ED47D 70A7AE5F 462EF019")
RFC_PREMASTER = _hex(
    """B0DC82BA BCF30674 AE450C02 87745E79 90A3381F 63B387AA F271A10D 233861E3
    59B48220 F7C4693C 9AE12B0A 6F67809F 0876E2D0 13800D6C 41BB59B6 D5979B5C
    00A172B4 A2A5903A 0BDCAF8A 709585EB 2AFAFA8F 3499B200 210DCC1F 10EB3394
    3CD67FC8 8A2F39A4 BE5BEC4E C0A3212D C346D7E4 74B29EDE 8A469FFE CA686E5A"""
)


def _floor_pi_shifted(bits: int) -> int:
    """floor(pi * 2**bits), by Machin's formula in integer arithmetic."""

    def arctan_inv(x: int, one: int) -> int:
        total = term = one // x
        n, sign = 1, -1
        while term:
            term //= x * x
            n += 2
            total += sign * (term // n)
            sign = -sign
        return total

    guard = 64
    one = 1 << (bits + guard)
    return (4 * (4 * arctan_inv(5, one) - arctan_inv(239, one))) >> guard


class SrpMathTests(SynchronousTestCase):
    """The group-and-hash-parameterised core against RFC 5054 Appendix B."""

    def test_rfc5054_vector(self) -> None:
        g = RFC5054_1024
        x = int.from_bytes(hashlib.sha1(RFC_S + hashlib.sha1(RFC_I + b":" + RFC_P).digest()).digest(), "big")
        self.assertEqual(x, RFC_X)
        self.assertEqual(srp.k(g), RFC_K)
        self.assertEqual(srp.verifier(g, x), RFC_V)
        self.assertEqual(srp.client_public(g, RFC_A_PRIV), RFC_A)
        self.assertEqual(srp.server_public(g, RFC_V, RFC_B_PRIV), RFC_B)
        self.assertEqual(srp.u(g, RFC_A, RFC_B), RFC_U)
        self.assertEqual(srp.client_premaster(g, RFC_B, x, RFC_A_PRIV, RFC_U), RFC_PREMASTER)
        self.assertEqual(srp.server_premaster(g, RFC_A, RFC_V, RFC_U, RFC_B_PRIV), RFC_PREMASTER)
        k_session = srp.session_key(g, RFC_PREMASTER)
        self.assertEqual(k_session, hashlib.sha1(RFC_PREMASTER.to_bytes(128, "big")).digest())
        m1 = srp.m1(g, RFC_A, RFC_B, k_session)
        self.assertEqual(
            m1, hashlib.sha1(RFC_A.to_bytes(128, "big") + RFC_B.to_bytes(128, "big") + k_session).digest()
        )
        self.assertEqual(
            srp.m2(g, RFC_A, m1, k_session),
            hashlib.sha1(RFC_A.to_bytes(128, "big") + m1 + k_session).digest(),
        )

    def test_4096_group(self) -> None:
        """The prime is RFC 3526's: 2^4096 - 2^4032 - 1 + 2^64 * (floor(2^3966 pi) + 240904)."""
        expected = 2**4096 - 2**4032 - 1 + 2**64 * (_floor_pi_shifted(3966) + 240904)
        self.assertEqual(RFC5054_4096.prime, expected)
        self.assertEqual(RFC5054_4096.generator, 5)
        self.assertEqual(RFC5054_4096.hash_name, "sha256")
        self.assertEqual(RFC5054_4096.name, "rfc5054-4096")
        self.assertEqual(RFC5054_4096.length, 512)
        self.assertEqual(
            srp.k(RFC5054_4096),
            int.from_bytes(hashlib.sha256(N.to_bytes(512, "big") + (5).to_bytes(512, "big")).digest(), "big"),
        )

    def test_profile_vector(self) -> None:
        """The worked example in docs/PROTOCOL-EXTENSIONS.md (TEST_SCRYPT, fixed a and b)."""
        g = RFC5054_4096
        salt = bytes(range(16))
        x = srp.x(USER, PASSWORD.encode(), salt, TEST_SCRYPT)
        self.assertEqual(x, int("29937a987780782ddd197d05f6016494ca104c79e4d57ed56fbbfbd7328b87c9", 16))
        v = srp.verifier(g, x)
        self.assertEqual(
            hashlib.sha256(srp.pad(g, v)).hexdigest(),
            "f64b9dcb4cfbe892967086229f29e72a95fe438092829ee781ae827aa36b8b1d",
        )
        self.assertEqual(
            srp.k(g), int("3509477ea9fca66eadb7cf7b1bd0eb508f54d3989a9c988006a7d0b338374dd2", 16)
        )
        a = int.from_bytes(bytes(range(32, 64)), "big")
        b = int.from_bytes(bytes(range(64, 96)), "big")
        a_pub, b_pub = srp.client_public(g, a), srp.server_public(g, v, b)
        self.assertEqual(
            hashlib.sha256(srp.pad(g, a_pub)).hexdigest(),
            "929a3ab09376155f81f99ec130ba9691fabeeb86a386d794393f04b32a3ba87c",
        )
        self.assertEqual(
            hashlib.sha256(srp.pad(g, b_pub)).hexdigest(),
            "8605e904e9e40713a2f56efcffd2e4865ec3131e1c62d85752d2a8b4c8c4ab37",
        )
        u = srp.u(g, a_pub, b_pub)
        self.assertEqual(u, int("5a05f60402c0c372a3aaa4abc028cfdd2141ae325639d00679e0a88d7099dbcf", 16))
        s = srp.client_premaster(g, b_pub, x, a, u)
        self.assertEqual(s, srp.server_premaster(g, a_pub, v, u, b))
        k_session = srp.session_key(g, s)
        self.assertEqual(k_session.hex(), "e2610e56195ee083f5f78aa8a016a7daea73cc20c473a279e9151c08f60945d9")
        m1 = srp.m1(g, a_pub, b_pub, k_session)
        self.assertEqual(m1.hex(), "f67ba4f07705a00537cbeb3b8dfd7989af3405c0ad82247e97824983d324e1fb")
        self.assertEqual(
            srp.m2(g, a_pub, m1, k_session).hex(),
            "c4c73d2c63944806fda3e33b68b83dfbaceded7966b43c71d6dcd1aae2479ce3",
        )

    def test_x_derivation(self) -> None:
        """x = SHA256(salt | scrypt(NFC(P), salt | user_id, n, r, p, 32))."""
        salt = b"\x01" * 16
        stretched = hashlib.scrypt(PASSWORD.encode(), salt=salt + USER.encode(), n=2**10, r=8, p=1, dklen=32)
        want = int.from_bytes(hashlib.sha256(salt + stretched).digest(), "big")
        self.assertEqual(srp.x(USER, PASSWORD.encode(), salt, TEST_SCRYPT), want)
