"""ClientSession against an in-memory server that speaks PROTOCOL §5 and EXTENSIONS.

The fake server is deliberately small but real about crypto: SRP with keystore's
SrpServer, hello proofs, transport signatures by test_key(0), content_sig checks,
USER_DELIVER with the original ts.  Workers are synchronous and the clock is a
task.Clock, so every test is deterministic and fast.
"""

from __future__ import annotations

import json
import re
import time
from collections import deque
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import crypto, keystore, wire
from socp_tw.client import session as session_module
from socp_tw.client.connection import Connection
from socp_tw.client.console import Console
from socp_tw.client.pins import PinStore
from socp_tw.client.session import (
    MAX_DM_BYTES,
    PART_TEXT_BYTES,
    ClientSession,
    SentDMs,
    encode_dm_parts,
)
from socp_tw.test.keys import test_key
from socp_tw.testing import SynchronousWorkers

URL = "ws://127.0.0.1:9999"
PASSWORD = "correct horse battery staple"


class FakeUI:
    """Records shown lines; answers password prompts from a queue (or leaves them pending)."""

    def __init__(self, passwords: list[str] | None = None) -> None:
        self.lines: list[str] = []
        self.prompts: list[str] = []
        self.passwords = deque(passwords or [])
        self.pending: list[Deferred] = []
        self.unasked: list[int] = []  # passwords_not_asked() calls

    def passwords_not_asked(self, count: int = 1) -> None:
        self.unasked.append(count)

    def show(self, text: str) -> None:
        self.lines.extend(text.split("\n"))

    def ask_password(self, prompt: str) -> Deferred:
        self.prompts.append(prompt)
        if self.passwords:
            return succeed(self.passwords.popleft())
        waiter: Deferred = Deferred()
        self.pending.append(waiter)
        return waiter

    def text(self) -> str:
        return "\n".join(self.lines)

    def matching(self, pattern: str) -> list[str]:
        return [line for line in self.lines if re.search(pattern, line)]


class FakeLink:
    """The session's link to the fake server: frames go straight to the server."""

    def __init__(self, server: FakeServer, session: ClientSession) -> None:
        self.server = server
        self.session = session
        self.sent: list[dict] = []
        self.closed: tuple[int, str | None] | None = None
        self.user_id: str | None = None
        self.nonce: str | None = None
        self.srp: tuple[str, keystore.SrpServer] | None = None

    def send(self, data: bytes) -> None:
        assert isinstance(data, bytes)
        self.sent.append(json.loads(data))
        if self.closed is None and not self.server.silent:
            self.server.receive(self, data)

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        if self.closed is None:
            self.closed = (code, reason)
            self.server.disconnect(self)
            self.session.connection_lost(reason or "closed")

    def types_sent(self) -> list[str]:
        return [frame["type"] for frame in self.sent]


class FakeServer:
    """Just enough of a SOCP server with our extensions to exercise the client."""

    def __init__(self, key_index: int = 0) -> None:
        self.key = test_key(key_index)
        self.pub = crypto.encode_public_key(self.key)
        self.server_id = wire.new_uuid4()
        self.accounts: dict[str, dict[str, str]] = {}
        self.online: dict[str, FakeLink] = {}
        self.silent = False  # drop everything (timeouts)
        self.tamper_login_ok: Any = None
        self.tamper_deliver: Any = None
        self.received: list[wire.Envelope] = []

    # plumbing

    def connect(self, session: ClientSession) -> FakeLink:
        link = FakeLink(self, session)
        session.connection_made(link)
        return link

    def disconnect(self, link: FakeLink) -> None:
        if link.user_id and self.online.get(link.user_id) is link:
            del self.online[link.user_id]

    def envelope(self, ftype: str, to: str, payload: dict, ts: int | None = None, key=None) -> wire.Envelope:
        sig = crypto.sign_payload(key or self.key, payload)
        return wire.Envelope(ftype, self.server_id, to, 1000 if ts is None else ts, payload, sig)

    def push(self, link: FakeLink, ftype: str, payload: dict, ts: int | None = None, key=None) -> None:
        link.session.frame_received(self.envelope(ftype, link.user_id or "*", payload, ts, key))

    def error(self, link: FakeLink, code: str, detail: str, ref: str, **extra: Any) -> None:
        self.push(link, "ERROR", {"code": code, "detail": detail, "msg_ref": ref, **extra})

    def add_account(self, user_id: str, key, password: str = PASSWORD) -> None:
        self.accounts[user_id] = {
            "pubkey": crypto.encode_public_key(key),
            "privkey_store": keystore.seal_private_key(key, password, params=keystore.TEST_SCRYPT),
            "pake_password": keystore.make_verifier(user_id, password, params=keystore.TEST_SCRYPT),
        }

    # frames

    def receive(self, link: FakeLink, data: bytes) -> None:
        env = wire.parse_envelope(data)
        self.received.append(env)
        getattr(self, "on_" + env.type)(link, env)

    def on_USER_REGISTER(self, link: FakeLink, env: wire.Envelope) -> None:
        p = env.payload
        if not crypto.verify_payload(crypto.load_public_key(p["pubkey"]), p, env.sig):
            return self.error(link, "INVALID_SIG", "bad register sig", "USER_REGISTER")
        keystore.parse_keystore(p["privkey_store"])
        keystore.parse_verifier(p["pake_password"])
        if p["user_id"] in self.accounts:
            return self.error(link, "NAME_IN_USE", "taken", "USER_REGISTER")
        self.accounts[p["user_id"]] = {k: p[k] for k in ("pubkey", "privkey_store", "pake_password")}
        self.push(link, "ACK", {"msg_ref": "USER_REGISTER", "user_id": p["user_id"]})

    def on_USER_LOGIN_START(self, link: FakeLink, env: wire.Envelope) -> None:
        user_id = env.payload["user_id"]
        account = self.accounts.get(user_id)
        if account is None:
            return self.error(link, "USER_NOT_FOUND", f"no user {user_id}", "USER_LOGIN_START")
        srp = keystore.SrpServer(account["pake_password"])
        challenge = srp.challenge(env.payload["A"])
        link.srp = (user_id, srp)
        self.push(link, "USER_LOGIN_CHALLENGE", {"user_id": user_id, **challenge})

    def on_USER_LOGIN_PROOF(self, link: FakeLink, env: wire.Envelope) -> None:
        user_id, srp = link.srp
        link.srp = None
        try:
            m2 = srp.verify(env.payload["M1"])
        except keystore.LoginError:
            return self.error(link, "LOGIN_FAILED", "bad password proof", "USER_LOGIN_PROOF")
        link.nonce = keystore.new_nonce()
        payload = {
            "user_id": user_id,
            "M2": m2,
            "privkey_store": self.accounts[user_id]["privkey_store"],
            "nonce": link.nonce,
        }
        if self.tamper_login_ok:
            self.tamper_login_ok(payload)
        self.push(link, "USER_LOGIN_OK", payload)

    def on_USER_HELLO_CHALLENGE(self, link: FakeLink, env: wire.Envelope) -> None:
        link.nonce = keystore.new_nonce()
        self.push(link, "USER_HELLO_NONCE", {"nonce": link.nonce, "server_id": self.server_id})

    def on_USER_HELLO(self, link: FakeLink, env: wire.Envelope) -> None:
        user_id, p = env.from_, env.payload
        nonce, link.nonce = link.nonce, None
        account = self.accounts.get(user_id)
        if account is not None:
            key = crypto.load_public_key(account["pubkey"])
            preimage = keystore.hello_proof_preimage(p.get("nonce", ""), user_id, self.server_id)
            if p.get("nonce") != nonce or not crypto.pss_verify(key, preimage, p.get("proof", "")):
                return self.error(link, "AUTH_FAILED", "bad proof", "USER_HELLO")
        if user_id in self.online:
            return self.error(link, "NAME_IN_USE", "already connected", "USER_HELLO")
        link.user_id = user_id
        self.online[user_id] = link
        self.push(link, "ACK", {"msg_ref": "USER_HELLO", "server_id": self.server_id, "server_pub": self.pub})
        for other in self.online.values():
            if other is not link:
                advertise = {
                    "user_id": user_id,
                    "server_id": self.server_id,
                    "pubkey": p["pubkey"],
                    "meta": {},
                }
                self.push(other, "USER_ADVERTISE", advertise)

    def on_LIST_REQUEST(self, link: FakeLink, env: wire.Envelope) -> None:
        users = sorted(self.online)
        self.push(link, "LIST_RESPONSE", {"online_users": users, "users": users})

    def on_PUBKEY_REQUEST(self, link: FakeLink, env: wire.Envelope) -> None:
        user_id = env.payload["user_id"]
        target = self.online.get(user_id)
        if target is None:
            return self.error(link, "USER_NOT_FOUND", f"{user_id} is not online", "PUBKEY_REQUEST")
        pubkey = self.accounts.get(user_id, {}).get("pubkey") or crypto.encode_public_key(target.session._key)
        self.push(
            link, "PUBKEY_RESPONSE", {"user_id": user_id, "pubkey": pubkey, "server_id": self.server_id}
        )

    def on_MSG_DIRECT(self, link: FakeLink, env: wire.Envelope) -> None:
        p = env.payload
        key = crypto.load_public_key(p["sender_pub"])
        if not crypto.verify_dm_content_sig(
            key, p["ciphertext"], env.from_, env.to, env.ts, p["content_sig"]
        ):
            return self.error(link, "INVALID_SIG", "bad content_sig", "MSG_DIRECT")
        target = self.online.get(env.to)
        if target is None:
            return self.error(
                link, "USER_NOT_FOUND", f"{env.to} is not online", "MSG_DIRECT", user_id=env.to, ts=env.ts
            )
        payload = {
            "ciphertext": p["ciphertext"],
            "sender": env.from_,
            "sender_pub": p["sender_pub"],
            "content_sig": p["content_sig"],
        }
        if self.tamper_deliver:
            self.tamper_deliver(payload)
        self.push(target, "USER_DELIVER", payload, ts=env.ts)


