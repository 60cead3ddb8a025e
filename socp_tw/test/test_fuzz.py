"""Hypothesis throws malformed and mutated frames at the three kinds of link a server has.

(a) a pending link (nothing identified yet), (b) an authenticated user link and (c) a
server link, each served by the real hub, user side, file relay, public channel, router
and mesh over in-memory fakes.  Frames are random bytes, or valid frames with mutated
fields: wrong JSON types, huge strings within the frame limit, bad base64, bad or weak
keys, wrong signatures, unknown types, bad ids and timestamps.

What must hold for every frame: no exception escapes (and none is logged: trial fails a
test that logs an error); on user and pending links every frame gets an answer (an
ERROR with the precise code for a frame that does not parse, never ``INTERNAL``) unless
it is one of the quiet kinds; on a server link bad frames are dropped and counted,
never answered with an ERROR to an ERROR or ACK; and after each example the link still
works: a valid request gets its normal answer.

The connection rate limits are lifted here (they have their own tests): the point is
the handlers.  Deterministic (``derandomize``) so CI runs the same examples every time.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import crypto, wire
from socp_tw.auth.login import SrpClient
from socp_tw.auth.scrypt import TEST_SCRYPT
from socp_tw.auth.sealing import seal_private_key
from socp_tw.auth.verifier import make_verifier
from socp_tw.content import file_end_preimage
from socp_tw.identity import ServerIdentity
from socp_tw.limits import DEFAULT_LIMITS
from socp_tw.services.files import FileRelay
from socp_tw.services.hub import Hub
from socp_tw.services.mesh import Mesh
from socp_tw.services.presence import Presence
from socp_tw.services.public import PublicChannel
from socp_tw.services.router import Router
from socp_tw.services.userkeys import UserKeys
from socp_tw.services.users import UserSide
from socp_tw.signer import FrameSigner
from socp_tw.test.keys import test_key
from socp_tw.testing import FakeLink, FakeOutgoingLinks, MemoryStore, SynchronousWorkers

HERE = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
S1 = "6fa459ea-ee8a-4ca4-894e-db77e160355e"
ALICE = "2c1a4f6e-0c1f-4c39-9d0a-6f0f1e9b8a77"
BOB = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
CAROL = "9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
START = 1_700_000_000.0

#: The handlers are under test, not the limits (test_hub covers those).
OPEN_LIMITS = replace(
    DEFAULT_LIMITS,
    conn_rate=1e9,
    conn_burst=1e9,
    user_rate=1e9,
    user_burst=1e9,
    error_rate=1e9,
    error_burst=1e9,
    forged_limit=10**9,
    peer_rate=1e9,
    peer_burst=1e9,
)
#: Frames that are silent by design when accepted (PROTOCOL.md §5: ERROR and ACK are never answered).
QUIET = frozenset({"HEARTBEAT", "ERROR", "ACK"})
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

_WEAK_KEY = crypto.encode_public_key(rsa.generate_private_key(65537, 1024).public_key())


def _pub(index: int, pem: bool = False) -> str:
    return crypto.encode_public_key(test_key(index), pem=pem)


# -- strategies ---------------------------------------------------------------------------------------

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
hostile_strings = st.one_of(
    st.text(max_size=80),
    st.integers(min_value=0, max_value=200_000).map(lambda n: "A" * n),  # huge, within the frame limit
    st.sampled_from(["", "!!!", "====", "not base64 at all", "\ud800", "\u0000", "*", "a|b", "-" * 64]),
    st.binary(max_size=700).map(wire.b64u_encode),  # bad keys, wrong signatures, junk ciphertext
    st.sampled_from([_pub(6), _pub(7), _pub(6, pem=True), _WEAK_KEY]),  # real, other, PEM and weak keys
    st.uuids().map(str),
    st.sampled_from([ALICE, BOB, CAROL, HERE, S1, ALICE.upper()]),
)
field_values = st.one_of(json_values, hostile_strings)
FIELD_NAMES = [
    "user_id",
    "pubkey",
    "ciphertext",
    "content_sig",
    "sender",
    "sender_pub",
    "file_id",
    "index",
    "size",
    "sha256",
    "name",
    "mode",
    "chunks",
    "nonce",
    "proof",
    "A",
    "M1",
    "code",
    "msg_ref",
    "host",
    "port",
    "server_id",
    "meta",
    "type",
    "extra",
]


@st.composite
def mutated(draw, templates: list[dict[str, Any]]) -> bytes:
    """A template frame with one to three mutations, as the bytes a peer would send."""
    frame = copy.deepcopy(draw(st.sampled_from(templates)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        op = draw(
            st.sampled_from(["set", "set", "drop", "type", "from", "to", "ts", "sig", "payload", "key"])
        )
        payload = frame.get("payload")
        if op == "set" and isinstance(payload, dict):
            payload[draw(st.sampled_from([*payload, *FIELD_NAMES]))] = draw(field_values)
        elif op == "drop" and isinstance(payload, dict) and payload:
            del payload[draw(st.sampled_from(sorted(payload)))]
        elif op == "type":
            frame["type"] = draw(
                st.one_of(st.sampled_from(sorted({t["type"] for t in templates})), field_values)
            )
        elif op in ("from", "to", "sig"):
            frame[op] = draw(field_values)
        elif op == "ts":
            frame["ts"] = draw(st.one_of(json_values, st.integers(min_value=-(10**15), max_value=10**15)))
        elif op == "payload":
            frame["payload"] = draw(json_values)
        elif op == "key":
            frame.pop(draw(st.sampled_from(["type", "from", "to", "ts", "payload", "sig"])), None)
    return json.dumps(frame).encode("utf-8")


@st.composite
def payload_mutated(draw, templates: list[dict[str, Any]]) -> bytes:
    """A template whose envelope stays valid and whose payload fields are mutated: reaches the handlers."""
    frame = copy.deepcopy(draw(st.sampled_from(templates)))
    payload = frame["payload"]
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        if payload and draw(st.booleans()):
            name = draw(st.sampled_from(sorted(payload)))
            if draw(st.integers(0, 3)) == 0:
                del payload[name]
            else:
                payload[name] = draw(field_values)
        else:
            payload[draw(st.sampled_from(FIELD_NAMES))] = draw(field_values)
    return json.dumps(frame).encode("utf-8")


def raw_bytes() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=300),
        st.text(max_size=200).map(lambda t: t.encode("utf-8")),
        json_values.map(lambda v: json.dumps(v).encode("utf-8")),
    )


def frame_bytes(templates: list[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    truncated = mutated(templates).flatmap(lambda b: st.integers(0, len(b)).map(lambda n: b[:n]))
    reaching_handlers = payload_mutated(templates)
    return st.one_of(
        reaching_handlers, reaching_handlers, reaching_handlers, mutated(templates), raw_bytes(), truncated
    )


# -- fixtures ---------------------------------------------------------------------------------------------


class Server:
    """One server's services over fakes: hub, presence, mesh, router, users, files, public channel."""

    def __init__(self, case: SynchronousTestCase) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        key = test_key(0)
        identity = ServerIdentity(HERE, key, crypto.encode_public_key(key))
        self.workers = SynchronousWorkers()
        self.signer = FrameSigner(identity, self.workers, now_ms=self.now_ms)
        self.hub = Hub(self.signer, clock=self.clock, limits=OPEN_LIMITS)
        self.presence = Presence(HERE)
        self.user_keys = UserKeys()
        self.mesh = Mesh(
            self.signer,
            self.hub,
            self.presence,
            reactor=self.clock,
            advertise=("127.0.0.1", 9000),
            now_ms=self.now_ms,
            forged_limit=10**9,
            signed_refusals=10**9,  # every refusal answered: the back-off has its own tests
            limits=OPEN_LIMITS,
            user_keys=self.user_keys,
        )
        self.outgoing = FakeOutgoingLinks()
        self.mesh.set_outgoing(self.outgoing)
        self.router = Router(
            self.presence, self.signer, self.mesh, ts_window=300.0, now_ms=self.now_ms, clock=self.clock
        )
        self.store = MemoryStore(now_ms=self.now_ms)
        self.users = UserSide(
            self.hub,
            self.presence,
            self.router,
            self.store,
            self.signer,
            self.workers,
            clock=self.clock,
            limits=OPEN_LIMITS,
            user_keys=self.user_keys,
        )
        self.files = FileRelay(
            self.users,
            self.presence,
            self.router,
            self.workers,
            self.mesh,
            clock=self.clock,
            limits=OPEN_LIMITS,
        )
        self.public = PublicChannel(
            self.store,
            self.presence,
            self.mesh,
            self.router,
            self.users,
            self.signer,
            self.workers,
            clock=self.clock,
        )
        self.public.startService()
        case.addCleanup(self.stop)
        self.link_ids = 0

    def stop(self) -> None:
        self.public.stopService()
        self.files.stopService()
        if self.mesh.running:
            self.mesh.stopService()

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def open(self, role: str = "pending") -> FakeLink:
        self.link_ids += 1
        link = FakeLink(f"in-{self.link_ids}")
        self.hub.link_opened(link)
        return link

    def deliver(self, link: FakeLink, data: bytes) -> wire.Envelope | wire.FrameError:
        """What the WebSocket protocol does with a text message: parse, then hand it to the hub."""
        try:
            envelope = wire.parse_envelope(data)
        except wire.FrameError as error:
            self.hub.frame_rejected(link, error)
            return error
        self.hub.frame_received(link, envelope)
        return envelope


