"""Tests for socp_tw.crypto against the independent v1.3 vectors and locally made cases.

Signatures (PSS) and ciphertexts (OAEP) are randomised: we verify or decrypt them,
never compare their bytes. No test generates an RSA-4096 key except through
``keys.test_key`` (once per process).
"""

import base64
import hashlib
import json
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import crypto, wire
from socp_tw.test import keys

V = keys.VECTORS
ALICE_ID = keys.vector_id("alice")
BOB_ID = keys.vector_id("bob")
TS = 1764115200123
KEY_ENCODINGS = ("public_der_b64u", "public_pem_b64u", "public_pem_b64u_padded", "public_pem_raw")


def alice() -> rsa.RSAPrivateKey:
    return keys.vector_key("alice")


def bob() -> rsa.RSAPrivateKey:
    return keys.vector_key("bob")


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def max_salt_sign(key: rsa.RSAPrivateKey, data: bytes) -> str:
    """Sign the way some peers do: PSS-SHA256 with the maximum salt length."""
    pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
    return b64u(key.sign(data, pss, hashes.SHA256()))


def pss_salt_length(public: rsa.RSAPublicKey, signature: str) -> int:
    """Recover the salt length of a valid PSS-SHA256 signature (RFC 8017 §9.1.2, by hand)."""
    numbers = public.public_numbers()
    em_len = (public.key_size - 1 + 7) // 8
    em = pow(int.from_bytes(wire.b64u_decode(signature), "big"), numbers.e, numbers.n).to_bytes(em_len, "big")
    assert em[-1] == 0xBC
    masked_db, digest = em[: em_len - 33], em[em_len - 33 : -1]
    mask = b"".join(
        hashlib.sha256(digest + i.to_bytes(4, "big")).digest() for i in range(len(masked_db) // 32 + 1)
    )
    db = bytearray(a ^ b for a, b in zip(masked_db, mask, strict=False))
    db[0] &= 0xFF >> (8 * em_len - (public.key_size - 1))
    return len(db) - db.index(1) - 1


class ConstantsTests(SynchronousTestCase):
    def test_constants(self) -> None:
        self.assertEqual(
            (crypto.RSA_BITS, crypto.PUBLIC_EXPONENT, crypto.OAEP_MAX_PLAINTEXT, crypto.PSS_SALT_LENGTH),
            (4096, 65537, 446, 32),
        )
        self.assertEqual(crypto.OAEP_MAX_PLAINTEXT, V["oaep_limit"]["max_plaintext_bytes"])
        self.assertEqual(crypto.RSA_BITS // 8 - 2 * 32 - 2, crypto.OAEP_MAX_PLAINTEXT)

    def test_errors(self) -> None:
        self.assertTrue(issubclass(crypto.BadKey, wire.FrameError))
        self.assertEqual(crypto.BadKey.code, "BAD_KEY")
        self.assertEqual(crypto.BadKey("pubkey is bad", "pubkey").field, "pubkey")
        self.assertFalse(issubclass(crypto.DecryptError, wire.FrameError))


class PublicKeyTests(SynchronousTestCase):
    def test_vector_encodings(self) -> None:
        """Every encoding of both vector keys loads to the matching public key."""
        for name in ("alice", "bob"):
            expected = keys.vector_key(name).public_key().public_numbers()
            for encoding in KEY_ENCODINGS:
                key = crypto.load_public_key(V["keys"][name][encoding])
                self.assertIsInstance(key, rsa.RSAPublicKey)
                self.assertEqual(key.public_numbers(), expected, f"{name} {encoding}")

    def test_more_tolerance(self) -> None:
        """Padded DER, the standard alphabet, PKCS#1, CRLF and stray whitespace are read too."""
        public = alice().public_key()
        der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        pkcs1_pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
        pkcs1_der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
        raw_pem = V["keys"]["alice"]["public_pem_raw"]
        texts = [
            base64.urlsafe_b64encode(der).decode(),
            base64.b64encode(der).decode(),
            base64.encodebytes(der).decode(),
            pkcs1_pem.decode(),
            b64u(pkcs1_pem),
            b64u(pkcs1_der),
            raw_pem.replace("\n", "\r\n"),
            "  \n" + raw_pem + "\n\n",
            " " + V["keys"]["alice"]["public_der_b64u"] + "\n",
        ]
        for text in texts:
            self.assertEqual(
                crypto.load_public_key(text).public_numbers(), public.public_numbers(), text[:40]
            )

    def test_vector_bad_keys(self) -> None:
        self.assertEqual(len(V["bad_keys"]), 4)
        for case in V["bad_keys"]:
            with self.assertRaises(crypto.BadKey, msg=case["case"]) as cm:
                crypto.load_public_key(case["pubkey"])
            self.assertEqual(cm.exception.code, case["expect"])
            self.assertEqual(cm.exception.code, "BAD_KEY")
            self.assertTrue(cm.exception.detail)

    def test_weak_keys_in_every_encoding(self) -> None:
        """A weak key is refused as PEM too, not only as DER."""
        for case in V["bad_keys"][:2]:
            public = serialization.load_der_public_key(wire.b64u_decode(case["pubkey"]))
            pem = public.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            for text in (pem.decode(), b64u(pem)):
                self.assertRaises(crypto.BadKey, crypto.load_public_key, text)

    def test_other_junk(self) -> None:
        ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key()
        ec_der = ec_pub.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        ec_pem = ec_pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        broken_pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
        der_text = V["keys"]["alice"]["public_der_b64u"]
        for junk in (
            None,
            5,
            b"MIIC",
            ["x"],
            " \n ",
            "not a key!",
            "-----BEGIN",
            broken_pem,
            b64u(broken_pem.encode()),
            b64u(ec_der),
            ec_pem.decode(),
            der_text[:-8],
            der_text + "AAAA",
            "A" * 20000,
            "\u00e9" + der_text,
        ):
            with self.assertRaises(crypto.BadKey, msg=repr(junk)[:60]):
                crypto.load_public_key(junk)  # type: ignore[arg-type]

    def test_memoised(self) -> None:
        text = V["keys"]["bob"]["public_der_b64u"]
        self.assertIs(crypto.load_public_key(text), crypto.load_public_key(text))
        before = crypto.keys._load_public_key.cache_info().currsize
        for _ in range(2):
            self.assertRaises(crypto.BadKey, crypto.load_public_key, "AAAA")
            self.assertRaises(crypto.BadKey, crypto.load_public_key, V["bad_keys"][0]["pubkey"])
        self.assertEqual(crypto.keys._load_public_key.cache_info().currsize, before)

    def test_encode_matches_vectors(self) -> None:
        """Our encodings are deterministic and equal the reference ones byte for byte."""
        for name in ("alice", "bob"):
            private = keys.vector_key(name)
            for key in (private, private.public_key()):
                self.assertEqual(crypto.encode_public_key(key), V["keys"][name]["public_der_b64u"])
                self.assertEqual(crypto.encode_public_key(key, pem=True), V["keys"][name]["public_pem_b64u"])

    def test_encode_round_trip(self) -> None:
        for pem in (False, True):
            text = crypto.encode_public_key(bob(), pem=pem)
            self.assertNotIn("=", text)
            self.assertEqual(
                crypto.load_public_key(text).public_numbers(), bob().public_key().public_numbers()
            )
            self.assertEqual(crypto.is_pem_b64u(text), pem)

    def test_is_pem_b64u(self) -> None:
        k = V["keys"]["alice"]
        self.assertTrue(crypto.is_pem_b64u(k["public_pem_b64u"]))
        self.assertTrue(crypto.is_pem_b64u(k["public_pem_b64u_padded"]))
        self.assertTrue(crypto.is_pem_b64u(" " + k["public_pem_b64u"] + "\n"))
        for text in (k["public_der_b64u"], k["public_pem_raw"], "", "AAAA", "!!", None, 5):
            self.assertFalse(crypto.is_pem_b64u(text), repr(text)[:40])  # type: ignore[arg-type]

    def test_check_key_strength(self) -> None:
        crypto.check_key_strength(alice())
        crypto.check_key_strength(alice().public_key())
        for case in V["bad_keys"][:2]:
            weak = serialization.load_der_public_key(wire.b64u_decode(case["pubkey"]))
            with self.assertRaises(crypto.BadKey) as cm:
                crypto.check_key_strength(weak)  # type: ignore[arg-type]
            self.assertRegex(cm.exception.detail, "4096|exponent")
        for junk in (ec.generate_private_key(ec.SECP256R1()).public_key(), None, "key"):
            self.assertRaises(crypto.BadKey, crypto.check_key_strength, junk)

    def test_generate(self) -> None:
        key = keys.test_key(0)
        self.assertIs(keys.test_key(0), key)
        self.assertEqual(key.key_size, 4096)
        self.assertEqual(key.public_key().public_numbers().e, 65537)
        crypto.check_key_strength(key)
        self.assertNotEqual(key.public_key().public_numbers(), alice().public_key().public_numbers())
        self.assertRaises(ValueError, keys.test_key, 99)


class PrivateKeyTests(SynchronousTestCase):
    def test_pkcs8_der_round_trip(self) -> None:
        der = crypto.private_key_to_pkcs8_der(alice())
        self.assertIsInstance(der, bytes)
        self.assertEqual(der[0], 0x30)
        loaded = crypto.load_private_key(der)
        self.assertEqual(loaded.private_numbers(), alice().private_numbers())

    def test_pem_forms(self) -> None:
        pem = V["keys"]["bob"]["private_pkcs8_pem"]
        self.assertEqual(crypto.load_private_key(pem).private_numbers(), bob().private_numbers())
        pkcs1 = bob().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        self.assertTrue(pkcs1.startswith(b"-----BEGIN RSA PRIVATE KEY"))
        self.assertEqual(crypto.load_private_key(b"\n" + pkcs1).private_numbers(), bob().private_numbers())

    def test_refused(self) -> None:
        weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        weak_pem = weak.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        ec_der = ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        encrypted = weak.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
        for junk in (
            weak_pem,
            ec_der,
            encrypted,
            b"",
            "  ",
            b"\x30\x00",
            b"-----BEGIN PRIVATE KEY-----\nAA==\n",
            V["keys"]["alice"]["public_pem_raw"],
            None,
            7,
        ):
            with self.assertRaises(crypto.BadKey, msg=repr(junk)[:50]) as cm:
                crypto.load_private_key(junk)  # type: ignore[arg-type]
            self.assertEqual(cm.exception.code, "BAD_KEY")


class OAEPTests(SynchronousTestCase):
    def test_vectors_decrypt(self) -> None:
        self.assertEqual(len(V["oaep"]), 3)
        for case in V["oaep"]:
            self.assertEqual(case["to"], "bob")
            plaintext = crypto.oaep_decrypt(bob(), case["ciphertext"])
            self.assertEqual(plaintext, bytes.fromhex(case["plaintext_hex"]))

    def test_vectors_wrong_key(self) -> None:
        for case in V["oaep"]:
            self.assertRaises(crypto.DecryptError, crypto.oaep_decrypt, alice(), case["ciphertext"])

    def test_dm_vector_plaintext(self) -> None:
        """The DM vectors' ciphertext is an OAEP block to bob holding the stated text."""
        ciphertext = V["content_sig_dm"][0]["ciphertext"]
        self.assertEqual(crypto.oaep_decrypt(bob(), ciphertext), V["decrypt_dm_plaintext"].encode())

    def test_limit(self) -> None:
        limit = V["oaep_limit"]["max_plaintext_bytes"]
        data = bytes(range(256)) * 2
        ciphertext = crypto.oaep_encrypt(bob().public_key(), data[:limit])
        self.assertEqual(len(wire.b64u_decode(ciphertext)), 512)
        self.assertEqual(crypto.oaep_decrypt(bob(), ciphertext), data[:limit])
        with self.assertRaises(ValueError):
            crypto.oaep_encrypt(bob().public_key(), data[: V["oaep_limit"]["too_long_bytes"]])

    def test_round_trip_small(self) -> None:
        for data in (b"", b"\x00", "héllo ☕".encode()):
            ciphertext = crypto.oaep_encrypt(alice(), data)  # a private key's public half is used
            self.assertNotIn("=", ciphertext)
            self.assertEqual(crypto.oaep_decrypt(alice(), ciphertext), data)
        # Randomised: the same plaintext never gives the same ciphertext.
        self.assertNotEqual(
            crypto.oaep_encrypt(bob().public_key(), b"x"), crypto.oaep_encrypt(bob().public_key(), b"x")
        )

    def test_decrypt_errors(self) -> None:
        good = V["oaep"][1]["ciphertext"]
        tampered = good[:10] + ("A" if good[10] != "A" else "B") + good[11:]
        for junk in ("", "!!!", "A", None, 5, b64u(b"\x00" * 512), b64u(b"\xff" * 512), good[:-4], tampered):
            with self.assertRaises(crypto.DecryptError, msg=repr(junk)[:40]):
                crypto.oaep_decrypt(bob(), junk)  # type: ignore[arg-type]

    def test_split_and_encrypt_long_text(self) -> None:
        text = "Grüße aus Köln 🌍 " * 60
        parts = crypto.split_text(text)
        self.assertGreater(len(parts), 1)
        blocks = [crypto.oaep_encrypt(bob().public_key(), part.encode()) for part in parts]
        self.assertEqual("".join(crypto.oaep_decrypt(bob(), block).decode() for block in blocks), text)


class SplitTests(SynchronousTestCase):
    def test_sizes(self) -> None:
        for size, expected in (
            (0, [0]),
            (1, [1]),
            (446, [446]),
            (447, [446, 1]),
            (892, [446, 446]),
            (893, [446, 446, 1]),
        ):
            for data in (b"a" * size, b"\xff" * size):
                parts = crypto.split_plaintext(data)
                self.assertEqual([len(p) for p in parts], expected, (size, data[:1]))
                self.assertEqual(b"".join(parts), data)
            parts = crypto.split_text("a" * size)
            self.assertEqual([len(p) for p in parts], expected)

    def test_empty(self) -> None:
        self.assertEqual(crypto.split_plaintext(b""), [b""])
        self.assertEqual(crypto.split_text(""), [""])

    def test_multibyte_boundary(self) -> None:
        for char in ("é", "€", "😀"):
            width = len(char.encode())
            for pad in range(446 - width + 1, 447):  # the character straddles or ends on the boundary
                text = "a" * pad + char + "b" * 500
                data = text.encode()
                parts = crypto.split_plaintext(data)
                self.assertEqual(b"".join(parts), data)
                for part in parts:
                    self.assertLessEqual(len(part), 446)
                    part.decode("utf-8")  # no character cut in two
                texts = crypto.split_text(text)
                self.assertEqual("".join(texts), text)
                self.assertEqual([t.encode() for t in texts], parts)
                straddles = pad + width > 446
                self.assertEqual(len(parts[0]), pad if straddles else 446)

    def test_all_multibyte(self) -> None:
        text = "😀" * 300  # 1200 bytes, 446 is not a multiple of 4
        parts = crypto.split_text(text)
        self.assertEqual([len(p.encode()) for p in parts], [444, 444, 312])
        self.assertEqual("".join(parts), text)

    def test_custom_limit(self) -> None:
        self.assertEqual(crypto.split_plaintext(b"abcdefg", 3), [b"abc", b"def", b"g"])
        self.assertEqual(crypto.split_text("ééé", 3), ["é", "é", "é"])
        self.assertEqual(crypto.split_text("€", 3), ["€"])

    def test_invalid_utf8_cut_anywhere(self) -> None:
        data = b"\xc3" + "é".encode() * 300  # not valid UTF-8: plain byte cuts
        self.assertEqual([len(p) for p in crypto.split_plaintext(data)], [446, 155])

    def test_limit_too_small(self) -> None:
        self.assertRaises(ValueError, crypto.split_plaintext, b"abc", 0)
        self.assertRaises(ValueError, crypto.split_text, "abc", 0)
        self.assertRaises(ValueError, crypto.split_text, "€", 2)
        # Bytes that cannot be cut between characters are cut every ``limit`` bytes.
        self.assertEqual(crypto.split_plaintext("€".encode(), 2), [b"\xe2\x82", b"\xac"])


class TransportSigTests(SynchronousTestCase):
    def test_vectors(self) -> None:
        """All five reference verdicts, each checked with the key of the case's ``signer``.

        ``signer`` names the key the verifier holds: in "wrong signer key" alice
        signed and the check is made with bob's key.
        """
        self.assertEqual(len(V["transport_sig"]), 5)
        for case in V["transport_sig"]:
            public = crypto.load_public_key(V["keys"][case["signer"]]["public_der_b64u"])
            self.assertEqual(
                crypto.verify_payload(public, case["payload"], case["sig"]), case["valid"], case["case"]
            )

    def test_wrong_signer_case(self) -> None:
        """The "wrong signer key" signature is alice's, so bob's key must refuse it."""
        case = next(c for c in V["transport_sig"] if c["signer"] == "bob")
        self.assertFalse(case["valid"])
        self.assertTrue(crypto.verify_payload(alice().public_key(), case["payload"], case["sig"]))
        self.assertFalse(crypto.verify_payload(bob().public_key(), case["payload"], case["sig"]))

    def test_own_round_trip(self) -> None:
        payload = {"user_id": BOB_ID, "meta": {"display_name": "Zoë"}, "n": [1, None]}
        sig = crypto.sign_payload(alice(), payload)
        self.assertNotIn("=", sig)
        self.assertEqual(len(wire.b64u_decode(sig)), 512)
        self.assertTrue(crypto.verify_payload(alice().public_key(), payload, sig))
        self.assertTrue(crypto.pss_verify(alice().public_key(), wire.canonical(payload), sig))
        self.assertFalse(crypto.pss_verify(alice().public_key(), wire.canonical_unicode(payload), sig))
        self.assertFalse(crypto.verify_payload(alice().public_key(), dict(payload, n=[1]), sig))
        self.assertFalse(crypto.verify_payload(bob().public_key(), payload, sig))

    def test_unicode_variant(self) -> None:
        payload = {"name": "café ☕"}
        sig = crypto.pss_sign(alice(), wire.canonical_unicode(payload))
        self.assertTrue(crypto.verify_payload(alice().public_key(), payload, sig))

    def test_never_raises(self) -> None:
        good = crypto.sign_payload(alice(), {})
        public = alice().public_key()
        self.assertTrue(crypto.verify_payload(public, {}, good))
        for sig in ("", "!!", "AAAA", None, 3, good[:-3]):
            self.assertFalse(crypto.verify_payload(public, {}, sig))  # type: ignore[arg-type]
        self.assertFalse(crypto.verify_payload(public, {"x": object()}, good))  # type: ignore[dict-item]
        self.assertFalse(crypto.verify_payload(public, {"x": "\ud800"}, good))
        self.assertFalse(crypto.verify_payload("not a key", {}, good))  # type: ignore[arg-type]


class PSSTests(SynchronousTestCase):
    def test_we_send_salt_32(self) -> None:
        data = b"strict in what we send"
        sig = crypto.pss_sign(alice(), data)
        strict = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32)
        alice().public_key().verify(wire.b64u_decode(sig), data, strict, hashes.SHA256())  # raises if not 32
        self.assertEqual(pss_salt_length(alice().public_key(), sig), 32)
        maximum = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=512 - 32 - 2)
        with self.assertRaises(InvalidSignature):
            alice().public_key().verify(wire.b64u_decode(sig), data, maximum, hashes.SHA256())

    def test_we_accept_max_salt(self) -> None:
        data = b"tolerant in what we accept"
        sig = max_salt_sign(alice(), data)
        self.assertEqual(pss_salt_length(alice().public_key(), sig), 512 - 32 - 2)
        self.assertTrue(crypto.pss_verify(alice().public_key(), data, sig))
        self.assertFalse(crypto.pss_verify(alice().public_key(), data + b"!", sig))

    def test_vector_max_salt(self) -> None:
        case = next(c for c in V["transport_sig"] if c["case"].startswith("max salt"))
        self.assertEqual(pss_salt_length(alice().public_key(), case["sig"]), 478)
        self.assertTrue(crypto.pss_verify(alice().public_key(), wire.canonical(case["payload"]), case["sig"]))

    def test_randomised(self) -> None:
        self.assertNotEqual(crypto.pss_sign(alice(), b"x"), crypto.pss_sign(alice(), b"x"))
        sig = crypto.sign_content(alice(), b"x")
        self.assertTrue(crypto.pss_verify(alice().public_key(), b"x", sig))

    def test_verify_never_raises(self) -> None:
        sig = crypto.pss_sign(alice(), b"x")
        public = alice().public_key()
        self.assertTrue(crypto.pss_verify(alice(), b"x", sig))  # a private key is fine too
        for bad_sig in (
            "",
            "A",
            "!!!",
            sig[:-2],
            sig + "AAAA",
            None,
            b"sig",
            b64u(b"\x00" * 512),
            b64u(b"\xff" * 512),
        ):
            self.assertFalse(crypto.pss_verify(public, b"x", bad_sig), repr(bad_sig)[:30])  # type: ignore[arg-type]
        self.assertFalse(crypto.pss_verify(bob().public_key(), b"x", sig))
        self.assertFalse(crypto.pss_verify(None, b"x", sig))  # type: ignore[arg-type]
        self.assertFalse(crypto.pss_verify(public, "x", sig))  # type: ignore[arg-type]


