"""The fakes the session tests share.

ClientSession against an in-memory server that speaks PROTOCOL §5 and EXTENSIONS.

The fake server is deliberately small but real about crypto: SRP with socp_tw.auth's
SrpServer, hello proofs, transport signatures by test_key(0), content_sig checks,
USER_DELIVER with the original ts.  Workers are synchronous and the clock is a
task.Clock, so every test is deterministic and fast."""

from __future__ import annotations

import json
import re
from collections import deque
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import crypto, wire
from socp_tw.auth.errors import LoginError
from socp_tw.auth.hello import hello_proof_preimage, new_nonce
from socp_tw.auth.login import SrpServer
from socp_tw.auth.scrypt import TEST_SCRYPT
from socp_tw.auth.sealing import parse_keystore, seal_private_key
from socp_tw.auth.verifier import make_verifier, parse_verifier
from socp_tw.client.pins import PinStore
from socp_tw.client.session import (
    ClientSession,
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
        self.srp: tuple[str, SrpServer] | None = None

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
            "privkey_store": seal_private_key(key, password, params=TEST_SCRYPT),
            "pake_password": make_verifier(user_id, password, params=TEST_SCRYPT),
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
        parse_keystore(p["privkey_store"])
        parse_verifier(p["pake_password"])
        if p["user_id"] in self.accounts:
            return self.error(link, "NAME_IN_USE", "taken", "USER_REGISTER")
        self.accounts[p["user_id"]] = {k: p[k] for k in ("pubkey", "privkey_store", "pake_password")}
        self.push(link, "ACK", {"msg_ref": "USER_REGISTER", "user_id": p["user_id"]})

    def on_USER_LOGIN_START(self, link: FakeLink, env: wire.Envelope) -> None:
        user_id = env.payload["user_id"]
        account = self.accounts.get(user_id)
        if account is None:
            return self.error(link, "USER_NOT_FOUND", f"no user {user_id}", "USER_LOGIN_START")
        srp = SrpServer(account["pake_password"])
        challenge = srp.challenge(env.payload["A"])
        link.srp = (user_id, srp)
        self.push(link, "USER_LOGIN_CHALLENGE", {"user_id": user_id, **challenge})

    def on_USER_LOGIN_PROOF(self, link: FakeLink, env: wire.Envelope) -> None:
        user_id, srp = link.srp
        link.srp = None
        try:
            m2 = srp.verify(env.payload["M1"])
        except LoginError:
            return self.error(link, "LOGIN_FAILED", "bad password proof", "USER_LOGIN_PROOF")
        link.nonce = new_nonce()
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
        link.nonce = new_nonce()
        self.push(link, "USER_HELLO_NONCE", {"nonce": link.nonce, "server_id": self.server_id})

    def on_USER_HELLO(self, link: FakeLink, env: wire.Envelope) -> None:
        user_id, p = env.from_, env.payload
        nonce, link.nonce = link.nonce, None
        account = self.accounts.get(user_id)
        if account is not None:
            key = crypto.load_public_key(account["pubkey"])
            preimage = hello_proof_preimage(p.get("nonce", ""), user_id, self.server_id)
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

    def on_PRESENCE_FOLLOW(self, link: FakeLink, env: wire.Envelope) -> None:
        # Like a server without our follow mode: it relays all presence anyway.
        self.error(link, "UNKNOWN_TYPE", "unknown frame type PRESENCE_FOLLOW", "PRESENCE_FOLLOW")

    def on_PUBLIC_CHANNEL_SUBSCRIBE(self, link: FakeLink, env: wire.Envelope) -> None:
        self.error(
            link, "UNKNOWN_TYPE", "unknown frame type PUBLIC_CHANNEL_SUBSCRIBE", "PUBLIC_CHANNEL_SUBSCRIBE"
        )

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
            scrypt_params=TEST_SCRYPT,
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