def frame(type_: str, from_: str, to: str, ts: int, payload: dict, sig: str = "") -> dict[str, Any]:
    return {"type": type_, "from": from_, "to": to, "ts": ts, "payload": payload, "sig": sig}


class _FuzzBase(SynchronousTestCase):
    def answers(self, link: FakeLink, since: int) -> list[dict]:
        return [json.loads(data) for data in link.sent[since:]]

    def check_answer(self, link: FakeLink, since: int, outcome, also_quiet: bool = False) -> None:
        answers = self.answers(link, since)
        codes = [a["payload"].get("code") for a in answers if a["type"] == "ERROR"]
        self.assertNotIn("INTERNAL", codes)
        if isinstance(outcome, wire.FrameError):
            # A malformed frame: its precise code on a user or pending link; dropped on a server link.
            self.assertEqual(codes, [] if link.role == "server" else [outcome.code], answers)
        elif outcome.type not in QUIET and not also_quiet:
            self.assertTrue(answers, f"no answer to {outcome.type}")


# -- (a) pending links -----------------------------------------------------------------------------------


class PendingLinkFuzz(_FuzzBase):
    def setUp(self) -> None:
        self.server = Server(self)
        now = self.server.now_ms()
        new_id = wire.new_uuid4()
        key = test_key(6)
        privkey_store = seal_private_key(key, "pw-pw-pw-pw", params=TEST_SCRYPT)
        verifier = make_verifier(new_id, "pw-pw-pw-pw", params=TEST_SCRYPT)
        register = {
            "user_id": new_id,
            "pubkey": _pub(6),
            "privkey_store": privkey_store,
            "pake_password": verifier,
        }
        address = {"host": "127.0.0.1", "port": 9101, "pubkey": _pub(1)}
        self.templates = [
            frame(
                "USER_HELLO", ALICE, "*", now, {"client": "fuzz", "pubkey": _pub(6), "enc_pubkey": _pub(6)}
            ),
            frame("USER_HELLO_CHALLENGE", ALICE, HERE, now, {}),
            frame("USER_REGISTER", new_id, "*", now, register, crypto.sign_payload(key, register)),
            frame(
                "USER_LOGIN_START",
                new_id,
                "*",
                now,
                {"user_id": new_id, "A": SrpClient(new_id, "x").start()},
            ),
            frame(
                "USER_LOGIN_PROOF", new_id, "*", now, {"user_id": new_id, "M1": wire.b64u_encode(b"m" * 32)}
            ),
            frame("SERVER_HELLO_LINK", S1, HERE, now, address, crypto.sign_payload(test_key(1), address)),
            frame(
                "SERVER_HELLO_JOIN",
                S1,
                "127.0.0.1:9000",
                now,
                address,
                crypto.sign_payload(test_key(1), address),
            ),
            frame("LIST_REQUEST", ALICE, "*", now, {}),
            frame("HEARTBEAT", ALICE, "*", now, {}),
            frame("NO_SUCH_TYPE", ALICE, "*", now, {"x": 1}),
        ]

    @FUZZ
    @given(st.data())
    def test_pending_link(self, data) -> None:
        server = self.server
        link = server.open()
        for raw in data.draw(st.lists(frame_bytes(self.templates), min_size=1, max_size=3)):
            since = len(link.sent)
            outcome = server.deliver(link, raw)
            # A server link accepted by the mesh, or a link it refused and closed, needs no more.
            self.check_answer(link, since, outcome, also_quiet=link.role == "server")
        self.still_usable(link)
        server.hub.link_closed(link, "example over")

    def still_usable(self, link: FakeLink) -> None:
        server = self.server
        if link.closed is not None or link.role == "server":
            return
        since = len(link.sent)
        if link.role == "user":
            server.deliver(link, wire.encode_frame("LIST_REQUEST", link.identity, "*", server.now_ms(), {}))
            self.assertEqual([a["type"] for a in self.answers(link, since)], ["LIST_RESPONSE"])
            return
        user = wire.new_uuid4()
        server.deliver(link, wire.encode_frame("USER_HELLO_CHALLENGE", user, HERE, server.now_ms(), {}))
        [answer] = self.answers(link, since)
        self.assertEqual(answer["type"], "USER_HELLO_NONCE", answer)