class PreimageTests(SynchronousTestCase):
    def test_dm(self) -> None:
        self.assertEqual(
            crypto.dm_preimage("Y2lw", ALICE_ID, BOB_ID, TS), f"Y2lw{ALICE_ID}{BOB_ID}{TS}".encode()
        )
        self.assertEqual(crypto.dm_preimage("c", "f", "t", 0), b"cft0")

    def test_public(self) -> None:
        self.assertEqual(crypto.public_preimage("Y2lw", ALICE_ID, TS), f"Y2lw{ALICE_ID}{TS}".encode())

    def test_keyshare(self) -> None:
        shares = [{"wrapped_public_channel_key": "d3I", "member": BOB_ID}]
        self.assertEqual(
            crypto.keyshare_preimage(shares, "PUB"),
            b'[{"member":"' + BOB_ID.encode() + b'","wrapped_public_channel_key":"d3I"}]PUB',
        )
        self.assertEqual(crypto.keyshare_preimage([], ""), b"[]")

    def test_file_start(self) -> None:
        self.assertEqual(
            crypto.file_start_preimage("fid", "café.txt", 1234, "ab" * 32, ALICE_ID, BOB_ID, TS),
            f"fidcafé.txt1234{'ab' * 32}{ALICE_ID}{BOB_ID}{TS}".encode(),
        )
        self.assertIn("café".encode(), crypto.file_start_preimage("f", "café", 0, "", "", "", 0))

    def test_file_chunk(self) -> None:
        self.assertEqual(
            crypto.file_chunk_preimage("Y2lw", "fid", 7, ALICE_ID, BOB_ID, TS),
            f"Y2lwfid7{ALICE_ID}{BOB_ID}{TS}".encode(),
        )


