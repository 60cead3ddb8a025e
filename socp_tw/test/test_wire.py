"""Tests for socp_tw.wire: the envelope, canonical JSON, base64url, UUIDs, helpers."""

import base64
import json
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from socp_tw import wire
from socp_tw.test import keys

ALICE = keys.vector_id("alice")
BOB = keys.vector_id("bob")
SERVER = "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b"

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def frame(**overrides: object) -> dict:
    """A valid MSG_DIRECT envelope dict; ``overrides`` replace fields, ``DROP`` removes one."""
    obj = {
        "type": "MSG_DIRECT",
        "from": ALICE,
        "to": BOB,
        "ts": 1764115200123,
        "payload": {"ciphertext": "abc", "sender_pub": "k", "content_sig": "s"},
        "sig": "c2ln",
    }
    for key, value in overrides.items():
        key = "from" if key == "from_" else key
        if value is DROP:
            obj.pop(key, None)
        else:
            obj[key] = value
    return obj


DROP = object()


def raw(obj: object) -> bytes:
    return json.dumps(obj).encode("utf-8")


class VectorsFileTests(SynchronousTestCase):
    def test_vectors_loaded(self) -> None:
        """The packaged vectors parse and hold the sections the suites rely on."""
        for section in ("keys", "ids", "canonical", "transport_sig", "content_sig_dm", "oaep", "bad_keys"):
            self.assertIn(section, keys.VECTORS)

    def test_copy_matches_shared(self) -> None:
        """Our packaged copy is byte-identical to the project-wide one, when that exists."""
        shared = keys.shared_vectors_path()
        if shared is None:
            raise SkipTest("no shared/vectors/socp-v1.3-vectors.json beside this checkout (or $SOCP_VECTORS)")
        self.assertEqual(keys.VECTORS_PATH.read_bytes(), shared.read_bytes())


class CanonicalTests(SynchronousTestCase):
    def test_vectors(self) -> None:
        """canonical() and canonical_unicode() reproduce the reference serialisations exactly."""
        cases = keys.VECTORS["canonical"]
        self.assertTrue(cases)
        for case in cases:
            self.assertEqual(wire.canonical(case["payload"]), case["canonical"].encode("utf-8"))
            if "canonical_ensure_ascii_false" in case:
                self.assertEqual(
                    wire.canonical_unicode(case["payload"]),
                    case["canonical_ensure_ascii_false"].encode("utf-8"),
                )
            else:
                self.assertEqual(wire.canonical_unicode(case["payload"]), case["canonical"].encode("utf-8"))

    def test_ascii_escapes(self) -> None:
        self.assertEqual(wire.canonical({"k": "é😀"}), b'{"k":"\\u00e9\\ud83d\\ude00"}')
        self.assertEqual(wire.canonical_unicode({"k": "é😀"}), '{"k":"é😀"}'.encode())

    def test_sorted_nested(self) -> None:
        self.assertEqual(
            wire.canonical({"b": [{"z": 1, "a": 2}], "a": None}), b'{"a":null,"b":[{"a":2,"z":1}]}'
        )