# -- (b) authenticated user links ----------------------------------------------------------------------------


class UserLinkFuzz(_FuzzBase):
    def setUp(self) -> None:
        self.server = Server(self)
        self.alice = self.online(ALICE, 6)
        self.bob = self.online(BOB, 7)
        self.alice.sent.clear()
        self.bob.sent.clear()
        self.templates = self.make_templates()

    def online(self, user_id: str, key_index: int) -> FakeLink:
        server = self.server
        link = server.open()
        hello = {"client": "fuzz", "pubkey": _pub(key_index), "enc_pubkey": _pub(key_index)}
        server.deliver(link, wire.encode_frame("USER_HELLO", user_id, HERE, server.now_ms(), hello))
        self.assertEqual(link.role, "user")
        return link

    def make_templates(self) -> list[dict[str, Any]]:
        now = self.server.now_ms()
        alice_key, bob_pub = test_key(6), test_key(7).public_key()
        ciphertext = crypto.oaep_encrypt(bob_pub, b"hello")
        dm_sig = crypto.sign_content(alice_key, crypto.dm_preimage(ciphertext, ALICE, BOB, now))
        public_sig = crypto.sign_content(alice_key, (ciphertext + ALICE + str(now)).encode())
        file_id = wire.new_uuid4()
        data = b"x" * 10
        sha = hashlib.sha256(data).hexdigest()
        start_sig = crypto.sign_content(
            alice_key, crypto.file_start_preimage(file_id, "f.txt", 10, sha, ALICE, BOB, now)
        )
        chunk = crypto.oaep_encrypt(bob_pub, data)
        chunk_sig = crypto.sign_content(
            alice_key, crypto.file_chunk_preimage(chunk, file_id, 0, ALICE, BOB, now)
        )
        end_sig = crypto.sign_content(alice_key, file_end_preimage(file_id, 1, ALICE, BOB, now))
        return [
            frame("LIST_REQUEST", ALICE, "*", now, {}),
            frame("PUBKEY_REQUEST", ALICE, "*", now, {"user_id": BOB}),
            frame(
                "MSG_DIRECT",
                ALICE,
                BOB,
                now,
                {"ciphertext": ciphertext, "sender_pub": _pub(6), "content_sig": dm_sig},
            ),
            frame(
                "MSG_PUBLIC_CHANNEL",
                ALICE,
                BOB,
                now,
                {"ciphertext": ciphertext, "sender_pub": _pub(6), "content_sig": public_sig},
            ),
            frame(
                "FILE_START",
                ALICE,
                BOB,
                now,
                {
                    "file_id": file_id,
                    "name": "f.txt",
                    "size": 10,
                    "sha256": sha,
                    "mode": "dm",
                    "content_sig": start_sig,
                },
            ),
            frame(
                "FILE_CHUNK",
                ALICE,
                BOB,
                now,
                {"file_id": file_id, "index": 0, "ciphertext": chunk, "content_sig": chunk_sig},
            ),
            frame("FILE_END", ALICE, BOB, now, {"file_id": file_id, "chunks": 1, "content_sig": end_sig}),
            frame("USER_HELLO", ALICE, HERE, now, {"pubkey": _pub(6)}),
            frame("SERVER_DELIVER", ALICE, HERE, now, {"user_id": BOB}),
            frame("HEARTBEAT", ALICE, "*", now, {}),
            frame("ERROR", ALICE, "*", now, {"code": "USER_NOT_FOUND", "detail": "x"}),
            frame("ACK", ALICE, "*", now, {"msg_ref": "USER_DELIVER"}),
            frame("NO_SUCH_TYPE", ALICE, "*", now, {}),
        ]

    @FUZZ
    @given(st.data())
    def test_user_link(self, data) -> None:
        server, alice, bob = self.server, self.alice, self.bob
        for raw in data.draw(st.lists(frame_bytes(self.templates), min_size=1, max_size=3)):
            since, bob_since = len(alice.sent), len(bob.sent)
            outcome = server.deliver(alice, raw)
            # Accepted user content is quiet for its sender: it reaches the recipient instead.
            delivered = len(bob.sent) > bob_since
            self.check_answer(alice, since, outcome, also_quiet=delivered)
        server.clock.advance(0.01)
        self.assertIsNone(alice.closed)
        since = len(alice.sent)
        server.deliver(alice, wire.encode_frame("LIST_REQUEST", ALICE, "*", server.now_ms(), {}))
        answers = [a for a in self.answers(alice, since) if a["type"] == "LIST_RESPONSE"]
        self.assertEqual([a["payload"]["online_users"] for a in answers], [sorted([ALICE, BOB])])
        self.assertEqual(alice.role, "user")