def dm_variants(ciphertext: str, from_: str, to: str, ts: int) -> dict[str, bytes]:
    """The eight DM preimages of PROTOCOL.md §2, built independently of crypto.py."""
    tail = f"{from_}{to}{ts}".encode()
    plain = {
        "spec": ciphertext.encode() + tail,
        "raw": wire.b64u_decode(ciphertext) + tail,
        "pipe": f"{ciphertext}|{from_}|{to}|{ts}".encode(),
        "canonical": json.dumps(
            {"ciphertext": ciphertext, "from": from_, "to": to, "ts": ts},
            sort_keys=True,
            separators=(",", ":"),
        ).encode(),
    }
    hashed = {f"sha256 {k}": hashlib.sha256(v).digest() for k, v in plain.items()}
    return {**plain, **hashed}


def public_variants(ciphertext: str, from_: str, ts: int) -> dict[str, bytes]:
    tail = f"{from_}{ts}".encode()
    plain = {
        "spec": ciphertext.encode() + tail,
        "raw": wire.b64u_decode(ciphertext) + tail,
        "pipe": f"{ciphertext}|{from_}|{ts}".encode(),
        "canonical": json.dumps(
            {"ciphertext": ciphertext, "from": from_, "ts": ts}, sort_keys=True, separators=(",", ":")
        ).encode(),
    }
    hashed = {f"sha256 {k}": hashlib.sha256(v).digest() for k, v in plain.items()}
    return {**plain, **hashed}