class Base64Tests(SynchronousTestCase):
    def test_round_trip(self) -> None:
        for n in range(0, 70):
            data = bytes(range(256))[:n] + bytes([0xFB, 0xFF] * (n % 3))
            text = wire.b64u_encode(data)
            self.assertNotIn("=", text)
            self.assertNotIn("+", text)
            self.assertNotIn("/", text)
            self.assertEqual(wire.b64u_decode(text), data)

    def test_empty(self) -> None:
        self.assertEqual(wire.b64u_encode(b""), "")
        self.assertEqual(wire.b64u_decode(""), b"")

    def test_url_alphabet(self) -> None:
        self.assertEqual(wire.b64u_encode(b"\xfb\xff"), "-_8")

    def test_padded_accepted(self) -> None:
        self.assertEqual(wire.b64u_decode("QQ=="), b"A")
        self.assertEqual(wire.b64u_decode("QUI="), b"AB")
        self.assertEqual(wire.b64u_decode("QUJD"), b"ABC")

    def test_standard_alphabet_accepted(self) -> None:
        data = b"\xfb\xff\xbf" * 5
        self.assertEqual(wire.b64u_decode(base64.b64encode(data).decode()), data)
        self.assertEqual(wire.b64u_decode("+/8="), b"\xfb\xff")

    def test_whitespace_ignored(self) -> None:
        data = bytes(range(100))
        text = base64.encodebytes(data).decode()  # 76-column lines, trailing newline
        self.assertIn("\n", text)
        self.assertEqual(wire.b64u_decode(text), data)
        self.assertEqual(wire.b64u_decode(" QU\tJD\r\n"), b"ABC")

    def test_junk_rejected(self) -> None:
        for junk in ("Q", "QUJDR", "QQ=", "QUJD=", "QQ===", "Q=Q=", "QQ!=", "QUJ€", "=QQ", "QQ\u00a0"):
            with self.assertRaises(wire.BadBase64, msg=junk) as cm:
                wire.b64u_decode(junk)
            self.assertEqual(cm.exception.code, "BAD_BASE64")
            self.assertIsInstance(cm.exception, wire.FrameError)

    def test_non_str_rejected(self) -> None:
        for junk in (b"QUJD", None, 123, ["QQ"]):
            self.assertRaises(wire.BadBase64, wire.b64u_decode, junk)

    @FUZZ
    @given(st.binary(max_size=600))
    def test_round_trip_fuzz(self, data: bytes) -> None:
        self.assertEqual(wire.b64u_decode(wire.b64u_encode(data)), data)

    @FUZZ
    @given(st.text(max_size=40))
    def test_decode_only_raises_bad_base64(self, text: str) -> None:
        try:
            wire.b64u_decode(text)
        except wire.BadBase64:
            pass