class SessionTestBase(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.server = FakeServer()

    def make_session(self, ui: FakeUI | None = None, key_index: int = 1, pins: str | None = None, **kw):
        ui = ui or FakeUI()
        store = PinStore(pins or self.mktemp())
        session = ClientSession(
            ui,
            store,
            URL,
            workers=SynchronousWorkers(),
            clock=self.clock,
            scrypt_params=keystore.TEST_SCRYPT,
            key_factory=lambda: test_key(key_index),
            **kw,
        )
        self.addCleanup(session.shutdown)
        return session, ui

    def online_user(
        self, key_index: int, via_password: bool = False, **kw
    ) -> tuple[ClientSession, FakeUI, FakeLink, str]:
        """A registered account, online: through /login (slow: opens the key store) or, by
        default, through the hello a reconnect does with the key already in memory."""
        user_id = wire.new_uuid4()
        self.server.add_account(user_id, test_key(key_index))
        session, ui = self.make_session(FakeUI([PASSWORD]), key_index, **kw)
        link = self.server.connect(session)
        if via_password:
            self.successResultOf(session.login(user_id))
        else:
            login = session._login_with_key(user_id, test_key(key_index), None, None)
            self.assertTrue(self.successResultOf(Deferred.fromCoroutine(login)))
        self.assertIn(f"[LOGIN SUCCESS] {user_id}", ui.lines)
        return session, ui, link, user_id

    def deliver(
        self, link: FakeLink, sender: str, recipient: str, sender_key, plaintext: bytes, tamper=None
    ) -> None:
        """Push a USER_DELIVER as the server would, optionally with fields tampered."""
        ts = int(self.clock.seconds() * 1000)
        ciphertext = crypto.oaep_encrypt(link.session._key.public_key(), plaintext)
        payload = {
            "ciphertext": ciphertext,
            "sender": sender,
            "sender_pub": crypto.encode_public_key(sender_key),
            "content_sig": crypto.sign_content(
                sender_key, crypto.dm_preimage(ciphertext, sender, recipient, ts)
            ),
        }
        tamper = dict(tamper or {})
        server_key = tamper.pop("server_key", None)
        payload.update(tamper)
        link.session.frame_received(self.server.envelope("USER_DELIVER", recipient, payload, ts, server_key))


class RegisterTests(SessionTestBase):
    def test_register_prints_id_asks_twice_and_logs_in(self) -> None:
        session, ui = self.make_session(FakeUI([PASSWORD, PASSWORD]))
        link = self.server.connect(session)
        self.successResultOf(session.register())
        [announce] = ui.matching(r"^Your new user id: ")
        user_id = announce.split()[4]
        self.assertTrue(wire.is_uuid4(user_id))
        self.assertEqual(ui.prompts, ["Password: ", "Repeat password: "])
        self.assertIn(f"[REGISTER SUCCESS] {user_id}", ui.lines)
        self.assertIn(f"[LOGIN SUCCESS] {user_id}", ui.lines)
        self.assertEqual(link.types_sent(), ["USER_REGISTER", "USER_HELLO_CHALLENGE", "USER_HELLO"])
        register = link.sent[0]
        self.assertEqual(register["from"], user_id)
        self.assertEqual(register["payload"]["user_id"], user_id)
        # The register frame is signed by the new key (proof of possession) and carries no clear key.
        self.assertTrue(crypto.verify_payload(test_key(1), register["payload"], register["sig"]))
        self.assertNotIn("PRIVATE", json.dumps(register))
        opened = keystore.open_private_key(register["payload"]["privkey_store"], PASSWORD)
        self.assertEqual(crypto.encode_public_key(opened), crypto.encode_public_key(test_key(1)))
        self.assertTrue(session.logged_in)
        self.assertEqual(session.pins.server(URL), (self.server.server_id, self.server.pub))
        self.assertIn("first use", ui.text())

    def test_password_mismatch(self) -> None:
        session, ui = self.make_session(FakeUI([PASSWORD, PASSWORD + "x"]))
        link = self.server.connect(session)
        self.successResultOf(session.register())
        self.assertIn("[REGISTER FAILED] the passwords do not match", ui.lines)
        self.assertEqual(link.sent, [])
        self.assertFalse(session.logged_in)

    def test_short_password(self) -> None:
        session, ui = self.make_session(FakeUI(["short", "short"]))
        link = self.server.connect(session)
        self.successResultOf(session.register())
        self.assertTrue(ui.matching(r"^\[REGISTER FAILED\] the password must have at least 8"))
        self.assertEqual(link.sent, [])

    def test_server_refuses(self) -> None:
        session, ui = self.make_session(FakeUI([PASSWORD, PASSWORD]))
        self.server.connect(session)
        self.patch(wire, "new_uuid4", lambda: "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f")
        self.server.accounts["6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"] = {}
        self.successResultOf(session.register())
        self.assertIn("[REGISTER FAILED] NAME_IN_USE: taken", ui.lines)
        self.assertFalse(session.logged_in)

    def test_not_connected(self) -> None:
        session, ui = self.make_session(FakeUI([PASSWORD, PASSWORD]))
        d = session.register()
        self.assertNoResult(d)
        self.clock.advance(31)
        self.successResultOf(d)
        self.assertTrue(ui.matching(r"^\[REGISTER FAILED\] not connected"))
        self.assertEqual(ui.prompts, [])

    def test_waits_for_the_connection(self) -> None:
        """A piped /register that runs before the WebSocket is open waits for it."""
        session, ui = self.make_session(FakeUI([PASSWORD, PASSWORD]))
        d = session.register()
        self.clock.advance(5)
        self.assertNoResult(d)
        self.server.connect(session)
        self.successResultOf(d)
        self.assertTrue(ui.matching(r"^\[LOGIN SUCCESS\] "))

    def test_password_file(self) -> None:
        session, ui = self.make_session(FakeUI(), password=PASSWORD)
        self.server.connect(session)
        self.successResultOf(session.register())
        self.assertEqual(ui.prompts, [])
        self.assertTrue(ui.matching(r"^\[LOGIN SUCCESS\] "))

    def test_console_stays_free_while_waiting(self) -> None:
        """The command's Deferred stays pending while the password is awaited; nothing is sent."""
        session, ui = self.make_session(FakeUI())
        link = self.server.connect(session)
        d = session.register()
        self.assertNoResult(d)
        self.assertEqual(ui.prompts, ["Password: "])
        ui.pending.pop().callback(PASSWORD)
        self.assertEqual(ui.prompts, ["Password: ", "Repeat password: "])
        ui.pending.pop().callback(PASSWORD)
        self.successResultOf(d)
        self.assertEqual(link.types_sent()[0], "USER_REGISTER")


class LoginTests(SessionTestBase):
    def test_login_success(self) -> None:
        session, ui, link, user_id = self.online_user(1, via_password=True)
        self.assertEqual(ui.prompts, ["Password: "])
        self.assertEqual(link.types_sent(), ["USER_LOGIN_START", "USER_LOGIN_PROOF", "USER_HELLO"])
        hello = link.sent[-1]["payload"]
        self.assertEqual(hello["pubkey"], crypto.encode_public_key(test_key(1)))
        self.assertEqual(link.sent[-1]["to"], self.server.server_id)
        for frame in link.sent:
            self.assertNotIn(PASSWORD, json.dumps(frame))
        self.assertEqual(session.user_id, user_id)

    def test_wrong_password(self) -> None:
        user_id = wire.new_uuid4()
        self.server.add_account(user_id, test_key(1))
        session, ui = self.make_session(FakeUI(["not the password"]))
        self.server.connect(session)
        self.successResultOf(session.login(user_id))
        self.assertIn("[LOGIN FAILED] LOGIN_FAILED: bad password proof", ui.lines)
        self.assertFalse(session.logged_in)

    def test_unknown_user(self) -> None:
        user_id = wire.new_uuid4()
        session, ui = self.make_session(FakeUI([PASSWORD]))
        self.server.connect(session)
        self.successResultOf(session.login(user_id))
        self.assertIn(f"[LOGIN FAILED] USER_NOT_FOUND: no user {user_id}", ui.lines)

    def test_bad_m2_means_impostor(self) -> None:
        user_id = wire.new_uuid4()
        self.server.add_account(user_id, test_key(1))
        self.server.tamper_login_ok = lambda payload: payload.update(M2=wire.b64u_encode(b"\0" * 32))
        session, ui = self.make_session(FakeUI([PASSWORD]))
        link = self.server.connect(session)
        self.successResultOf(session.login(user_id))
        self.assertTrue(ui.matching(r"^\[LOGIN FAILED\] the server could not prove"))
        self.assertIsNotNone(link.closed)
        self.assertNotIn("USER_HELLO", link.types_sent())

    def test_corrupt_keystore(self) -> None:
        user_id = wire.new_uuid4()
        self.server.add_account(user_id, test_key(1))
        self.server.tamper_login_ok = lambda payload: payload.update(privkey_store="socp-keystore-v1.AAAA")
        session, ui = self.make_session(FakeUI([PASSWORD]))
        self.server.connect(session)
        self.successResultOf(session.login(user_id))
        self.assertTrue(ui.matching(r"^\[LOGIN FAILED\] the server sent a corrupt key store"))

    def test_keystore_sealed_with_other_password(self) -> None:
        """The SRP verifier matches but the blob doesn't open: said clearly, no crash."""
        user_id = wire.new_uuid4()
        self.server.add_account(user_id, test_key(1))
        other = keystore.seal_private_key(test_key(1), "another password", params=keystore.TEST_SCRYPT)
        self.server.tamper_login_ok = lambda payload: payload.update(privkey_store=other)
        session, ui = self.make_session(FakeUI([PASSWORD]))
        self.server.connect(session)
        self.successResultOf(session.login(user_id))
        self.assertIn("[LOGIN FAILED] your key store does not open with this password", ui.lines)

    def test_timeout(self) -> None:
        user_id = wire.new_uuid4()
        self.server.add_account(user_id, test_key(1))
        self.server.silent = True
        session, ui = self.make_session(FakeUI([PASSWORD]))
        self.server.connect(session)
        d = session.login(user_id)
        self.assertNoResult(d)
        self.clock.advance(31)
        self.successResultOf(d)
        self.assertIn("[LOGIN FAILED] no answer to USER_LOGIN_START from the server", ui.lines)

    def test_connection_lost_during_login(self) -> None:
        user_id = wire.new_uuid4()
        self.server.add_account(user_id, test_key(1))
        self.server.silent = True
        session, ui = self.make_session(FakeUI([PASSWORD]))
        link = self.server.connect(session)
        d = session.login(user_id)
        link.close(1006, "gone")
        self.successResultOf(d)
        self.assertTrue(ui.matching(r"^\[LOGIN FAILED\] the connection to .* was lost \(gone\)"))
        self.assertFalse(session.logged_in)

    def test_server_key_changed_is_refused(self) -> None:
        pins = self.mktemp()
        PinStore(pins).pin_server(URL, self.server.server_id, crypto.encode_public_key(test_key(5)))
        user_id = wire.new_uuid4()
        self.server.add_account(user_id, test_key(1))
        session, ui = self.make_session(FakeUI([PASSWORD]), pins=pins)
        link = self.server.connect(session)
        self.successResultOf(session.login(user_id))
        self.assertTrue(ui.matching(r"NOT SIGNED BY THE KEY PINNED FOR SERVER ws://127.0.0.1:9999"))
        self.assertTrue(ui.matching(r"^\[LOGIN FAILED\] "))
        self.assertFalse(session.logged_in)
        self.assertNotIn("USER_LOGIN_PROOF", link.types_sent())
        # The pin is untouched.
        self.assertEqual(PinStore(pins).server(URL)[1], crypto.encode_public_key(test_key(5)))

    def test_hello_ack_with_changed_key(self) -> None:
        """An ACK naming (and signed by) a key other than the pinned one: loud, refused, link closed."""
        pins = self.mktemp()
        PinStore(pins).pin_server(URL, self.server.server_id, crypto.encode_public_key(test_key(5)))
        session, ui = self.make_session(pins=pins)
        link = self.server.connect(session)
        ack = self.server.envelope(
            "ACK",
            "*",
            {"msg_ref": "USER_HELLO", "server_id": self.server.server_id, "server_pub": self.server.pub},
        )
        self.assertRaises(session_module.RequestFailed, session._accept_server_key, ack)
        self.assertTrue(ui.matching(r"THE KEY OF SERVER ws://127.0.0.1:9999 HAS CHANGED"))
        self.assertIsNotNone(link.closed)
        # An ACK whose signature doesn't match the key it names is refused too.
        forged = self.server.envelope(
            "ACK",
            "*",
            {"msg_ref": "USER_HELLO", "server_id": self.server.server_id, "server_pub": self.server.pub},
            key=test_key(4),
        )
        self.assertRaises(session_module.RequestFailed, session._accept_server_key, forged)

    def test_already_logged_in_as_another_user(self) -> None:
        """An error, not a failed login; the script's password lines are not to be run."""
        session, ui, link, user_id = self.online_user(1)
        sent = len(link.sent)
        self.successResultOf(session.login(wire.new_uuid4()))
        self.assertEqual(
            ui.lines[-1],
            f"[ERROR] already logged in as {user_id}; /quit first to log in as another user",
        )
        self.assertEqual(ui.unasked, [1])
        self.successResultOf(session.register())
        self.assertIn(f"[REGISTER FAILED] already logged in as {user_id}; /quit first", ui.lines)
        self.assertEqual(ui.unasked, [1, 2])
        self.assertEqual(ui.prompts, [])
        self.assertEqual(len(link.sent), sent)
        self.assertEqual(session.user_id, user_id)

    def test_login_as_the_user_logged_in(self) -> None:
        """/register then /login <same id> (the integration guide): success, no password asked."""
        session, ui = self.make_session(FakeUI([PASSWORD, PASSWORD]))
        link = self.server.connect(session)
        self.successResultOf(session.register())
        user_id = session.user_id
        sent = len(link.sent)
        before = len(ui.lines)
        self.successResultOf(session.login(user_id))
        self.assertEqual(ui.lines[before:], [f"[LOGIN SUCCESS] {user_id}"])
        self.assertEqual(ui.prompts, ["Password: ", "Repeat password: "])
        self.assertEqual(ui.unasked, [1])
        self.assertEqual(len(link.sent), sent)
        self.assertTrue(session.logged_in)

    def test_login_as_the_user_logged_in_with_a_password_file(self) -> None:
        """No password lines in the script then: the ui is not told to skip any."""
        session, ui = self.make_session(FakeUI(), password=PASSWORD)
        self.server.connect(session)
        self.successResultOf(session.register())
        self.successResultOf(session.login(session.user_id))
        self.assertEqual(ui.lines[-1], f"[LOGIN SUCCESS] {session.user_id}")
        self.assertEqual(ui.unasked, [])

    def test_login_as_the_user_logged_in_while_reconnecting(self) -> None:
        """It waits for the automatic login after the reconnect, then reports it."""
        session, ui, link, user_id = self.online_user(1)
        link.close(1006, "network down")
        d = session.login(user_id)
        self.assertNoResult(d)
        self.server.connect(session)
        self.successResultOf(d)
        self.assertEqual(
            sorted(ui.lines[-2:]),
            [f"[LOGIN SUCCESS] {user_id}", f"[RECONNECTED] logged in again as {user_id}"],
        )
        self.assertEqual(ui.prompts, [])

    def test_login_as_the_user_logged_in_while_the_link_stays_down(self) -> None:
        session, ui, link, user_id = self.online_user(1)
        link.close(1006, "network down")
        d = session.login(user_id)
        self.clock.advance(31)
        self.successResultOf(d)
        self.assertEqual(
            ui.lines[-1],
            "[LOGIN FAILED] not connected to ws://127.0.0.1:9999 right now (reconnecting); try again shortly",
        )
        self.assertEqual(ui.unasked, [1])
        self.assertEqual(ui.prompts, [])

    def test_login_as_the_user_after_the_automatic_login_gave_up(self) -> None:
        """Then /login <same id> is an ordinary login again: it asks for the password."""
        session, ui, link, user_id = self.online_user(1)
        link.close(1006, "network down")
        session._want_online = False  # what giving up after MAX_RELOGIN_FAILURES leaves
        ui.passwords.append(PASSWORD)
        link2 = self.server.connect(session)
        self.successResultOf(session.login(user_id))
        self.assertEqual(ui.prompts, ["Password: "])
        self.assertEqual(link2.types_sent(), ["USER_LOGIN_START", "USER_LOGIN_PROOF", "USER_HELLO"])
        self.assertEqual(ui.lines[-1], f"[LOGIN SUCCESS] {user_id}")
        self.assertEqual(ui.unasked, [])

    def test_unknown_type_falls_back_to_plain_hello(self) -> None:
        """A server without our extensions: plain USER_HELLO without nonce (TOFU, EXTENSIONS §6.3)."""
        session, _ui = self.make_session(FakeUI())
        session._want_online = False
        self.server.on_USER_HELLO_CHALLENGE = lambda link, env: self.server.error(
            link, "UNKNOWN_TYPE", "no such type", "USER_HELLO_CHALLENGE"
        )
        link = self.server.connect(session)
        user_id = wire.new_uuid4()
        self.assertTrue(
            self.successResultOf(
                Deferred.fromCoroutine(session._login_with_key(user_id, test_key(1), None, None))
            )
        )
        hello = link.sent[-1]
        self.assertEqual(hello["type"], "USER_HELLO")
        self.assertNotIn("nonce", hello["payload"])


class ReconnectTests(SessionTestBase):
    def test_idle_link_before_login_is_redialled_quietly(self) -> None:
        """A server closing an unidentified link is no news to a user who hasn't logged in."""
        session, ui = self.make_session()
        link = self.server.connect(session)
        link.close(1008, "no identifying frame within 30 s")
        before = list(ui.lines)
        session.reconnect_scheduled(1.0, "no identifying frame within 30 s", True)
        self.assertEqual(ui.lines, before)
        session.reconnect_scheduled(2.0, "Connection was refused", False)
        self.assertIn(
            "[DISCONNECTED] cannot connect to ws://127.0.0.1:9999 (Connection was refused); "
            "retrying in 2.0 s",
            ui.lines,
        )

    def test_relogin_after_reconnect_without_password(self) -> None:
        session, ui, link, user_id = self.online_user(1, via_password=True)
        link.close(1006, "network down")
        self.assertFalse(session.logged_in)
        session.reconnect_scheduled(1.5, "network down", True)
        self.assertIn(
            "[DISCONNECTED] lost the connection to ws://127.0.0.1:9999 (network down); reconnecting in 1.5 s",
            ui.lines,
        )
        link2 = self.server.connect(session)
        self.assertEqual(link2.types_sent(), ["USER_HELLO_CHALLENGE", "USER_HELLO"])
        self.assertIn(f"[RECONNECTED] logged in again as {user_id}", ui.lines)
        self.assertTrue(session.logged_in)
        self.assertEqual(ui.prompts, ["Password: "])  # only the first login asked

    def test_link_changes_while_signing_the_proof(self) -> None:
        """The hello proof is being signed when the link drops and another opens: the stale
        nonce is never sent; the login is redone on the new link."""
        session, ui, link, user_id = self.online_user(1)
        held: list[tuple[Deferred, Any]] = []
        workers = session._workers

        class HoldingWorkers:
            def run(self, f, *args):
                if f is crypto.pss_sign:
                    d: Deferred = Deferred()
                    held.append((d, lambda: f(*args)))
                    return d
                return workers.run(f, *args)

        session._workers = HoldingWorkers()
        link.close(1006, "drop")
        link2 = self.server.connect(session)
        self.assertEqual(link2.types_sent(), ["USER_HELLO_CHALLENGE"])
        link2.close(1006, "drop again")
        link3 = self.server.connect(session)
        self.assertEqual(link3.sent, [])  # busy with the old attempt
        d, sign = held.pop()
        d.callback(sign())
        d, sign = held.pop()  # the new attempt, on link3
        d.callback(sign())
        self.assertEqual(link2.types_sent(), ["USER_HELLO_CHALLENGE"])
        self.assertEqual(link3.types_sent(), ["USER_HELLO_CHALLENGE", "USER_HELLO"])
        self.assertTrue(session.logged_in)
        self.assertEqual(ui.lines[-1], f"[RECONNECTED] logged in again as {user_id}")

    def test_list_waits_for_the_relogin(self) -> None:
        session, ui, link, user_id = self.online_user(1)
        link.close(1006, "network down")
        d = session.list_users()
        self.assertNoResult(d)
        self.server.connect(session)
        self.successResultOf(d)
        self.assertIn(f"* {user_id}  [{crypto.fingerprint(test_key(1))}] (you)", ui.lines)

    def test_tell_while_disconnected_times_out(self) -> None:
        session, ui, link, _ = self.online_user(1)
        link.close(1006, "network down")
        d = session.tell(wire.new_uuid4(), "hi")
        self.clock.advance(31)
        self.successResultOf(d)
        self.assertTrue(ui.matching(r"^\[ERROR\] not connected to ws://127.0.0.1:9999 right now"))

    def test_relogin_failure_retries_then_gives_up(self) -> None:
        session, ui, link, _user_id = self.online_user(1)
        link.close(1006, "network down")
        self.server.on_USER_HELLO = lambda link, env: self.server.error(
            link, "NAME_IN_USE", "busy", "USER_HELLO"
        )
        for _ in range(session_module.MAX_RELOGIN_FAILURES - 1):
            link = self.server.connect(session)
            self.assertIsNotNone(link.closed)  # closed to retry on a fresh connection
            self.assertTrue(ui.lines[-1].endswith("(NAME_IN_USE: busy); will retry"))
        link = self.server.connect(session)
        self.assertIsNone(link.closed)
        self.assertTrue(ui.lines[-1].endswith(f"giving up: use /login {session.user_id}"))
        self.assertFalse(session.logged_in)
        link = self.server.connect(session)
        self.assertEqual(link.sent, [])

    def test_cannot_connect_report(self) -> None:
        session, ui = self.make_session()
        session.reconnect_scheduled(2.25, "Connection was refused", False)
        self.assertIn(
            "[DISCONNECTED] cannot connect to ws://127.0.0.1:9999 (Connection was refused); "
            "retrying in 2.2 s",
            ui.lines,
        )


class ListTests(SessionTestBase):
    def test_list_sorted_with_fingerprints(self) -> None:
        alice, alice_ui, _, alice_id = self.online_user(1)
        _, _, _, bob_id = self.online_user(2)
        _, _, _, carol_id = self.online_user(3)
        alice_ui.lines.clear()
        self.successResultOf(alice.list_users())
        self.assertEqual(alice_ui.lines[0], "Online users (3):")
        body = alice_ui.lines[1:]
        ids = [line[2:38] for line in body]
        self.assertEqual(ids, sorted([alice_id, bob_id, carol_id]))
        self.assertIn(f"* {alice_id}  [{crypto.fingerprint(test_key(1))}] (you)", body)
        self.assertIn(f"  {bob_id}  [{crypto.fingerprint(test_key(2))}]", body)
        self.assertIn(f"  {carol_id}  [{crypto.fingerprint(test_key(3))}]", body)

    def test_list_requires_login(self) -> None:
        session, ui = self.make_session()
        self.server.connect(session)
        self.successResultOf(session.list_users())
        self.assertIn("[ERROR] not logged in: use /register or /login <user_uuid>", ui.lines)

    def test_list_response_with_bad_signature(self) -> None:
        alice, ui, _link, _ = self.online_user(1)
        self.server.on_LIST_REQUEST = lambda link, env: self.server.push(
            link, "LIST_RESPONSE", {"online_users": []}, key=test_key(4)
        )
        self.successResultOf(alice.list_users())
        self.assertTrue(ui.matching(r"^\[ERROR\] /list failed: the server's LIST_RESPONSE is not signed"))

    def test_list_marks_changed_keys(self) -> None:
        alice, ui, _, _ = self.online_user(1)
        _, _, _, bob_id = self.online_user(2)
        alice.pins.pin_user(bob_id, crypto.encode_public_key(test_key(5)))
        ui.lines.clear()
        self.successResultOf(alice.list_users())
        self.assertTrue(ui.matching(rf"^  {bob_id}  \[.*\] KEY CHANGED \(pinned \["))


class DirectMessageTests(SessionTestBase):
    def test_dm_both_ways(self) -> None:
        alice, alice_ui, alice_link, alice_id = self.online_user(1)
        bob, bob_ui, _, bob_id = self.online_user(2)
        self.successResultOf(alice.tell(bob_id, "hello bob"))
        self.assertIn(f"DM from {alice_id}: hello bob", bob_ui.lines)
        self.assertIn(f"DM to {bob_id}: hello bob", alice_ui.lines)
        self.successResultOf(bob.tell(alice_id, "hi alice ✓"))
        self.assertIn(f"DM from {bob_id}: hi alice ✓", alice_ui.lines)
        # Both pinned each other on first contact.
        self.assertEqual(alice.pins.user_key(bob_id), crypto.encode_public_key(test_key(2)))
        self.assertEqual(bob.pins.user_key(alice_id), crypto.encode_public_key(test_key(1)))
        # The wire frame: encrypted, content-signed over the §2 preimage, transport-signed.
        frame = next(f for f in alice_link.sent if f["type"] == "MSG_DIRECT")
        p = frame["payload"]
        self.assertEqual(sorted(p), ["ciphertext", "content_sig", "sender_pub"])
        self.assertNotIn("hello", json.dumps(frame))
        preimage = crypto.dm_preimage(p["ciphertext"], alice_id, bob_id, frame["ts"])
        self.assertTrue(crypto.pss_verify(test_key(1).public_key(), preimage, p["content_sig"]))
        self.assertTrue(crypto.verify_payload(test_key(1), p, frame["sig"]))
        self.assertEqual(crypto.oaep_decrypt(test_key(2), p["ciphertext"]), b"hello bob")

    def test_long_dm_split_and_rejoined(self) -> None:
        alice, _, alice_link, alice_id = self.online_user(1)
        _, bob_ui, _, bob_id = self.online_user(2)
        text = "".join(f"{i:04d}é✓ " for i in range(300))  # ~3.6 kB of multi-byte text
        self.successResultOf(alice.tell(bob_id, text))
        parts = [f for f in alice_link.sent if f["type"] == "MSG_DIRECT"]
        self.assertEqual(len(parts), len(encode_dm_parts(text)))
        self.assertGreater(len(parts), 7)
        self.assertEqual(
            [line for line in bob_ui.lines if line.startswith("DM from")], [f"DM from {alice_id}: {text}"]
        )

    def test_parts_out_of_order_and_duplicated(self) -> None:
        _, _, _, alice_id = self.online_user(1)
        _bob, bob_ui, bob_link, bob_id = self.online_user(2)
        text = "x" * (PART_TEXT_BYTES * 2 + 10)
        parts = encode_dm_parts(text, msg_id="0123456789abcdef")
        self.assertEqual(len(parts), 3)
        for index in (2, 0, 2, 1):
            self.deliver(bob_link, alice_id, bob_id, test_key(1), parts[index])
        self.assertEqual(bob_ui.matching(r"^DM from"), [f"DM from {alice_id}: {text}"])
        self.deliver(bob_link, alice_id, bob_id, test_key(1), parts[0])  # late duplicate: ignored
        self.assertEqual(len(bob_ui.matching(r"^DM from")), 1)

    def test_missing_part_is_reported(self) -> None:
        _, _, _, alice_id = self.online_user(1)
        _bob, bob_ui, bob_link, bob_id = self.online_user(2)
        parts = encode_dm_parts("y" * (PART_TEXT_BYTES * 2 + 1), msg_id="fedcba9876543210")
        self.deliver(bob_link, alice_id, bob_id, test_key(1), parts[0])
        self.deliver(bob_link, alice_id, bob_id, test_key(1), parts[2])
        self.assertEqual(bob_ui.matching(r"^DM from"), [])
        self.clock.advance(61)
        self.assertIn(
            f"[WARNING] incomplete DM from {alice_id}: 2 of 3 parts arrived (missing 2); "
            "the rest did not arrive within 60 s; message dropped",
            bob_ui.lines,
        )
        self.assertEqual(bob_ui.matching(r"^DM from"), [])

    def test_reassembly_is_bounded(self) -> None:
        _, _, _, alice_id = self.online_user(1)
        bob, bob_ui, bob_link, bob_id = self.online_user(2)
        for n in range(session_module.MAX_PENDING_PER_SENDER + 1):
            header = f"[SOCP-PART 1/2 id={n:016x}]\nchunk".encode()
            self.deliver(bob_link, alice_id, bob_id, test_key(1), header)
        self.assertEqual(len(bob._partials), session_module.MAX_PENDING_PER_SENDER)
        self.assertTrue(bob_ui.matching(r"too many incomplete messages from this sender"))
        self.deliver(bob_link, alice_id, bob_id, test_key(1), b"[SOCP-PART 3/2 id=0000000000000000]\nz")
        self.assertTrue(bob_ui.matching(r"bad part header 3/2"))

    def test_too_long_dm_refused(self) -> None:
        alice, ui, link, _ = self.online_user(1)
        _, _, _, bob_id = self.online_user(2)
        self.successResultOf(alice.tell(bob_id, "z" * (MAX_DM_BYTES + 1)))
        self.assertTrue(ui.matching(r"^\[ERROR\] message not sent: the message is"))
        self.assertNotIn("MSG_DIRECT", link.types_sent())

    def test_foreign_plain_dm_and_magic_text(self) -> None:
        _, _, _, alice_id = self.online_user(1)
        _bob, bob_ui, bob_link, bob_id = self.online_user(2)
        self.deliver(bob_link, alice_id, bob_id, test_key(1), b"plain from another client")
        self.assertIn(f"DM from {alice_id}: plain from another client", bob_ui.lines)
        # Our own text that happens to start like a part header still round-trips.
        [single] = encode_dm_parts("[SOCP-PART 1/1 id=0123456789abcdef]\nsneaky")
        self.deliver(bob_link, alice_id, bob_id, test_key(1), single)
        self.assertIn(f"DM from {alice_id}: [SOCP-PART 1/1 id=0123456789abcdef]", bob_ui.lines)

    def test_control_characters_are_neutralised(self) -> None:
        _, _, _, alice_id = self.online_user(1)
        _bob, bob_ui, bob_link, bob_id = self.online_user(2)
        self.deliver(bob_link, alice_id, bob_id, test_key(1), "hi\x1b[2J\u202eevil\nline2".encode())
        self.assertIn(f"DM from {alice_id}: hi\\x1b[2J\\u202eevil", bob_ui.lines)
        self.assertIn("    line2", bob_ui.lines)
        self.assertNotIn("\x1b", bob_ui.text())

    def test_recipient_unknown(self) -> None:
        alice, ui, link, _ = self.online_user(1)
        nobody = wire.new_uuid4()
        self.successResultOf(alice.tell(nobody, "hello?"))
        self.assertIn(f"[ERROR] message not sent: no key known for {nobody} (is the user online?)", ui.lines)
        self.assertNotIn("MSG_DIRECT", link.types_sent())

    def test_tell_requires_login(self) -> None:
        session, ui = self.make_session()
        self.successResultOf(session.tell(wire.new_uuid4(), "hi"))
        self.assertIn("[ERROR] not logged in: use /register or /login <user_uuid>", ui.lines)

    def test_server_errors_are_shown(self) -> None:
        _alice, ui, link, _ = self.online_user(1)
        self.server.error(link, "USER_NOT_FOUND", "bob left", "MSG_DIRECT")
        self.assertIn("[ERROR] USER_NOT_FOUND: bob left", ui.lines)
        self.server.push(link, "ERROR", {"code": "TIMEOUT"})
        self.assertIn("[ERROR] TIMEOUT: ", ui.lines)

    def test_error_with_bad_signature_is_ignored(self) -> None:
        _alice, ui, link, _ = self.online_user(1)
        self.server.push(link, "ERROR", {"code": "X", "detail": "forged"}, key=test_key(4))
        self.assertNotIn("[ERROR] X: forged", ui.lines)
        self.assertTrue(ui.matching(r"ignored an ERROR frame with an invalid server signature"))


class FailedDeliveryTests(SessionTestBase):
    """ERROR {msg_ref: MSG_DIRECT, user_id, ts}: a [FAILED] line naming the DM, once per message."""

    def setUp(self) -> None:
        super().setUp()
        self.alice, self.ui, self.link, _ = self.online_user(1)
        self.bob, _, self.bob_link, self.bob_id = self.online_user(2)
        self.successResultOf(self.alice.tell(self.bob_id, "first contact"))  # alice knows bob's key
        self.bob_link.close(1000, "bob left")  # from now on the server cannot deliver to bob
        self.ui.lines.clear()

    def sent_at(self) -> str:
        return time.strftime("%H:%M:%S", time.localtime(self.clock.seconds()))

    def failed(self) -> list[str]:
        return self.ui.matching(r"^\[FAILED\] ")

    def test_known_ts(self) -> None:
        self.successResultOf(self.alice.tell(self.bob_id, "hello bob"))
        self.assertEqual(
            self.failed(),
            [
                f'[FAILED] DM to {self.bob_id} ("hello bob", sent {self.sent_at()}) was not delivered: '
                f"USER_NOT_FOUND: {self.bob_id} is not online"
            ],
        )
        self.assertNotIn("[ERROR] USER_NOT_FOUND", self.ui.text())

    def test_long_text_is_cut(self) -> None:
        text = "0123456789" * 5
        self.successResultOf(self.alice.tell(self.bob_id, text))
        [line] = self.failed()
        self.assertIn(f'("{text[:30]}…", sent ', line)

    def test_unknown_or_absent_ts(self) -> None:
        ref = {"code": "TIMEOUT", "detail": "no answer", "msg_ref": "MSG_DIRECT", "user_id": self.bob_id}
        self.server.push(self.link, "ERROR", {**ref, "ts": 12345})
        self.server.push(self.link, "ERROR", ref)
        self.server.push(self.link, "ERROR", {**ref, "ts": "soon"})
        expected = f"[FAILED] DM to {self.bob_id} was not delivered: TIMEOUT: no answer"
        self.assertEqual(self.failed(), [expected] * 3)

    def test_a_multi_part_message_fails_once(self) -> None:
        clock = iter(range(1_700_000_000_000, 1_700_000_100_000, 7))
        self.alice._now_ms = lambda: next(clock)  # every part its own ts
        text = "long " * 400
        self.successResultOf(self.alice.tell(self.bob_id, text))
        parts = [f for f in self.link.sent if f["type"] == "MSG_DIRECT"][-len(encode_dm_parts(text)) :]
        self.assertGreater(len({f["ts"] for f in parts}), 3)
        for frame in parts:  # a later error (other code) for each part again
            self.server.push(
                self.link,
                "ERROR",
                {
                    "code": "INVALID_SIG",
                    "detail": "x",
                    "msg_ref": "MSG_DIRECT",
                    "user_id": self.bob_id,
                    "ts": frame["ts"],
                },
            )
        [line] = self.failed()
        self.assertTrue(line.startswith(f'[FAILED] DM to {self.bob_id} ("{text[:30]}…", sent '))
        self.assertTrue(line.endswith(f"USER_NOT_FOUND: {self.bob_id} is not online"))
        # A second message is reported on its own.
        self.successResultOf(self.alice.tell(self.bob_id, "again"))
        self.assertEqual(len(self.failed()), 2)

    def test_text_and_fields_are_escaped(self) -> None:
        self.successResultOf(self.alice.tell(self.bob_id, "\x1b[2Jhi\nthere\u202e"))
        [line] = self.failed()
        self.assertIn('("\\x1b[2Jhi\\nthere\\u202e", sent ', line)
        self.server.push(
            self.link,
            "ERROR",
            {"code": "X\x1b[1m", "detail": "d\x07", "msg_ref": "MSG_DIRECT", "user_id": "\x1b]0;evil\x07"},
        )
        self.assertEqual(
            self.failed()[-1], "[FAILED] DM to \\x1b]0;evil\\x07 was not delivered: X\\x1b[1m: d\\x07"
        )
        self.assertNotIn("\x1b", self.ui.text())

    def test_an_error_without_user_id_keeps_the_error_line(self) -> None:
        self.server.error(self.link, "USER_NOT_FOUND", "bob left", "MSG_DIRECT")
        self.assertEqual(self.ui.lines[-1], "[ERROR] USER_NOT_FOUND: bob left")
        self.assertEqual(self.failed(), [])

    def test_forgotten_after_ten_minutes(self) -> None:
        self.server.silent = True  # nothing answers now: the ERROR comes later, by hand
        self.successResultOf(self.alice.tell(self.bob_id, "late"))
        ts = self.link.sent[-1]["ts"]
        error = {"code": "TIMEOUT", "detail": "", "msg_ref": "MSG_DIRECT", "user_id": self.bob_id, "ts": ts}
        self.clock.advance(session_module.SENT_DM_TTL + 1)
        self.server.push(self.link, "ERROR", error)
        self.assertEqual(self.failed(), [f"[FAILED] DM to {self.bob_id} was not delivered: TIMEOUT: "])
        self.assertEqual(len(self.alice.sent_dms), 0)

    def test_the_record_is_bounded(self) -> None:
        record = SentDMs(self.clock, limit=3)
        messages = []
        for ts in range(5):
            messages.append(record.add(self.bob_id, f"m{ts}"))
            record.add_part(messages[-1], ts)
        self.assertEqual(len(record), 3)
        self.assertIsNone(record.find(self.bob_id, 0))
        self.assertIsNone(record.find(self.bob_id, 1))  # its parts went with it
        self.assertIs(record.find(self.bob_id, 4), messages[4])
        self.assertIsNone(record.find(wire.new_uuid4(), 4))
        self.assertEqual(len(SentDMs(self.clock)._messages), 0)

    def test_through_the_console_in_scripted_mode(self) -> None:
        """The console prints the same line when it is not on a terminal."""
        console = Console(interactive=False)
        transport = StringTransport()
        console.makeConnection(transport)
        self.alice.ui = console
        self.successResultOf(self.alice.tell(self.bob_id, "hello bob"))
        self.assertIn(
            f'[FAILED] DM to {self.bob_id} ("hello bob", sent {self.sent_at()}) was not delivered: '
            f"USER_NOT_FOUND: {self.bob_id} is not online\n",
            transport.value().decode(),
        )


class RejectedDeliveryTests(SessionTestBase):
    """Every way a USER_DELIVER can be bad: a warning, never the text."""

    def setUp(self) -> None:
        super().setUp()
        _, _, _, self.alice_id = self.online_user(1)
        self.bob, self.ui, self.link, self.bob_id = self.online_user(2)
        self.ui.lines.clear()

    def assertRejected(self, reason: str, claimed: str | None = None) -> None:
        claimed = claimed or self.alice_id
        self.assertIn(f"[WARNING] rejected DM claiming to be from {claimed}: {reason}", self.ui.lines)
        self.assertNotIn("secret text", self.ui.text())
        self.assertEqual(self.ui.matching(r"^DM from"), [])

    def test_forged_content_sig(self) -> None:
        """Signed by mallory's key but claiming alice's: content_sig does not verify."""
        ts = int(self.clock.seconds() * 1000)
        ciphertext = crypto.oaep_encrypt(test_key(2).public_key(), b"secret text")
        forged = crypto.sign_content(
            test_key(3), crypto.dm_preimage(ciphertext, self.alice_id, self.bob_id, ts)
        )
        payload = {
            "ciphertext": ciphertext,
            "sender": self.alice_id,
            "sender_pub": crypto.encode_public_key(test_key(1)),
            "content_sig": forged,
        }
        self.bob.frame_received(self.server.envelope("USER_DELIVER", self.bob_id, payload, ts))
        self.assertRejected("invalid signature")

    def test_content_sig_over_other_ts(self) -> None:
        """A relay that re-stamps ts breaks the signature: rejected."""
        ts = int(self.clock.seconds() * 1000)
        ciphertext = crypto.oaep_encrypt(test_key(2).public_key(), b"secret text")
        sig = crypto.sign_content(test_key(1), crypto.dm_preimage(ciphertext, self.alice_id, self.bob_id, ts))
        payload = {
            "ciphertext": ciphertext,
            "sender": self.alice_id,
            "sender_pub": crypto.encode_public_key(test_key(1)),
            "content_sig": sig,
        }
        self.bob.frame_received(self.server.envelope("USER_DELIVER", self.bob_id, payload, ts + 1))
        self.assertRejected("invalid signature")

    def test_bad_server_signature(self) -> None:
        self.deliver(
            self.link, self.alice_id, self.bob_id, test_key(1), b"secret text", {"server_key": test_key(4)}
        )
        self.assertRejected("invalid server signature")

    def test_not_addressed_to_us(self) -> None:
        other = wire.new_uuid4()
        ts = int(self.clock.seconds() * 1000)
        ciphertext = crypto.oaep_encrypt(test_key(2).public_key(), b"secret text")
        payload = {
            "ciphertext": ciphertext,
            "sender": self.alice_id,
            "sender_pub": crypto.encode_public_key(test_key(1)),
            "content_sig": crypto.sign_content(
                test_key(1), crypto.dm_preimage(ciphertext, self.alice_id, other, ts)
            ),
        }
        self.bob.frame_received(self.server.envelope("USER_DELIVER", other, payload, ts))
        self.assertRejected("not addressed to you")

    def test_missing_fields(self) -> None:
        self.deliver(
            self.link, self.alice_id, self.bob_id, test_key(1), b"secret text", {"content_sig": None}
        )
        self.assertRejected("malformed (ciphertext, content_sig or sender_pub missing)")

    def test_bad_sender_id(self) -> None:
        self.deliver(self.link, self.alice_id, self.bob_id, test_key(1), b"secret text", {"sender": "nobody"})
        self.assertIn(
            "[WARNING] rejected DM claiming to be from an unnamed sender: no valid sender id", self.ui.lines
        )

    def test_weak_sender_key(self) -> None:
        self.deliver(
            self.link, self.alice_id, self.bob_id, test_key(1), b"secret text", {"sender_pub": "AAAA"}
        )
        self.assertTrue(self.ui.matching(r"rejected DM claiming to be from .*: unusable sender key"))

    def test_undecryptable(self) -> None:
        ts = int(self.clock.seconds() * 1000)
        ciphertext = crypto.oaep_encrypt(test_key(5).public_key(), b"secret text")  # not bob's key
        payload = {
            "ciphertext": ciphertext,
            "sender": self.alice_id,
            "sender_pub": crypto.encode_public_key(test_key(1)),
            "content_sig": crypto.sign_content(
                test_key(1), crypto.dm_preimage(ciphertext, self.alice_id, self.bob_id, ts)
            ),
        }
        self.bob.frame_received(self.server.envelope("USER_DELIVER", self.bob_id, payload, ts))
        self.assertRejected("it does not decrypt with your key")

    def test_changed_sender_key_rejected_until_trusted(self) -> None:
        self.bob.pins.pin_user(self.alice_id, crypto.encode_public_key(test_key(1)))
        # Alice's id, a valid signature by a *different* key (a new key or an impostor).
        self.deliver(self.link, self.alice_id, self.bob_id, test_key(3), b"secret text")
        self.assertRejected("signed by a key different from the one pinned for this user")
        self.assertTrue(self.ui.matching(rf"THE KEY OF {self.alice_id} HAS CHANGED"))
        self.assertTrue(self.ui.matching(rf"run /trust {self.alice_id}"))
        self.successResultOf(self.bob.trust(self.alice_id))
        self.assertTrue(self.ui.matching(rf"^\[KEY\] now trusting {self.alice_id} \["))
        self.deliver(self.link, self.alice_id, self.bob_id, test_key(3), b"after trust")
        self.assertIn(f"DM from {self.alice_id}: after trust", self.ui.lines)

    def test_tell_refuses_changed_key(self) -> None:
        self.bob.pins.pin_user(self.alice_id, crypto.encode_public_key(test_key(5)))
        self.successResultOf(self.bob.tell(self.alice_id, "secret text"))
        self.assertIn(f"[ERROR] message not sent: the key of {self.alice_id} changed", self.ui.lines)
        self.assertNotIn("MSG_DIRECT", self.link.types_sent())

    def test_unsolicited_garbage_frames(self) -> None:
        for ftype, payload in [
            ("USER_ADVERTISE", {"user_id": 5}),
            ("USER_ADVERTISE", {"user_id": self.alice_id, "pubkey": "not a key"}),
            ("USER_REMOVE", {}),
            ("USER_LIST", {"users": "nope"}),
            ("USER_LIST", {"users": [1, {"user_id": None}, self.alice_id]}),
            ("LIST_RESPONSE", {}),
            ("PUBKEY_RESPONSE", {"user_id": []}),
            ("ACK", {"msg_ref": {}}),
            ("SOMETHING_NEW", {"x": 1}),
            ("USER_LOGIN_OK", {}),
        ]:
            self.bob.frame_received(self.server.envelope(ftype, self.bob_id, payload))
        self.bob.frame_rejected(wire.NotJSON("garbage"))
        self.assertEqual(self.bob.counters.get("handler_errors"), None)
        self.assertTrue(self.bob.logged_in)


class ConnectionRetryTests(SynchronousTestCase):
    """Connection: our own consecutive-failure count drives the backoff; reasons are reported."""

    def test_backoff_grows_and_reports(self) -> None:
        clock = task.Clock()
        reports: list[tuple[float, str, bool]] = []

        class Recorder:
            def reconnect_scheduled(self, delay, reason, was_connected):
                reports.append((delay, reason, was_connected))

        attempts = []

        class RefusingEndpoint:
            def connect(self, factory):
                attempts.append(clock.seconds())
                return fail(ConnectionRefusedError("refused"))

        connection = Connection(
            URL, Recorder(), clock, endpoint=RefusingEndpoint(), retry_policy=lambda n: float(2**n)
        )
        connection.startService()
        for _ in range(3):
            clock.advance(reports[-1][0])
        self.assertEqual([r[0] for r in reports], [2.0, 4.0, 8.0, 16.0])
        self.assertTrue(all("refused" in r[1].lower() and r[2] is False for r in reports))
        self.assertEqual(len(attempts), 4)
        self.successResultOf(connection.stopService())
        clock.advance(100)
        self.assertEqual(len(attempts), 4)

    def test_own_failure_count_survives_tcp_connects(self) -> None:
        """A server that accepts TCP but fails the upgrade: ClientService restarts its count at 1,
        ours keeps growing until a WebSocket actually opens."""
        clock = task.Clock()
        delays: list[float] = []

        class Recorder:
            def reconnect_scheduled(self, delay, reason, was_connected):
                delays.append(delay)

            def connection_made(self, link):
                pass

        connection = Connection(URL, Recorder(), clock, endpoint=object(), retry_policy=lambda n: float(n))
        for _ in range(3):
            connection.protocol_closed(object(), False, 1006, "handshake failed")
            connection._retry_delay(1)
        self.assertEqual(delays, [1.0, 2.0, 3.0])
        connection.protocol_opened(FakeProtocol())
        connection._retry_delay(1)
        self.assertEqual(delays[-1], 1.0)

    def test_stop_closes_cleanly_with_1000(self) -> None:
        clock = task.Clock()
        lost = []

        class Recorder:
            def connection_made(self, link):
                pass

            def connection_lost(self, reason):
                lost.append(reason)

        connection = Connection(URL, Recorder(), clock, endpoint=object())
        protocol = FakeProtocol()
        connection.protocol_opened(protocol)
        stopped = connection.stopService()
        self.assertEqual(protocol.closes, [1000])
        self.assertNoResult(stopped)
        connection.protocol_closed(protocol, True, 1000, "bye")
        self.successResultOf(stopped)
        self.assertEqual(lost, ["bye"])

    def test_stop_does_not_wait_forever_for_the_close(self) -> None:
        clock = task.Clock()

        class Recorder:
            def connection_made(self, link):
                pass

        connection = Connection(URL, Recorder(), clock, endpoint=object(), close_timeout=3.0)
        connection.protocol_opened(FakeProtocol())
        stopped = connection.stopService()
        self.assertNoResult(stopped)
        clock.advance(3.0)
        self.successResultOf(stopped)


class FakeProtocol:
    """Stands in for an open ClientProtocol."""

    def __init__(self) -> None:
        from autobahn.websocket.protocol import WebSocketProtocol

        self.state = WebSocketProtocol.STATE_OPEN
        self.closes: list[int] = []

    def sendClose(self, code: int) -> None:
        self.closes.append(code)