class ContentSigTests(SynchronousTestCase):
    def test_dm_vectors(self) -> None:
        """All eight reference verdicts, with the key from each case's sender_pub."""
        self.assertEqual(len(V["content_sig_dm"]), 8)
        for case in V["content_sig_dm"]:
            key = crypto.load_public_key(case["sender_pub"])
            verdict = crypto.verify_dm_content_sig(
                key, case["ciphertext"], case["from"], case["to"], case["ts"], case["content_sig"]
            )
            self.assertEqual(verdict, case["valid"], case["variant"])

    def test_dm_someone_else_is_bob(self) -> None:
        """The "signed by someone else" case is a good signature by bob, refused for alice."""
        case = next(c for c in V["content_sig_dm"] if c["variant"] == "signed by someone else")
        args = (case["ciphertext"], case["from"], case["to"], case["ts"], case["content_sig"])
        self.assertTrue(crypto.verify_dm_content_sig(bob().public_key(), *args))
        self.assertFalse(crypto.verify_dm_content_sig(alice().public_key(), *args))

    def test_public_vectors(self) -> None:
        self.assertTrue(V["content_sig_public"])
        public = alice().public_key()
        for case in V["content_sig_public"]:
            verdict = crypto.verify_public_content_sig(
                public, case["ciphertext"], case["from"], case["ts"], case["content_sig"]
            )
            self.assertEqual(verdict, case["valid"])
            if case["valid"]:
                self.assertFalse(
                    crypto.verify_public_content_sig(
                        public, case["ciphertext"], case["from"], case["ts"] + 1, case["content_sig"]
                    )
                )

    def test_hashed_means_digest_as_data(self) -> None:
        """The vectors' "sha256 first" is PSS-SHA256 over the 32-byte digest, i.e. hashed twice."""
        case = next(c for c in V["content_sig_dm"] if c["variant"].startswith("sha256 of spec"))
        preimage = crypto.dm_preimage(case["ciphertext"], case["from"], case["to"], case["ts"])
        self.assertFalse(crypto.pss_verify(alice().public_key(), preimage, case["content_sig"]))
        self.assertTrue(
            crypto.pss_verify(alice().public_key(), hashlib.sha256(preimage).digest(), case["content_sig"])
        )

    def test_dm_every_variant_local(self) -> None:
        ciphertext = crypto.oaep_encrypt(bob().public_key(), b"hi")
        public = alice().public_key()
        variants = dm_variants(ciphertext, ALICE_ID, BOB_ID, TS)
        self.assertEqual(len(variants), 8)
        raw = wire.b64u_decode(ciphertext)
        other = wire.b64u_encode(bytes([raw[0] ^ 1]) + raw[1:])  # always differs (a fixed byte may not)
        for name, preimage in variants.items():
            sig = crypto.sign_content(alice(), preimage)
            self.assertTrue(crypto.verify_dm_content_sig(public, ciphertext, ALICE_ID, BOB_ID, TS, sig), name)
            for args in (
                (other, ALICE_ID, BOB_ID, TS),
                (ciphertext, BOB_ID, BOB_ID, TS),
                (ciphertext, ALICE_ID, ALICE_ID, TS),
                (ciphertext, ALICE_ID, BOB_ID, TS + 1),
            ):
                self.assertFalse(crypto.verify_dm_content_sig(public, *args, sig), (name, args))
            self.assertFalse(
                crypto.verify_dm_content_sig(bob().public_key(), ciphertext, ALICE_ID, BOB_ID, TS, sig)
            )

    def test_public_every_variant_local(self) -> None:
        ciphertext = crypto.oaep_encrypt(bob().public_key(), b"hi all")
        public = alice().public_key()
        variants = public_variants(ciphertext, ALICE_ID, TS)
        raw = wire.b64u_decode(ciphertext)
        other = wire.b64u_encode(bytes([raw[0] ^ 1]) + raw[1:])  # always differs (a fixed byte may not)
        for name, preimage in variants.items():
            sig = crypto.sign_content(alice(), preimage)
            self.assertTrue(crypto.verify_public_content_sig(public, ciphertext, ALICE_ID, TS, sig), name)
            for args in ((other, ALICE_ID, TS), (ciphertext, BOB_ID, TS), (ciphertext, ALICE_ID, TS - 1)):
                self.assertFalse(crypto.verify_public_content_sig(public, *args, sig), (name, args))

    def test_we_send_the_spec_string(self) -> None:
        ciphertext = crypto.oaep_encrypt(bob().public_key(), b"hi")
        sig = crypto.sign_content(alice(), crypto.dm_preimage(ciphertext, ALICE_ID, BOB_ID, TS))
        self.assertTrue(
            crypto.pss_verify(alice().public_key(), f"{ciphertext}{ALICE_ID}{BOB_ID}{TS}".encode(), sig)
        )
        self.assertEqual(pss_salt_length(alice().public_key(), sig), 32)

    def test_ciphertext_not_base64(self) -> None:
        """A ciphertext that is not base64url skips the raw-bytes variant without failing the rest."""
        ciphertext = "not base64!"
        for name in ("spec", "pipe", "canonical"):
            preimage = {
                "spec": f"{ciphertext}{ALICE_ID}{BOB_ID}{TS}".encode(),
                "pipe": f"{ciphertext}|{ALICE_ID}|{BOB_ID}|{TS}".encode(),
                "canonical": wire.canonical(
                    {"ciphertext": ciphertext, "from": ALICE_ID, "to": BOB_ID, "ts": TS}
                ),
            }[name]
            sig = crypto.sign_content(alice(), hashlib.sha256(preimage).digest())
            self.assertTrue(
                crypto.verify_dm_content_sig(alice().public_key(), ciphertext, ALICE_ID, BOB_ID, TS, sig)
            )
        sig = crypto.sign_content(alice(), crypto.public_preimage(ciphertext, ALICE_ID, TS))
        self.assertTrue(crypto.verify_public_content_sig(alice().public_key(), ciphertext, ALICE_ID, TS, sig))

    def test_generic(self) -> None:
        shares = [{"member": BOB_ID, "wrapped_public_channel_key": "d3I"}]
        preimages = [
            crypto.keyshare_preimage(shares, V["keys"]["alice"]["public_der_b64u"]),
            crypto.file_start_preimage("fid", "a.txt", 3, "ab" * 32, ALICE_ID, BOB_ID, TS),
            crypto.file_chunk_preimage("Y2lw", "fid", 0, ALICE_ID, BOB_ID, TS),
        ]
        public = alice().public_key()
        for preimage in preimages:
            for signed in (preimage, hashlib.sha256(preimage).digest()):
                sig = crypto.sign_content(alice(), signed)
                self.assertTrue(crypto.verify_content_sig(public, preimage, sig))
                self.assertFalse(crypto.verify_content_sig(public, preimage + b"x", sig))
                self.assertFalse(crypto.verify_content_sig(bob().public_key(), preimage, sig))
        sig = crypto.sign_content(alice(), crypto.file_chunk_preimage("Y2lw", "fid", 0, ALICE_ID, BOB_ID, TS))
        self.assertFalse(
            crypto.verify_content_sig(
                public, crypto.file_chunk_preimage("Y2lw", "fid", 1, ALICE_ID, BOB_ID, TS), sig
            )
        )

    def test_never_raises(self) -> None:
        public = alice().public_key()
        good = crypto.sign_content(alice(), crypto.dm_preimage("c", ALICE_ID, BOB_ID, TS))
        self.assertTrue(crypto.verify_dm_content_sig(public, "c", ALICE_ID, BOB_ID, TS, good))
        for sig in ("", "!!", "AAAA", None, 1, good[:-4]):
            self.assertFalse(crypto.verify_dm_content_sig(public, "c", ALICE_ID, BOB_ID, TS, sig))  # type: ignore
            self.assertFalse(crypto.verify_public_content_sig(public, "c", ALICE_ID, TS, sig))  # type: ignore
            self.assertFalse(crypto.verify_content_sig(public, b"c", sig))  # type: ignore[arg-type]
        self.assertFalse(crypto.verify_dm_content_sig(public, "c\ud800", ALICE_ID, BOB_ID, TS, good))
        self.assertFalse(crypto.verify_dm_content_sig(None, "c", ALICE_ID, BOB_ID, TS, good))  # type: ignore
        self.assertFalse(crypto.verify_content_sig(public, "not bytes", good))  # type: ignore[arg-type]


class FingerprintTests(SynchronousTestCase):
    def test_format_and_value(self) -> None:
        der = (
            alice()
            .public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        digest = hashlib.sha256(der).hexdigest()
        expected = f"{digest[0:4]}:{digest[4:8]}:{digest[8:12]}:{digest[12:16]}"
        self.assertRegex(expected, re.compile(r"^[0-9a-f]{4}(:[0-9a-f]{4}){3}$"))
        self.assertEqual(crypto.fingerprint(alice()), expected)

    def test_stable_across_encodings(self) -> None:
        expected = crypto.fingerprint(alice())
        self.assertEqual(crypto.fingerprint(alice().public_key()), expected)
        for encoding in KEY_ENCODINGS:
            self.assertEqual(crypto.fingerprint(V["keys"]["alice"][encoding]), expected)
        self.assertNotEqual(crypto.fingerprint(bob()), expected)

    def test_bad_text(self) -> None:
        self.assertRaises(crypto.BadKey, crypto.fingerprint, "AAAA")