class UUIDTests(SynchronousTestCase):
    def test_new(self) -> None:
        ids = {wire.new_uuid4() for _ in range(50)}
        self.assertEqual(len(ids), 50)
        for value in ids:
            self.assertTrue(wire.is_uuid4(value))
            self.assertTrue(wire.is_uuid(value))
            self.assertEqual(value, value.lower())

    def test_tolerant(self) -> None:
        """Any version/variant and any case is a UUID on input (the vector ids have variant 0)."""
        for value in (
            ALICE,
            BOB,
            SERVER.upper(),
            "00000000-0000-0000-0000-000000000000",
            "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        ):
            self.assertTrue(wire.is_uuid(value), value)

    def test_strict(self) -> None:
        self.assertTrue(wire.is_uuid4(SERVER))
        self.assertTrue(wire.is_uuid4(SERVER.upper()))
        self.assertFalse(wire.is_uuid4(ALICE))  # variant bits 0001: not RFC 4122
        self.assertFalse(wire.is_uuid4("6ba7b810-9dad-11d1-80b4-00c04fd430c8"))  # version 1
        self.assertFalse(wire.is_uuid4("6f1c2a9e-3b4d-4e5f-ca7b-9c0d1e2f3a4b"))  # variant 110x

    def test_rejected(self) -> None:
        for value in (
            "",
            "auto",
            "*",
            SERVER + "\n",
            SERVER[:-1],
            SERVER.replace("-", ""),
            "{" + SERVER + "}",
            "6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4g",
            "\u0660" * 8 + SERVER[8:],
            None,
            5,
            b"6f1c2a9e-3b4d-4e5f-8a7b-9c0d1e2f3a4b",
        ):
            self.assertFalse(wire.is_uuid(value), repr(value))
            self.assertFalse(wire.is_uuid4(value), repr(value))


class TimeTests(SynchronousTestCase):
    def test_now(self) -> None:
        before = int(time.time() * 1000)
        now = wire.now_ms()
        self.assertIsInstance(now, int)
        self.assertTrue(before <= now <= int(time.time() * 1000))

    def test_given(self) -> None:
        self.assertEqual(wire.now_ms(1764115200.123456), 1764115200123)
        self.assertEqual(wire.now_ms(0), 0)
        self.assertIsInstance(wire.now_ms(1.5), int)


class ErrorTests(SynchronousTestCase):
    def test_codes(self) -> None:
        expected = {
            wire.NotUTF8: "BAD_ENCODING",
            wire.NotJSON: "BAD_JSON",
            wire.NotAnObject: "BAD_FRAME",
            wire.MissingField: "MISSING_FIELD",
            wire.BadFieldType: "BAD_FIELD",
            wire.BadUUID: "BAD_UUID",
            wire.BadTimestamp: "BAD_TS",
            wire.Oversize: "TOO_LARGE",
            wire.BadBase64: "BAD_BASE64",
            wire.InvalidSig: "INVALID_SIG",
            wire.RateLimited: "RATE_LIMITED",
        }
        for cls, code in expected.items():
            self.assertTrue(issubclass(cls, wire.FrameError))
            self.assertTrue(issubclass(cls, ValueError))
            self.assertEqual(cls.code, code)
            error = cls("field 'x' is wrong", "x")
            self.assertEqual(
                (error.detail, error.field, error.code, str(error)),
                ("field 'x' is wrong", "x", code, "field 'x' is wrong"),
            )
            self.assertIn(code, repr(error))
        self.assertIsNone(wire.FrameError("whole frame").field)

    def test_error_payload(self) -> None:
        self.assertEqual(
            wire.error_payload("USER_NOT_FOUND", "no such user"),
            {"code": "USER_NOT_FOUND", "detail": "no such user"},
        )


class ParseTests(SynchronousTestCase):
    def assertFrameError(
        self, cls: type, data: object, field: str | None = None, **kw: object
    ) -> wire.FrameError:
        with self.assertRaises(cls) as cm:
            if isinstance(data, dict):
                data = raw(data)
            wire.parse_envelope(data, **kw)  # type: ignore[arg-type]
        error = cm.exception
        self.assertEqual(type(error), cls)
        self.assertEqual(error.code, cls.code)
        self.assertTrue(error.detail)
        if field is not None:
            self.assertEqual(error.field, field)
            self.assertIn(field, error.detail)
        return error

    def test_valid(self) -> None:
        env = wire.parse_envelope(raw(frame()))
        self.assertEqual(
            env, wire.Envelope("MSG_DIRECT", ALICE, BOB, 1764115200123, frame()["payload"], "c2ln")
        )
        self.assertIsInstance(env.ts, int)

    def test_str_input(self) -> None:
        env = wire.parse_envelope(json.dumps(frame(payload={"name": "café ☕"}), ensure_ascii=False))
        self.assertEqual(env.payload, {"name": "café ☕"})

    def test_bytearray_and_bom(self) -> None:
        self.assertEqual(wire.parse_envelope(bytearray(raw(frame()))).from_, ALICE)
        self.assertEqual(wire.parse_envelope(b"\xef\xbb\xbf" + raw(frame())).from_, ALICE)

    def test_to_dict(self) -> None:
        env = wire.parse_envelope(raw(frame()))
        self.assertEqual(env.to_dict(), frame())
        self.assertEqual(wire.envelope_from_dict(env.to_dict()), env)

    def test_frozen(self) -> None:
        env = wire.parse_envelope(raw(frame()))
        with self.assertRaises(AttributeError):
            env.ts = 1  # type: ignore[misc]

    def test_encode_round_trip(self) -> None:
        payload = {"ciphertext": "x", "meta": {"display_name": "Zoë 😀", "n": [1, 2.5, None, True]}}
        data = wire.encode_frame("MSG_DIRECT", ALICE, BOB, 1764115200123, payload, "c2ln")
        self.assertIsInstance(data, bytes)
        self.assertNotIn(b" ", data.replace(b"Zo\xc3\xab \xf0", b""))  # compact separators
        self.assertIn("Zoë 😀".encode(), data)  # UTF-8, not \u escapes
        env = wire.parse_envelope(data)
        self.assertEqual(env, wire.Envelope("MSG_DIRECT", ALICE, BOB, 1764115200123, payload, "c2ln"))
        self.assertEqual(json.loads(data), env.to_dict())

    def test_encode_unsigned_has_empty_sig(self) -> None:
        data = wire.encode_frame("HEARTBEAT", SERVER, "*", 5, {})
        self.assertEqual(json.loads(data)["sig"], "")
        self.assertEqual(wire.parse_envelope(data).sig, "")

    def test_encode_lone_surrogate_escaped(self) -> None:
        data = wire.encode_frame("X", SERVER, "*", 5, {"t": "\ud800"})
        self.assertIn(b"\\ud800", data)
        data.decode("ascii")

    def test_encode_strict(self) -> None:
        self.assertRaises(TypeError, wire.encode_frame, "X", SERVER, "*", 5.0, {})
        self.assertRaises(TypeError, wire.encode_frame, "X", SERVER, "*", True, {})
        self.assertRaises(ValueError, wire.encode_frame, "X", SERVER, "*", 5, {"n": float("nan")})

    # -- size, encoding, JSON, object ---------------------------------------------

    def test_oversize_bytes(self) -> None:
        data = raw(frame(payload={"ciphertext": "A" * 1000}))
        self.assertEqual(wire.parse_envelope(data, max_bytes=len(data)).payload["ciphertext"], "A" * 1000)
        self.assertFrameError(wire.Oversize, data, max_bytes=len(data) - 1)
        self.assertFrameError(wire.Oversize, b"\xff" * (wire.MAX_FRAME_BYTES + 1))  # size before UTF-8

    def test_oversize_default(self) -> None:
        data = raw(frame(payload={"ciphertext": "A" * wire.MAX_FRAME_BYTES}))
        self.assertFrameError(wire.Oversize, data)
        self.assertFrameError(wire.Oversize, data.decode())

    def test_oversize_str_measured_in_utf8(self) -> None:
        text = json.dumps(frame(payload={"t": "é" * 400}), ensure_ascii=False)
        size = len(text.encode())
        self.assertLess(len(text), size)
        self.assertEqual(wire.parse_envelope(text, max_bytes=size).payload["t"], "é" * 400)
        self.assertFrameError(wire.Oversize, text, max_bytes=size - 1)

    def test_not_utf8(self) -> None:
        self.assertFrameError(wire.NotUTF8, b'{"type":"\xff"}')
        self.assertFrameError(wire.NotUTF8, b'{"type":"\xed\xa0\x80"}')  # encoded surrogate
        self.assertFrameError(wire.NotUTF8, '{"type":"\ud800"}')  # raw lone surrogate in str
        self.assertFrameError(wire.NotUTF8, 12)

    def test_lone_surrogate_escape(self) -> None:
        self.assertFrameError(wire.NotUTF8, raw(frame(payload={"t": "\ud800"})), "payload")
        self.assertFrameError(wire.NotUTF8, raw(frame(payload={"\udfff": 1})), "payload")
        self.assertFrameError(wire.NotUTF8, raw(frame(to="\udc00")), "to")
        self.assertFrameError(wire.NotUTF8, raw(frame(sig="\ud9ff")), "sig")
        self.assertFrameError(wire.NotUTF8, raw(frame(type="SERVER_HELLO_JOIN", from_="\ud800")), "from")
        # A well-formed escaped pair is fine.
        env = wire.parse_envelope(raw(frame(payload={"t": "😀"})))
        self.assertEqual(env.payload["t"], "😀")

    def test_not_json(self) -> None:
        for data in (b"", b"{", b"{'type':1}", b"[1,]", b'{"a":1}x', b"\x00", b"nul"):
            self.assertFrameError(wire.NotJSON, data)

    def test_not_json_constants(self) -> None:
        for const in ("NaN", "Infinity", "-Infinity"):
            self.assertFrameError(wire.NotJSON, raw(frame()).replace(b"1764115200123", const.encode()))
            self.assertFrameError(wire.NotJSON, b'{"payload":{"x":' + const.encode() + b"}}")

    def test_not_json_overflow(self) -> None:
        self.assertFrameError(wire.NotJSON, raw(frame()).replace(b"1764115200123", b"1e999"))
        self.assertFrameError(wire.NotJSON, b'{"x":' + b"9" * 5000 + b"}")  # int digit limit
        self.assertFrameError(wire.NotJSON, b"[" * 100000 + b"]" * 100000)  # recursion

    def test_too_deep_payload(self) -> None:
        nested: object = "x"
        for _ in range(wire.MAX_DEPTH - 1):
            nested = [nested]
        wire.parse_envelope(raw(frame(payload={"a": nested})))
        self.assertFrameError(wire.BadFieldType, raw(frame(payload={"a": [nested]})), "payload")
        self.assertFrameError(wire.BadFieldType, raw(frame(payload={"a": {"b": nested}})), "payload")

    def test_duplicate_keys_last_wins(self) -> None:
        env = wire.parse_envelope(raw(frame())[:-1] + b',"to":"*"}')
        self.assertEqual(env.to, "*")

    def test_not_an_object(self) -> None:
        for data in (b"[]", b"1", b'"x"', b"null", b"true", b"[{}]"):
            self.assertFrameError(wire.NotAnObject, data)
        self.assertFrameError(wire.NotAnObject, "[]")
        for value in ([], None, "x", 1):
            self.assertRaises(wire.NotAnObject, wire.envelope_from_dict, value)

    # -- type ---------------------------------------------------------------------

    def test_type(self) -> None:
        self.assertFrameError(wire.MissingField, frame(type=DROP), "type")
        self.assertFrameError(wire.MissingField, frame(type=None), "type")
        for bad in (1, True, ["MSG_DIRECT"], {}):
            self.assertFrameError(wire.BadFieldType, frame(type=bad), "type")
        for bad in ("", "A" * 65, "MSG DIRECT", "MSG-DIRECT", "MSG_DIRÉCT", "MSG_DIRECT\n", "\u0661"):
            self.assertFrameError(wire.BadFieldType, frame(type=bad), "type")
        self.assertEqual(wire.parse_envelope(raw(frame(type="A" * 64))).type, "A" * 64)
        self.assertEqual(wire.parse_envelope(raw(frame(type="x_9"))).type, "x_9")

    # -- from ---------------------------------------------------------------------

    def test_from(self) -> None:
        self.assertFrameError(wire.MissingField, frame(from_=DROP), "from")
        self.assertFrameError(wire.MissingField, frame(from_=None), "from")
        for bad in (1, [], {}, False):
            self.assertFrameError(wire.BadFieldType, frame(from_=bad), "from")
        self.assertFrameError(wire.BadFieldType, frame(from_="a" * 129), "from")
        for bad in ("", "auto", "*", "alice", SERVER + " "):
            self.assertFrameError(wire.BadUUID, frame(from_=bad), "from")
        self.assertEqual(wire.parse_envelope(raw(frame(from_=SERVER.upper()))).from_, SERVER.upper())

    def test_from_join(self) -> None:
        for sender in ("auto", "", "server-one", SERVER, "x" * 128):
            env = wire.parse_envelope(raw(frame(type="SERVER_HELLO_JOIN", from_=sender, to="10.0.0.1:9000")))
            self.assertEqual((env.from_, env.to), (sender, "10.0.0.1:9000"))
        self.assertFrameError(wire.BadFieldType, frame(type="SERVER_HELLO_JOIN", from_="x" * 129), "from")
        self.assertFrameError(wire.BadFieldType, frame(type="SERVER_HELLO_JOIN", from_=7), "from")

    # -- to -----------------------------------------------------------------------

    def test_to(self) -> None:
        for to in ("*", BOB, "public", "host.example:9000", "", "x" * 255):
            self.assertEqual(wire.parse_envelope(raw(frame(to=to))).to, to)
        self.assertFrameError(wire.MissingField, frame(to=DROP), "to")
        self.assertFrameError(wire.MissingField, frame(to=None), "to")
        self.assertFrameError(wire.BadFieldType, frame(to="x" * 256), "to")
        for bad in (1, [BOB], {}, True):
            self.assertFrameError(wire.BadFieldType, frame(to=bad), "to")

    # -- ts -----------------------------------------------------------------------

    def test_ts_float_truncated(self) -> None:
        for given_ts, expected in (
            (1764115200123.9, 1764115200123),
            (0.5, 0),
            (-0.0, 0),
            (12.0, 12),
            (99999999999999.9, 99999999999999),
        ):
            env = wire.parse_envelope(raw(frame(ts=given_ts)))
            self.assertEqual(env.ts, expected)
            self.assertIs(type(env.ts), int)

    def test_ts_bounds(self) -> None:
        self.assertEqual(wire.parse_envelope(raw(frame(ts=0))).ts, 0)
        self.assertEqual(wire.parse_envelope(raw(frame(ts=10**14 - 1))).ts, 10**14 - 1)
        for bad in (-1, -0.5, 10**14, 1e14, 10**400, 1e300):
            self.assertFrameError(wire.BadTimestamp, frame(ts=bad), "ts")

    def test_ts_types(self) -> None:
        self.assertFrameError(wire.MissingField, frame(ts=DROP), "ts")
        self.assertFrameError(wire.MissingField, frame(ts=None), "ts")
        for bad in (True, False, "1764115200123", [1], {}):
            self.assertFrameError(wire.BadTimestamp, frame(ts=bad), "ts")

    def test_ts_non_finite_via_dict(self) -> None:
        for bad in (float("nan"), float("inf"), float("-inf")):
            with self.assertRaises(wire.BadTimestamp):
                wire.envelope_from_dict(frame(ts=bad))

    # -- payload ------------------------------------------------------------------

    def test_payload(self) -> None:
        self.assertFrameError(wire.MissingField, frame(payload=DROP), "payload")
        self.assertFrameError(wire.MissingField, frame(payload=None), "payload")
        for bad in ([], "x", 1, True):
            self.assertFrameError(wire.BadFieldType, frame(payload=bad), "payload")
        self.assertEqual(wire.parse_envelope(raw(frame(payload={}))).payload, {})

    def test_heartbeat_without_payload(self) -> None:
        env = wire.parse_envelope(raw(frame(type="HEARTBEAT", payload=DROP, to="*")))
        self.assertEqual(env.payload, {})
        env = wire.parse_envelope(raw(frame(type="HEARTBEAT", payload=None)))
        self.assertEqual(env.payload, {})
        self.assertFrameError(wire.BadFieldType, frame(type="HEARTBEAT", payload=[]), "payload")
        self.assertFrameError(wire.MissingField, frame(type="HEARTBEAT", ts=DROP), "ts")

    def test_ctrl_close_sparse(self) -> None:
        """``{"type":"CTRL_CLOSE"}`` alone, as the spec shows it, is accepted."""
        env = wire.parse_envelope(b'{"type":"CTRL_CLOSE"}')
        self.assertEqual(env, wire.Envelope("CTRL_CLOSE", "", "", 0, {}, ""))
        for sender in ("", "*", SERVER):
            env = wire.parse_envelope(raw(frame(type="CTRL_CLOSE", from_=sender, to=DROP, payload=DROP)))
            self.assertEqual((env.from_, env.to, env.payload), (sender, "", {}))
        self.assertFrameError(wire.BadUUID, frame(type="CTRL_CLOSE", from_="auto"), "from")
        self.assertFrameError(wire.BadTimestamp, frame(type="CTRL_CLOSE", ts="x"), "ts")
        self.assertFrameError(wire.BadFieldType, frame(type="CTRL_CLOSE", to=5), "to")

    # -- sig and extras -----------------------------------------------------------

    def test_sig(self) -> None:
        self.assertEqual(wire.parse_envelope(raw(frame(sig=DROP))).sig, "")
        self.assertEqual(wire.parse_envelope(raw(frame(sig=None))).sig, "")
        self.assertEqual(wire.parse_envelope(raw(frame(sig=""))).sig, "")
        for bad in (1, ["x"], {}, True):
            self.assertFrameError(wire.BadFieldType, frame(sig=bad), "sig")

    def test_extra_fields_ignored(self) -> None:
        env = wire.parse_envelope(raw(frame(extra={"deep": [1, 2]}, version="1.3", id=None)))
        self.assertEqual(env, wire.parse_envelope(raw(frame())))
        self.assertNotIn("extra", env.to_dict())

    def test_envelope_from_dict_checks_strings(self) -> None:
        with self.assertRaises(wire.NotUTF8):
            wire.envelope_from_dict(frame(payload={"a": ["\udfff"]}))

    # -- fuzz ---------------------------------------------------------------------

    @FUZZ
    @given(st.binary(max_size=300))
    def test_fuzz_bytes(self, data: bytes) -> None:
        """Arbitrary bytes raise nothing but FrameError."""
        try:
            wire.parse_envelope(data, max_bytes=200)
        except wire.FrameError:
            pass

    @FUZZ
    @given(
        st.recursive(
            st.none()
            | st.booleans()
            | st.integers()
            | st.floats(allow_nan=False, allow_infinity=False)
            | st.text(max_size=10),
            lambda children: (
                st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
            ),
            max_leaves=20,
        )
    )
    def test_fuzz_json_values(self, value: object) -> None:
        """Arbitrary JSON values raise nothing but FrameError."""
        for data in (json.dumps(value), json.dumps(value).encode()):
            try:
                wire.parse_envelope(data)
            except wire.FrameError:
                pass

    _scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(10**16), max_value=10**16)
        | st.floats()
        | st.text(max_size=12)
        | st.sampled_from([ALICE, "*", "auto", ""])
    )
    _values = st.recursive(
        _scalars,
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
        max_leaves=8,
    )

    @FUZZ
    @given(
        st.fixed_dictionaries(
            {},
            optional={
                "type": st.sampled_from(
                    ["MSG_DIRECT", "SERVER_HELLO_JOIN", "CTRL_CLOSE", "HEARTBEAT", "", "x y"]
                )
                | _values,
                "from": st.sampled_from([ALICE, "auto", "", "*"]) | _values,
                "to": st.sampled_from(["*", BOB, "h:1"]) | _values,
                "ts": st.integers(min_value=-5, max_value=10**15) | st.floats() | _values,
                "payload": st.dictionaries(st.text(max_size=5), _values, max_size=4) | _values,
                "sig": st.text(max_size=8) | _values,
            },
        )
    )
    def test_fuzz_envelope_shaped(self, obj: dict) -> None:
        """Envelope-shaped objects with random field values: FrameError or a sound Envelope."""
        try:
            data = json.dumps(obj, allow_nan=True).encode()
        except (ValueError, RecursionError):  # pragma: no cover
            return
        try:
            env = wire.parse_envelope(data)
        except wire.FrameError as e:
            self.assertTrue(e.detail)
            return
        self.assertSound(env)

    @FUZZ
    @given(
        st.sampled_from(["type", "from", "to", "ts", "payload", "sig"]),
        st.sampled_from(["MSG_DIRECT", "SERVER_HELLO_JOIN", "CTRL_CLOSE", "HEARTBEAT"]),
        st.just(DROP) | _values,
    )
    def test_fuzz_one_field(self, field: str, ftype: str, value: object) -> None:
        """A valid frame with one field replaced by anything: FrameError or a sound Envelope."""
        obj = frame(type=ftype)
        if value is DROP:
            del obj[field]
        else:
            obj[field] = value
        try:
            env = wire.parse_envelope(json.dumps(obj, allow_nan=True))
        except wire.FrameError as e:
            self.assertTrue(e.detail)
            if e.field is not None:
                self.assertIn(e.field, ("type", "from", "to", "ts", "payload", "sig"))
            return
        self.assertSound(env)

    def assertSound(self, env: wire.Envelope) -> None:
        """An accepted frame is well typed, re-encodes, parses back identically and canonicalises."""
        self.assertIsInstance(env.type, str)
        self.assertIsInstance(env.from_, str)
        self.assertIsInstance(env.to, str)
        self.assertIs(type(env.ts), int)
        self.assertIsInstance(env.payload, dict)
        self.assertIsInstance(env.sig, str)
        self.assertEqual(wire.parse_envelope(wire.encode_frame(**_kwargs(env))), env)
        wire.canonical(env.payload)
        wire.canonical_unicode(env.payload)

    def test_non_json_values_via_dict(self) -> None:
        """envelope_from_dict names even non-JSON types in its errors."""
        with self.assertRaises(wire.BadFieldType) as cm:
            wire.envelope_from_dict(frame(to=b"x"))
        self.assertIn("bytes", cm.exception.detail)


