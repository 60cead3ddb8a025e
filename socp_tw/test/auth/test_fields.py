"""Tests for socp_tw.auth.fields: how our records read base64url and their JSON fields."""

from __future__ import annotations

import base64

from twisted.trial.unittest import SynchronousTestCase

from socp_tw import wire
from socp_tw.auth.errors import CorruptKeystore, LoginError
from socp_tw.auth.fields import b64u_field, get_int, get_str, load_record, password_bytes


def _decode(text: object) -> bytes:
    return b64u_field(text, "salt", CorruptKeystore)


class B64uFieldTests(SynchronousTestCase):
    def test_agrees_with_wire_on_every_encoding(self) -> None:
        """Unpadded, padded, URL-safe or standard alphabet: the bytes are wire's."""
        for n in range(40):
            data = bytes((7 * i + n) % 256 for i in range(n))
            padded = base64.urlsafe_b64encode(data).decode()
            for text in (padded, padded.rstrip("="), base64.b64encode(data).decode()):
                self.assertEqual(_decode(text), data)
                self.assertEqual(_decode(text), wire.b64u_decode(text))

    def test_whitespace_refused(self) -> None:
        """A record field is one token: wire's tolerance of whitespace in frames does not apply."""
        for text in ("ab cd", "abcd\n", "\tabcd", "ab\u2003cd", " "):
            self.assertRaises(CorruptKeystore, _decode, text)
            self.assertRaises(LoginError, b64u_field, text, "A", LoginError)

    def test_up_to_two_trailing_equals_ignored(self) -> None:
        """As before the move to wire: trailing '=' are dropped whether or not they pad correctly."""
        self.assertEqual(_decode("AA="), b"\x00")
        self.assertEqual(_decode("AAA=="), b"\x00\x00")
        self.assertEqual(_decode("="), b"")
        for text in ("AA===", "AAAA===", "A=A", "=AA"):
            self.assertRaises(CorruptKeystore, _decode, text)

    def test_refusals(self) -> None:
        for text in ("a", "abcde", "!!!", "ab.c", "caf\u00e9", None, 7, b"abcd"):
            e = self.assertRaises(CorruptKeystore, _decode, text)
            self.assertEqual(str(e), "salt: not base64url")


class RecordTests(SynchronousTestCase):
    def test_load_record(self) -> None:
        fields = frozenset({"v", "a"})

        def load(text: object, max_len: int = 100) -> dict:
            return load_record(text, "p.", "thing", max_len, fields)

        def make(body: bytes) -> str:
            return "p." + wire.b64u_encode(body)

        good = make(b'{"a":1,"v":1}')
        self.assertEqual(load(good), {"a": 1, "v": 1})
        bad = [None, "q." + good[2:], good + "\u00e9", make(b"[1]"), "p.!!", make(b"{"), make(b'{"a":1}')]
        bad += [make(b'{"a":1,"v":1,"b":2}'), make(b'{"a":1,"v":2}'), make(b'{"a":1,"v":true}')]
        for text in bad:
            self.assertRaises(CorruptKeystore, load, text)
        e = self.assertRaises(CorruptKeystore, load, good, 5)
        self.assertEqual(str(e), "thing too long")

    def test_get_int_and_str(self) -> None:
        obj = {"i": 3, "b": True, "s": "x", "f": 3.0}
        self.assertEqual(get_int(obj, "i", LoginError), 3)
        self.assertEqual(get_str(obj, "s", LoginError), "x")
        for name in ("b", "f", "s", "missing"):
            self.assertRaises(LoginError, get_int, obj, name, LoginError)
        self.assertRaises(LoginError, get_str, obj, "i", LoginError)

    def test_password_bytes(self) -> None:
        self.assertEqual(password_bytes("e\u0301", LoginError), "\u00e9".encode())
        for bad in ("", None, "\ud800"):
            self.assertRaises(LoginError, password_bytes, bad, LoginError)