# -- (c) server links ------------------------------------------------------------------------------------


class ServerLinkFuzz(_FuzzBase):
    def setUp(self) -> None:
        self.server = server = Server(self)
        self.bob = self.local_user()
        self.link = server.open()
        address = {"host": "127.0.0.1", "port": 9101, "pubkey": _pub(1)}
        server.deliver(
            self.link,
            wire.encode_frame(
                "SERVER_HELLO_LINK",
                S1,
                HERE,
                server.now_ms(),
                address,
                crypto.sign_payload(test_key(1), address),
            ),
        )
        self.assertEqual(server.mesh.connected_servers(), [S1])
        self.link.sent.clear()
        self.templates = self.make_templates()
        self.users_seen = 0

    def local_user(self) -> FakeLink:
        link = FakeLink("bob", role="user", identity=BOB)
        self.server.presence.user_online_local(BOB, _pub(7), {}, link)
        return link

    def make_templates(self) -> list[dict[str, Any]]:
        now = self.server.now_ms()
        ciphertext = crypto.oaep_encrypt(test_key(7).public_key(), b"hi")
        dm_sig = crypto.sign_content(test_key(6), crypto.dm_preimage(ciphertext, ALICE, BOB, now))
        payloads = [
            (
                "USER_ADVERTISE",
                "*",
                {"user_id": CAROL, "server_id": S1, "pubkey": _pub(5), "meta": {"pubkey": _pub(5)}},
            ),
            ("USER_REMOVE", "*", {"user_id": CAROL, "server_id": S1}),
            ("SERVER_ANNOUNCE", "*", {"host": "127.0.0.1", "port": 9101, "pubkey": _pub(1)}),
            (
                "SERVER_DELIVER",
                HERE,
                {
                    "user_id": BOB,
                    "ciphertext": ciphertext,
                    "sender": ALICE,
                    "sender_pub": _pub(6),
                    "content_sig": dm_sig,
                },
            ),
            ("HEARTBEAT", HERE, {}),
            (
                "ERROR",
                HERE,
                {"code": "USER_NOT_FOUND", "detail": "x", "msg_ref": "SERVER_DELIVER", "sender": BOB},
            ),
            ("ACK", HERE, {"msg_ref": "SERVER_DELIVER"}),
            ("PUBLIC_CHANNEL_ADD", "*", {"events": [], "origins": {}}),
            ("PUBLIC_CHANNEL_UPDATED", "*", {"version": 1, "wraps": []}),
            ("SERVER_HELLO_LINK", HERE, {"host": "127.0.0.1", "port": 9101, "pubkey": _pub(1)}),
            ("SERVER_WELCOME", HERE, {"assigned_id": S1, "servers": []}),
            ("NO_SUCH_TYPE", HERE, {"x": 1}),
        ]
        return [frame(t, S1, to, now, p, crypto.sign_payload(test_key(1), p)) for t, to, p in payloads]

    @FUZZ
    @given(st.data())
    def test_server_link(self, data) -> None:
        server, link = self.server, self.link
        for raw in data.draw(st.lists(frame_bytes(self.templates), min_size=1, max_size=3)):
            if data.draw(st.booleans()):
                raw = self.resigned(raw)  # get past the signature check, to reach the handlers
            since = len(link.sent)
            counted = self.counted()
            outcome = server.deliver(link, raw)
            answers = self.answers(link, since)
            if isinstance(outcome, wire.FrameError) or outcome.type in ("ERROR", "ACK"):
                self.assertEqual(answers, [], "a server link never answers a bad frame, an ERROR or an ACK")
            self.assertTrue(all(a["type"] == "ERROR" for a in answers), answers)
            if isinstance(outcome, wire.FrameError) or outcome.type != "HEARTBEAT":
                self.assertGreater(self.counted(), counted, "every frame is counted (handled or dropped)")
        self.assertIsNone(link.closed)
        self.assertIs(server.mesh.link_to(S1), link)
        # Still usable: a genuine advertisement from S1 is taken.
        self.users_seen += 1
        user = wire.new_uuid4()
        payload = {"user_id": user, "server_id": S1, "pubkey": _pub(5), "meta": {}}
        server.deliver(
            link,
            wire.encode_frame(
                "USER_ADVERTISE", S1, "*", server.now_ms(), payload, crypto.sign_payload(test_key(1), payload)
            ),
        )
        entry = server.presence.lookup(user)
        self.assertIsNotNone(entry)
        self.assertEqual(entry.server_id, S1)
        server.clock.advance(0.001)

    def resigned(self, raw: bytes) -> bytes:
        """``raw`` with a valid S1 transport signature over its payload, when it is an object with one."""
        try:
            value = json.loads(raw)
        except ValueError:
            return raw
        if isinstance(value, dict) and isinstance(value.get("payload"), dict):
            try:
                value["sig"] = crypto.sign_payload(test_key(1), value["payload"])
            except (TypeError, ValueError, UnicodeError):
                return raw
            return json.dumps(value).encode("utf-8")
        return raw

    def counted(self) -> int:
        server = self.server
        return (
            sum(server.mesh.counters.values())
            + sum(server.router.counters.values())
            + sum(server.hub.counters.values())
            + sum(server.public.counters.values() if hasattr(server.public, "counters") else [])
        )