def _kwargs(env: wire.Envelope) -> dict:
    return {
        "type": env.type,
        "from_": env.from_,
        "to": env.to,
        "ts": env.ts,
        "payload": env.payload,
        "sig": env.sig,
    }


class RequireTests(SynchronousTestCase):
    payload = {
        "s": "text",
        "e": "",
        "i": 5,
        "f": 3.0,
        "h": 2.5,
        "b": True,
        "n": None,
        "u": SERVER,
        "l": [1, 2],
        "d": {"k": 1},
    }

    def check(self, cls: type, fn, field: str, **kw: object) -> None:
        with self.assertRaises(cls) as cm:
            fn(self.payload, field, **kw)
        self.assertEqual(cm.exception.field, field)
        self.assertIn(repr(field), cm.exception.detail)

    def test_require_str(self) -> None:
        self.assertEqual(wire.require_str(self.payload, "s"), "text")
        self.assertEqual(wire.require_str(self.payload, "e", allow_empty=True), "")
        self.assertEqual(wire.require_str(self.payload, "s", max_len=4), "text")
        self.check(wire.BadFieldType, wire.require_str, "s", max_len=3)
        self.check(wire.BadFieldType, wire.require_str, "e")
        self.check(wire.BadFieldType, wire.require_str, "i")
        self.check(wire.BadFieldType, wire.require_str, "l")
        self.check(wire.MissingField, wire.require_str, "missing")
        self.check(wire.MissingField, wire.require_str, "n")

    def test_require_int(self) -> None:
        self.assertEqual(wire.require_int(self.payload, "i"), 5)
        self.assertEqual(wire.require_int(self.payload, "i", minimum=5, maximum=5), 5)
        result = wire.require_int(self.payload, "f")
        self.assertEqual((result, type(result)), (3, int))
        self.assertEqual(wire.require_int({"x": -3}, "x", minimum=None), -3)
        self.check(wire.BadFieldType, wire.require_int, "b")
        self.check(wire.BadFieldType, wire.require_int, "h")
        self.check(wire.BadFieldType, wire.require_int, "s")
        self.check(wire.BadFieldType, wire.require_int, "i", minimum=6)
        self.check(wire.BadFieldType, wire.require_int, "i", maximum=4)
        self.check(wire.MissingField, wire.require_int, "missing")
        self.assertRaises(wire.BadFieldType, wire.require_int, {"x": -1}, "x")  # default minimum 0
        self.assertRaises(wire.BadFieldType, wire.require_int, {"x": float("inf")}, "x")

    def test_require_uuid(self) -> None:
        self.assertEqual(wire.require_uuid(self.payload, "u"), SERVER)
        self.assertEqual(wire.require_uuid({"x": ALICE}, "x"), ALICE)
        self.check(wire.BadUUID, wire.require_uuid, "s")
        self.check(wire.BadFieldType, wire.require_uuid, "i")
        self.check(wire.BadFieldType, wire.require_uuid, "e")
        self.check(wire.MissingField, wire.require_uuid, "missing")

    def test_require_list(self) -> None:
        self.assertEqual(wire.require_list(self.payload, "l"), [1, 2])
        self.assertEqual(wire.require_list(self.payload, "l", max_len=2), [1, 2])
        self.check(wire.BadFieldType, wire.require_list, "l", max_len=1)
        self.check(wire.BadFieldType, wire.require_list, "d")
        self.check(wire.MissingField, wire.require_list, "missing")

    def test_require_dict(self) -> None:
        self.assertEqual(wire.require_dict(self.payload, "d"), {"k": 1})
        self.check(wire.BadFieldType, wire.require_dict, "l")
        self.check(wire.MissingField, wire.require_dict, "n")

    def test_payload_not_a_dict(self) -> None:
        for fn in (
            wire.require_str,
            wire.require_int,
            wire.require_uuid,
            wire.require_list,
            wire.require_dict,
        ):
            self.assertRaises(wire.BadFieldType, fn, ["x"], "x")
