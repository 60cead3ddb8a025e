"""The user side, unit level: real Hub, Presence, Router and signer; fake links, store and mesh."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from socp_tw import crypto, wire
from socp_tw.auth.hello import hello_proof_preimage
from socp_tw.auth.login import SrpClient
from socp_tw.auth.scrypt import TEST_SCRYPT
from socp_tw.auth.sealing import open_private_key, seal_private_key
from socp_tw.auth.verifier import make_verifier, parse_verifier
from socp_tw.identity import ServerIdentity
from socp_tw.interfaces import ILinkHandler, IPresenceObserver
from socp_tw.limits import DEFAULT_LIMITS
from socp_tw.services.hub import Hub
from socp_tw.services.presence import Presence
from socp_tw.services.router import Router
from socp_tw.services.userkeys import UserKeys
from socp_tw.services.users import MAX_AUTH_ATTEMPTS_PER_LINK, MAX_BACKLOG, UserSide
from socp_tw.signer import FrameSigner
from socp_tw.test.keys import VECTORS, test_key, vector_key
from socp_tw.testing import FakeLink, FakePeerLinks, MemoryStore, SynchronousWorkers, verify_server_frame

PASSWORD = "correct horse battery staple"
OTHER_SERVER = "5b1e7c2a-9d3f-4e8a-b6c1-2f4d8a9e0c13"
_blobs: dict[tuple[str, int], tuple[str, str]] = {}


def alice_key():
    return vector_key("alice")


def bob_key():
    return vector_key("bob")


def blobs(user_id: str, key, password: str = PASSWORD) -> tuple[str, str]:
    """(privkey_store, pake_password) for a user, cached: each costs two fast scrypts."""
    cache_key = (user_id, id(key))
    if cache_key not in _blobs:
        _blobs[cache_key] = (
            seal_private_key(key, password, params=TEST_SCRYPT),
            make_verifier(user_id, password, params=TEST_SCRYPT),
        )
    return _blobs[cache_key]


class SlowStore(MemoryStore):
    """A MemoryStore whose get_user answers only when released, to test waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[tuple[str, Deferred]] = []

    def get_user(self, user_id: str) -> Deferred:
        d: Deferred = Deferred()
        self.waiting.append((user_id, d))
        return d

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for user_id, d in waiting:
            MemoryStore.get_user(self, user_id).chainDeferred(d)


class UserSideTestBase(SynchronousTestCase):
    store_class: type = MemoryStore

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.server_id = wire.new_uuid4()
        server_key = test_key(0)
        identity = ServerIdentity(self.server_id, server_key, crypto.encode_public_key(server_key))
        self.workers = SynchronousWorkers()
        self.signer = FrameSigner(identity, self.workers, now_ms=lambda: int(self.clock.seconds() * 1000))
        # The hub's connection rate limit has its own tests (test_hub); these flood a link on purpose.
        self.hub = Hub(self.signer, clock=self.clock, limits=replace(DEFAULT_LIMITS, conn_burst=1000.0))
        self.presence = Presence(self.server_id)
        self.peers = FakePeerLinks([OTHER_SERVER])
        self.router = Router(self.presence, self.signer, self.peers, clock=self.clock)
        self.store = self.store_class()
        self.user_keys = UserKeys()
        self.users = UserSide(
            self.hub,
            self.presence,
            self.router,
            self.store,
            self.signer,
            self.workers,
            clock=self.clock,
            user_keys=self.user_keys,
        )
        self._link_ids = 0

    # ---------------------------------------------------------------- plumbing

    def open_link(self) -> FakeLink:
        self._link_ids += 1
        link = FakeLink(f"in-{self._link_ids}")
        self.hub.link_opened(link)
        return link

    def close_link(self, link: FakeLink) -> None:
        self.hub.link_closed(link, "test")

    def send(
        self,
        link,
        type_: str,
        payload: dict,
        from_: str = "*",
        to: str = "*",
        sig: str = "",
        ts: int | None = None,
    ) -> None:
        ts = int(self.clock.seconds() * 1000) if ts is None else ts
        self.hub.frame_received(link, wire.Envelope(type_, from_, to, ts, payload, sig))

    def take(self, link: FakeLink) -> list[dict]:
        """Frames sent on ``link`` since the last take, each checked as server-signed."""
        frames = link.frames()
        link.sent.clear()
        for frame in frames:
            self.assertEqual(frame["from"], self.server_id)
            self.assertTrue(verify_server_frame(frame, self.signer.public_key_text), frame)
            self.assertIsInstance(frame["ts"], int)
        return frames

    def one(self, link: FakeLink, type_: str) -> dict:
        frames = self.take(link)
        self.assertEqual([f["type"] for f in frames], [type_], frames)
        return frames[0]

    def error(self, link: FakeLink, code: str) -> dict:
        frame = self.one(link, "ERROR")
        self.assertEqual(frame["payload"]["code"], code, frame["payload"])
        self.assertIsInstance(frame["payload"]["detail"], str)
        return frame["payload"]

    # ---------------------------------------------------------------- protocol steps

    def register_payload(self, user_id: str, key, password: str = PASSWORD) -> dict:
        privkey_store, pake_password = blobs(user_id, key, password)
        return {
            "user_id": user_id,
            "pubkey": crypto.encode_public_key(key),
            "privkey_store": privkey_store,
            "pake_password": pake_password,
        }

    def register(self, link, user_id: str, key, password: str = PASSWORD) -> dict:
        payload = self.register_payload(user_id, key, password)
        self.send(link, "USER_REGISTER", payload, from_=user_id, sig=crypto.sign_payload(key, payload))
        return self.take(link)[-1]

    def ask_nonce(self, link, user_id: str) -> str:
        self.send(link, "USER_HELLO_CHALLENGE", {}, from_=user_id)
        frame = self.one(link, "USER_HELLO_NONCE")
        self.assertEqual(frame["payload"]["server_id"], self.server_id)
        return frame["payload"]["nonce"]

    def hello_payload(
        self, user_id: str, key, nonce: str | None = None, server_id: str | None = None
    ) -> dict:
        payload: dict[str, Any] = {
            "client": "test/1",
            "pubkey": crypto.encode_public_key(key),
            "enc_pubkey": crypto.encode_public_key(key),
        }
        if nonce is not None:
            preimage = hello_proof_preimage(nonce, user_id, server_id or self.server_id)
            payload.update(nonce=nonce, proof=crypto.pss_sign(key, preimage))
        return payload

    def hello(self, link, user_id: str, key, proof: bool = True) -> list[dict]:
        nonce = self.ask_nonce(link, user_id) if proof else None
        self.send(link, "USER_HELLO", self.hello_payload(user_id, key, nonce), from_=user_id)
        return self.take(link)

    def online(self, user_id: str, key, register: bool = True) -> FakeLink:
        """A link on which ``user_id`` is authenticated (registered first unless ``register`` is False)."""
        link = self.open_link()
        if register and self.successResultOf(self.store.get_user(user_id)) is None:
            self.assertEqual(self.register(link, user_id, key)["type"], "ACK")
        frames = self.hello(link, user_id, key, proof=register)
        self.assertEqual(frames[0]["type"], "ACK", frames)
        return link

    def login(self, link, user_id: str, password: str) -> tuple[SrpClient, dict]:
        client = SrpClient(user_id, password)
        self.send(link, "USER_LOGIN_START", {"user_id": user_id, "A": client.start()}, from_=user_id)
        challenge = self.one(link, "USER_LOGIN_CHALLENGE")
        m1 = client.process_challenge(challenge["payload"])
        self.send(link, "USER_LOGIN_PROOF", {"user_id": user_id, "M1": m1}, from_=user_id)
        return client, self.take(link)[-1]


class RegistrationTests(UserSideTestBase):
    def test_interfaces(self) -> None:
        self.assertTrue(verifyObject(ILinkHandler, self.users))
        self.assertTrue(verifyObject(IPresenceObserver, self.users))

    def test_register(self) -> None:
        user_id = wire.new_uuid4()
        link = self.open_link()
        ack = self.register(link, user_id, alice_key())
        self.assertEqual(ack["type"], "ACK")
        self.assertEqual(ack["to"], user_id)
        self.assertEqual(ack["payload"], {"msg_ref": "USER_REGISTER", "user_id": user_id})
        row = self.successResultOf(self.store.get_user(user_id))
        self.assertEqual(row["pubkey"], crypto.encode_public_key(alice_key()))
        self.assertEqual((row["privkey_store"], row["pake_password"]), blobs(user_id, alice_key()))
        self.assertEqual(link.role, "pending")  # registering does not authenticate the link
        self.assertEqual(self.users.counters["registered"], 1)

    def test_pem_key_stored_normalised(self) -> None:
        user_id = wire.new_uuid4()
        payload = self.register_payload(user_id, alice_key())
        payload["pubkey"] = VECTORS["keys"]["alice"]["public_pem_b64u"]
        link = self.open_link()
        self.send(
            link, "USER_REGISTER", payload, from_=user_id, sig=crypto.sign_payload(alice_key(), payload)
        )
        self.one(link, "ACK")
        row = self.successResultOf(self.store.get_user(user_id))
        self.assertEqual(row["pubkey"], crypto.encode_public_key(alice_key()))

    def check_refused(
        self, payload: dict, code: str, from_: str | None = None, sig: str | None = None, key=None
    ) -> dict:
        link = self.open_link()
        key = key or alice_key()
        if sig is None:
            sig = crypto.sign_payload(key, payload)
        self.send(
            link, "USER_REGISTER", payload, from_=from_ or payload.get("user_id") or wire.new_uuid4(), sig=sig
        )
        error = self.error(link, code)
        self.assertEqual(error["msg_ref"], "USER_REGISTER")
        self.assertEqual(self.store.users, {})
        return error

    def test_shape(self) -> None:
        user_id = wire.new_uuid4()
        for name in ("user_id", "pubkey", "privkey_store", "pake_password"):
            payload = self.register_payload(user_id, alice_key())
            del payload[name]
            self.check_refused(payload, "MISSING_FIELD", from_=user_id)
            payload[name] = 12
            self.check_refused(payload, "BAD_FIELD", from_=user_id)

    def test_user_id_must_be_v4_and_from(self) -> None:
        not_v4 = "6f1c2d3e-4b5a-1c6d-8e7f-9a0b1c2d3e4f"
        self.check_refused(self.register_payload(not_v4, alice_key()), "BAD_UUID")
        user_id = wire.new_uuid4()
        error = self.check_refused(
            self.register_payload(user_id, alice_key()), "BAD_FIELD", from_=wire.new_uuid4()
        )
        self.assertIn("from", error["detail"])

    def test_weak_keys(self) -> None:
        for case in VECTORS["bad_keys"]:
            payload = self.register_payload(wire.new_uuid4(), alice_key())
            payload["pubkey"] = case["pubkey"]
            if not case["pubkey"]:
                self.check_refused(payload, "BAD_FIELD")  # empty string: a shape error
            else:
                self.check_refused(payload, case["expect"])

    def test_signature_required(self) -> None:
        payload = self.register_payload(wire.new_uuid4(), alice_key())
        self.check_refused(payload, "INVALID_SIG", sig="")
        self.check_refused(payload, "INVALID_SIG", key=bob_key())  # signed, but not by the registered key

    def test_blobs_must_parse(self) -> None:
        user_id = wire.new_uuid4()
        payload = self.register_payload(user_id, alice_key())
        payload["privkey_store"] = "socp-keystore-v1.bm9wZQ"
        self.assertIn("privkey_store", self.check_refused(payload, "BAD_FIELD")["detail"])
        payload = self.register_payload(user_id, alice_key())
        payload["pake_password"] = payload["privkey_store"]
        self.assertIn("pake_password", self.check_refused(payload, "BAD_FIELD")["detail"])

    def test_scrypt_floor(self) -> None:
        self.users._min_scrypt_n = 2**15
        self.check_refused(self.register_payload(wire.new_uuid4(), alice_key()), "BAD_FIELD")

    def test_existing_id(self) -> None:
        user_id = wire.new_uuid4()
        self.assertEqual(self.register(self.open_link(), user_id, alice_key())["type"], "ACK")
        link = self.open_link()
        payload = self.register_payload(user_id, bob_key())
        self.send(link, "USER_REGISTER", payload, from_=user_id, sig=crypto.sign_payload(bob_key(), payload))
        self.assertEqual(self.error(link, "NAME_IN_USE")["user_id"], user_id)
        row = self.successResultOf(self.store.get_user(user_id))
        self.assertEqual(row["pubkey"], crypto.encode_public_key(alice_key()))

    def test_pinned_id_cannot_register(self) -> None:
        user_id = wire.new_uuid4()
        self.close_link(self.online(user_id, alice_key(), register=False))
        link = self.open_link()
        self.assertEqual(self.register(link, user_id, alice_key())["payload"]["code"], "NAME_IN_USE")

    def test_after_hello(self) -> None:
        user_id = wire.new_uuid4()
        link = self.online(user_id, alice_key())
        self.register(link, user_id, alice_key())
        self.take(link)
        payload = self.register_payload(user_id, alice_key())
        self.send(
            link, "USER_REGISTER", payload, from_=user_id, sig=crypto.sign_payload(alice_key(), payload)
        )
        self.assertEqual(self.error(link, "BAD_FRAME")["detail"], "already authenticated")


class LoginTests(UserSideTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.user_id = wire.new_uuid4()
        self.assertEqual(self.register(self.open_link(), self.user_id, alice_key())["type"], "ACK")

    def test_login_then_hello(self) -> None:
        link = self.open_link()
        client, ok = self.login(link, self.user_id, PASSWORD)
        self.assertEqual(ok["type"], "USER_LOGIN_OK")
        self.assertEqual(ok["to"], self.user_id)
        payload = ok["payload"]
        self.assertEqual(payload["user_id"], self.user_id)
        self.assertTrue(client.verify_server(payload["M2"]))
        key = open_private_key(payload["privkey_store"], PASSWORD)
        self.assertEqual(crypto.encode_public_key(key), crypto.encode_public_key(alice_key()))
        self.send(
            link,
            "USER_HELLO",
            self.hello_payload(self.user_id, key, payload["nonce"], ok["from"]),
            from_=self.user_id,
        )
        ack = self.one(link, "ACK")
        self.assertEqual(ack["payload"]["msg_ref"], "USER_HELLO")
        self.assertEqual(self.users.counters["login_ok"], 1)

    def test_challenge_fields(self) -> None:
        link = self.open_link()
        client = SrpClient(self.user_id, PASSWORD)
        self.send(
            link, "USER_LOGIN_START", {"user_id": self.user_id, "A": client.start()}, from_=self.user_id
        )
        payload = self.one(link, "USER_LOGIN_CHALLENGE")["payload"]
        record = parse_verifier(blobs(self.user_id, alice_key())[1])
        self.assertEqual(payload["user_id"], self.user_id)
        self.assertEqual((payload["kdf"], payload["n"], payload["r"], payload["p"]), ("scrypt", 1024, 8, 1))
        self.assertEqual(wire.b64u_decode(payload["salt"]), record.salt)
        self.assertEqual(len(payload["B"]), 683)
        self.assertGreater(self.workers.calls, 0)  # the modexps ran on the workers

    def test_unknown_and_pinned_users(self) -> None:
        pinned = wire.new_uuid4()
        self.close_link(self.online(pinned, bob_key(), register=False))
        for user_id in (wire.new_uuid4(), pinned):
            link = self.open_link()
            self.send(link, "USER_LOGIN_START", {"user_id": user_id, "A": "AQ"}, from_=user_id)
            self.assertEqual(self.error(link, "USER_NOT_FOUND")["user_id"], user_id)

    def test_wrong_password(self) -> None:
        link = self.open_link()
        _client, frame = self.login(link, self.user_id, "wrong password")
        self.assertEqual(frame["payload"]["code"], "LOGIN_FAILED")
        self.assertEqual(frame["payload"]["detail"], "wrong password")
        self.assertNotIn("privkey_store", frame["payload"])
        # The attempt was consumed: the right proof for it cannot follow.
        self.send(link, "USER_LOGIN_PROOF", {"user_id": self.user_id, "M1": "AAAA"}, from_=self.user_id)
        self.assertIn("no login attempt", self.error(link, "LOGIN_FAILED")["detail"])
        self.assertEqual(self.users.counters["login_failed"], 1)

    def test_bad_a(self) -> None:
        link = self.open_link()
        for bad in ("AAAA", "!!", "A" * 1000):
            self.send(link, "USER_LOGIN_START", {"user_id": self.user_id, "A": bad}, from_=self.user_id)
            self.error(link, "LOGIN_FAILED")
        self.send(link, "USER_LOGIN_START", {"user_id": self.user_id}, from_=self.user_id)
        self.error(link, "MISSING_FIELD")
        self.send(link, "USER_LOGIN_START", {"user_id": self.user_id, "A": "AQ"}, from_=wire.new_uuid4())
        self.error(link, "BAD_FIELD")
        self.assertEqual(len(self.users.limiter), 0)  # none of these is a guess

    def test_expired_attempt(self) -> None:
        link = self.open_link()
        client = SrpClient(self.user_id, PASSWORD)
        self.send(
            link, "USER_LOGIN_START", {"user_id": self.user_id, "A": client.start()}, from_=self.user_id
        )
        m1 = client.process_challenge(self.one(link, "USER_LOGIN_CHALLENGE")["payload"])
        self.clock.advance(61)
        self.send(link, "USER_LOGIN_PROOF", {"user_id": self.user_id, "M1": m1}, from_=self.user_id)
        self.assertIn("expired", self.error(link, "LOGIN_FAILED")["detail"])

    def test_proof_for_another_user(self) -> None:
        link = self.open_link()
        client = SrpClient(self.user_id, PASSWORD)
        self.send(
            link, "USER_LOGIN_START", {"user_id": self.user_id, "A": client.start()}, from_=self.user_id
        )
        m1 = client.process_challenge(self.one(link, "USER_LOGIN_CHALLENGE")["payload"])
        other = wire.new_uuid4()
        self.send(link, "USER_LOGIN_PROOF", {"user_id": other, "M1": m1}, from_=other)
        self.error(link, "LOGIN_FAILED")

    def test_attempt_is_per_connection(self) -> None:
        first, second = self.open_link(), self.open_link()
        client = SrpClient(self.user_id, PASSWORD)
        self.send(
            first, "USER_LOGIN_START", {"user_id": self.user_id, "A": client.start()}, from_=self.user_id
        )
        m1 = client.process_challenge(self.one(first, "USER_LOGIN_CHALLENGE")["payload"])
        self.send(second, "USER_LOGIN_PROOF", {"user_id": self.user_id, "M1": m1}, from_=self.user_id)
        self.error(second, "LOGIN_FAILED")

    def fail_login(self, link=None) -> dict:
        return self.login(link or self.open_link(), self.user_id, "guess")[1]["payload"]

    def test_rate_limited(self) -> None:
        for _ in range(3):
            self.assertEqual(self.fail_login()["code"], "LOGIN_FAILED")
        self.assertEqual(self.users.limiter.retry_after(self.user_id), 0)
        self.assertEqual(self.fail_login()["code"], "LOGIN_FAILED")  # the 4th locks for 1 s
        link = self.open_link()
        self.send(link, "USER_LOGIN_START", {"user_id": self.user_id, "A": "AQ"}, from_=self.user_id)
        self.assertEqual(self.error(link, "RATE_LIMITED")["detail"], "retry after 1 s")
        self.clock.advance(1)
        self.assertEqual(self.fail_login()["code"], "LOGIN_FAILED")  # 5th: 2 s
        self.assertEqual(self.users.limiter.retry_after(self.user_id), 2)
        self.clock.advance(2)
        ok = self.login(self.open_link(), self.user_id, PASSWORD)[1]
        self.assertEqual(ok["type"], "USER_LOGIN_OK")
        self.assertEqual(self.fail_login()["code"], "LOGIN_FAILED")  # success reset the count
        self.assertEqual(self.users.limiter.retry_after(self.user_id), 0)

    def test_lock_checked_at_proof_time(self) -> None:
        # An attacker starts many attempts before the lock and sends the proofs after it.
        link = self.open_link()
        client = SrpClient(self.user_id, "guess")
        self.send(
            link, "USER_LOGIN_START", {"user_id": self.user_id, "A": client.start()}, from_=self.user_id
        )
        m1 = client.process_challenge(self.one(link, "USER_LOGIN_CHALLENGE")["payload"])
        for _ in range(4):
            self.fail_login()
        self.send(link, "USER_LOGIN_PROOF", {"user_id": self.user_id, "M1": m1}, from_=self.user_id)
        self.error(link, "RATE_LIMITED")
        self.assertEqual(self.users.counters["login_failed"], 4)


class HelloTests(UserSideTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.user_id = wire.new_uuid4()
        self.assertEqual(self.register(self.open_link(), self.user_id, alice_key())["type"], "ACK")

    def test_hello_with_proof(self) -> None:
        link = self.open_link()
        frames = self.hello(link, self.user_id, alice_key())
        self.assertEqual([f["type"] for f in frames], ["ACK"])
        self.assertEqual(frames[0]["to"], self.user_id)
        self.assertEqual(
            frames[0]["payload"],
            {"msg_ref": "USER_HELLO", "server_id": self.server_id, "server_pub": self.signer.public_key_text},
        )
        entry = self.presence.lookup(self.user_id)
        self.assertIs(entry.link, link)
        self.assertEqual(entry.pubkey, crypto.encode_public_key(alice_key()))
        self.assertEqual(entry.meta["client"], "test/1")
        self.assertEqual((link.role, link.identity), ("user", self.user_id))

    def refused(self, link, payload: dict, code: str = "AUTH_FAILED") -> dict:
        self.send(link, "USER_HELLO", payload, from_=self.user_id)
        error = self.error(link, code)
        self.assertEqual(error["msg_ref"], "USER_HELLO")
        self.assertIsNone(self.presence.lookup(self.user_id))
        self.assertEqual(link.role, "pending")
        return error

    def test_registered_needs_proof(self) -> None:
        link = self.open_link()
        self.assertIn(
            "nonce and proof", self.refused(link, self.hello_payload(self.user_id, alice_key()))["detail"]
        )

    def test_replayed_hello(self) -> None:
        first = self.open_link()
        nonce = self.ask_nonce(first, self.user_id)
        payload = self.hello_payload(self.user_id, alice_key(), nonce)
        self.send(first, "USER_HELLO", payload, from_=self.user_id)
        self.one(first, "ACK")
        self.close_link(first)
        # The same nonce and proof on another connection, then again on one that asked for a nonce.
        self.refused(self.open_link(), payload)
        second = self.open_link()
        self.ask_nonce(second, self.user_id)
        self.assertIn("nonce unknown", self.refused(second, payload)["detail"])

    def test_nonce_single_use(self) -> None:
        link = self.open_link()
        nonce = self.ask_nonce(link, self.user_id)
        bad = self.hello_payload(self.user_id, alice_key(), nonce)
        bad["proof"] = crypto.pss_sign(alice_key(), b"something else")
        self.assertEqual(self.refused(link, bad)["detail"], "proof does not verify")
        self.refused(link, self.hello_payload(self.user_id, alice_key(), nonce))  # now consumed

    def test_new_nonce_replaces_old(self) -> None:
        link = self.open_link()
        old = self.ask_nonce(link, self.user_id)
        self.ask_nonce(link, self.user_id)
        self.refused(link, self.hello_payload(self.user_id, alice_key(), old))

    def test_nonce_expires(self) -> None:
        link = self.open_link()
        nonce = self.ask_nonce(link, self.user_id)
        self.clock.advance(61)
        self.assertIn(
            "expired", self.refused(link, self.hello_payload(self.user_id, alice_key(), nonce))["detail"]
        )

    def test_wrong_key(self) -> None:
        link = self.open_link()
        nonce = self.ask_nonce(link, self.user_id)
        self.assertIn(
            "registered", self.refused(link, self.hello_payload(self.user_id, bob_key(), nonce))["detail"]
        )

    def test_proof_for_another_server(self) -> None:
        link = self.open_link()
        nonce = self.ask_nonce(link, self.user_id)
        self.refused(link, self.hello_payload(self.user_id, alice_key(), nonce, server_id=OTHER_SERVER))

    def test_pipe_in_nonce(self) -> None:
        link = self.open_link()
        self.ask_nonce(link, self.user_id)
        payload = self.hello_payload(self.user_id, alice_key())
        payload.update(nonce="a|b", proof="AAAA")
        self.refused(link, payload)

    def test_bad_keys(self) -> None:
        link = self.open_link()
        payload = self.hello_payload(self.user_id, alice_key())
        payload["pubkey"] = VECTORS["bad_keys"][0]["pubkey"]
        self.refused(link, payload, "BAD_KEY")
        payload = self.hello_payload(self.user_id, alice_key())
        payload["enc_pubkey"] = "AAAA"
        self.assertIn("enc_pubkey", self.refused(link, payload, "BAD_KEY")["detail"])
        payload = self.hello_payload(self.user_id, alice_key())
        payload["client"] = ["x"]
        self.refused(link, payload, "BAD_FIELD")

    def test_name_in_use(self) -> None:
        first = self.online(self.user_id, alice_key())
        second = self.open_link()
        frames = self.hello(second, self.user_id, alice_key())
        self.assertEqual(frames[0]["payload"]["code"], "NAME_IN_USE")
        self.assertIs(self.presence.lookup(self.user_id).link, first)
        self.assertEqual(second.role, "pending")
        # Authentication comes first: without a proof the answer does not say the user is online.
        third = self.open_link()
        self.send(third, "USER_HELLO", self.hello_payload(self.user_id, alice_key()), from_=self.user_id)
        self.error(third, "AUTH_FAILED")

    def test_hello_again_after_failure(self) -> None:
        link = self.open_link()
        self.refused(link, self.hello_payload(self.user_id, alice_key()))
        self.assertEqual(self.hello(link, self.user_id, alice_key())[0]["type"], "ACK")
        self.send(link, "USER_HELLO", self.hello_payload(self.user_id, alice_key()), from_=self.user_id)
        self.assertEqual(self.error(link, "BAD_FRAME")["detail"], "already authenticated")

    def test_offline_on_close(self) -> None:
        link = self.online(self.user_id, alice_key())
        self.close_link(link)
        self.assertIsNone(self.presence.lookup(self.user_id))
        self.assertNotIn(link.link_id, self.users._links)

    def test_attempts_per_link_bounded(self) -> None:
        link = self.open_link()
        for _ in range(MAX_AUTH_ATTEMPTS_PER_LINK):
            self.ask_nonce(link, self.user_id)
        self.send(link, "USER_HELLO_CHALLENGE", {}, from_=self.user_id)
        self.error(link, "RATE_LIMITED")
        self.assertIsNone(link.closed)


class FirstUseTests(UserSideTestBase):
    """Ids never registered here: a plain spec-style hello pins the key (PROTOCOL-EXTENSIONS §6.3)."""

    def setUp(self) -> None:
        super().setUp()
        self.user_id = "01111111-1111-1411-1811-111111111111"  # a vector id: valid UUID, not strictly v4

    def test_first_use_pins(self) -> None:
        link = self.open_link()
        payload = {"client": "other-impl", "pubkey": VECTORS["keys"]["alice"]["public_pem_raw"]}
        self.send(link, "USER_HELLO", payload, from_=self.user_id, to="*")
        self.one(link, "ACK")
        row = self.successResultOf(self.store.get_user(self.user_id))
        self.assertEqual(row["pubkey"], crypto.encode_public_key(alice_key()))
        self.assertIsNone(row["pake_password"])
        self.assertEqual(self.presence.lookup(self.user_id).pubkey, row["pubkey"])
        self.assertEqual(self.users.counters["tofu_pinned"], 1)
        self.close_link(link)
        # The same key again (another encoding): accepted.  Another key: refused.
        again = self.open_link()
        payload["pubkey"] = VECTORS["keys"]["alice"]["public_der_b64u"]
        self.send(again, "USER_HELLO", payload, from_=self.user_id)
        self.one(again, "ACK")
        self.close_link(again)
        third = self.open_link()
        self.send(third, "USER_HELLO", self.hello_payload(self.user_id, bob_key()), from_=self.user_id)
        self.assertEqual(
            self.error(third, "BAD_KEY")["detail"], "key differs from the key pinned for this user"
        )
        self.assertIsNone(self.presence.lookup(self.user_id))

    def test_proof_checked_when_present(self) -> None:
        link = self.open_link()
        nonce = self.ask_nonce(link, self.user_id)
        payload = self.hello_payload(self.user_id, alice_key(), nonce)
        payload["proof"] = crypto.pss_sign(bob_key(), b"x")
        self.send(link, "USER_HELLO", payload, from_=self.user_id)
        self.error(link, "AUTH_FAILED")
        self.assertIsNone(self.successResultOf(self.store.get_user(self.user_id)))
        payload = {"pubkey": crypto.encode_public_key(alice_key()), "nonce": "only-a-nonce"}
        self.send(link, "USER_HELLO", payload, from_=self.user_id)
        self.error(link, "AUTH_FAILED")
        self.assertEqual(self.hello(link, self.user_id, alice_key())[0]["type"], "ACK")

    def test_online_elsewhere(self) -> None:
        self.presence.user_online_remote(self.user_id, OTHER_SERVER, crypto.encode_public_key(bob_key()), {})
        link = self.open_link()
        self.send(link, "USER_HELLO", self.hello_payload(self.user_id, alice_key()), from_=self.user_id)
        self.assertIn(OTHER_SERVER, self.error(link, "NAME_IN_USE")["detail"])
        self.assertIsNone(self.successResultOf(self.store.get_user(self.user_id)))
        # Proving possession of a key is enough to move the user here.
        self.assertEqual(self.hello(link, self.user_id, alice_key())[0]["type"], "ACK")
        self.assertTrue(self.presence.lookup(self.user_id).local)

    def test_registration_race(self) -> None:
        # Registered by someone else between the hello's lookup and its pin.
        self.users._store = store = SlowStore()
        link = self.open_link()
        self.send(link, "USER_HELLO", self.hello_payload(self.user_id, bob_key()), from_=self.user_id)
        store.pin_user_key(self.user_id, crypto.encode_public_key(alice_key()))
        store.release()
        self.error(link, "BAD_KEY")


class OrderingTests(UserSideTestBase):
    store_class = SlowStore

    def test_frames_wait_for_the_hello(self) -> None:
        user_id = wire.new_uuid4()
        link = self.open_link()
        self.send(link, "USER_HELLO", self.hello_payload(user_id, alice_key()), from_=user_id)
        self.send(link, "LIST_REQUEST", {}, from_=user_id)
        self.send(link, "HEARTBEAT", {}, from_=user_id)
        self.send(link, "PUBKEY_REQUEST", {"user_id": user_id}, from_=user_id)
        self.assertEqual(link.sent, [])
        self.store.release()
        types = [f["type"] for f in self.take(link)]
        self.assertEqual(types, ["ACK", "LIST_RESPONSE", "PUBKEY_RESPONSE"])

    def test_close_while_waiting(self) -> None:
        user_id = wire.new_uuid4()
        link = self.open_link()
        self.send(link, "USER_HELLO", self.hello_payload(user_id, alice_key()), from_=user_id)
        self.send(link, "LIST_REQUEST", {}, from_=user_id)
        self.close_link(link)
        self.store.release()
        self.assertEqual(link.sent, [])
        self.assertIsNone(self.presence.lookup(user_id))

    def test_backlog_bounded(self) -> None:
        user_id = wire.new_uuid4()
        link = self.open_link()
        self.send(link, "USER_HELLO", self.hello_payload(user_id, alice_key()), from_=user_id)
        for _ in range(MAX_BACKLOG + 2):
            self.send(link, "HEARTBEAT", {}, from_=user_id)
        frames = self.take(link)
        self.assertEqual([f["payload"]["code"] for f in frames], ["RATE_LIMITED", "RATE_LIMITED"])
        self.store.release()
        self.assertEqual([f["type"] for f in self.take(link)], ["ACK"])


class AuthenticatedLinkTests(UserSideTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.alice, self.bob = wire.new_uuid4(), wire.new_uuid4()
        self.alice_link = self.online(self.alice, alice_key())
        self.bob_link = self.online(self.bob, bob_key())
        self.take(self.alice_link)
        self.take(self.bob_link)

    def dm(
        self,
        sender: str,
        recipient: str,
        key,
        ciphertext: str | None = None,
        sig: str | None = None,
        sender_pub: str | None = None,
        from_: str | None = None,
        ts: int = 1_700_000_000_123,
    ) -> dict:
        ciphertext = ciphertext or crypto.oaep_encrypt(bob_key().public_key(), b"hi")
        if sig is None:
            sig = crypto.sign_content(key, crypto.dm_preimage(ciphertext, sender, recipient, ts))
        payload = {
            "ciphertext": ciphertext,
            "sender_pub": sender_pub or crypto.encode_public_key(key),
            "content_sig": sig,
        }
        link = self.alice_link if sender == self.alice else self.bob_link
        self.send(link, "MSG_DIRECT", payload, from_=from_ or sender, to=recipient, ts=ts)
        return payload

    def test_dm_local(self) -> None:
        payload = self.dm(self.alice, self.bob, alice_key())
        self.assertEqual(self.take(self.alice_link), [])
        deliver = self.one(self.bob_link, "USER_DELIVER")
        self.assertEqual(deliver["to"], self.bob)
        self.assertEqual(deliver["ts"], 1_700_000_000_123)
        self.assertEqual(
            deliver["payload"],
            {
                "ciphertext": payload["ciphertext"],
                "content_sig": payload["content_sig"],
                "sender": self.alice,
                "sender_pub": payload["sender_pub"],
            },
        )
        self.assertEqual(self.users.counters["routed.MSG_DIRECT"], 1)

    def test_dm_other_variant_verified_on_workers(self) -> None:
        ciphertext = crypto.oaep_encrypt(bob_key().public_key(), b"hi")
        ts = 1_700_000_000_555
        sig = crypto.sign_content(alice_key(), f"{ciphertext}|{self.alice}|{self.bob}|{ts}".encode())
        calls = self.workers.calls
        self.dm(self.alice, self.bob, alice_key(), ciphertext=ciphertext, sig=sig, ts=ts)
        self.one(self.bob_link, "USER_DELIVER")
        self.assertGreater(self.workers.calls, calls + 1)  # the verification and the signing

    def test_forged_content_sig(self) -> None:
        ciphertext = crypto.oaep_encrypt(bob_key().public_key(), b"hi")
        for sig in (crypto.sign_content(bob_key(), b"forged"), "!!!", "AAAA"):
            self.dm(self.alice, self.bob, alice_key(), ciphertext=ciphertext, sig=sig)
            self.assertEqual(self.error(self.alice_link, "INVALID_SIG")["msg_ref"], "MSG_DIRECT")
        self.dm(self.alice, self.bob, alice_key(), ciphertext=ciphertext, sig="")
        self.error(self.alice_link, "BAD_FIELD")  # an empty content_sig is a shape error
        # Signed over another recipient (a replay to someone else).
        ts = 1_700_000_000_001
        sig = crypto.sign_content(alice_key(), crypto.dm_preimage(ciphertext, self.alice, self.alice, ts))
        self.dm(self.alice, self.bob, alice_key(), ciphertext=ciphertext, sig=sig, ts=ts)
        self.error(self.alice_link, "INVALID_SIG")
        self.assertEqual(self.take(self.bob_link), [])

    def test_dm_signed_while_checked_until_the_link_sends_a_forgery(self) -> None:
        ciphertext = crypto.oaep_encrypt(bob_key().public_key(), b"hi")
        forged = crypto.sign_content(bob_key(), b"forged")
        self.dm(self.alice, self.bob, alice_key())
        self.one(self.bob_link, "USER_DELIVER")
        self.assertEqual(self.router.counters.get("unverified"), None)
        # The first forgery is caught after its USER_DELIVER was started: dropped unsent.
        self.dm(self.alice, self.bob, alice_key(), ciphertext=ciphertext, sig=forged)
        self.error(self.alice_link, "INVALID_SIG")
        self.assertEqual((self.router.counters["unverified"], self.users.counters["sign_ahead_lost"]), (1, 1))
        # The link has lost its head start: the next forgery is checked before anything is signed.
        self.dm(self.alice, self.bob, alice_key(), ciphertext=ciphertext, sig=forged, ts=1_700_000_000_124)
        self.error(self.alice_link, "INVALID_SIG")
        self.assertEqual((self.router.counters["unverified"], self.users.counters["sign_ahead_lost"]), (1, 1))
        self.dm(self.alice, self.bob, alice_key(), ts=1_700_000_000_125)
        self.one(self.bob_link, "USER_DELIVER")
        self.assertEqual(self.users.counters["routed.MSG_DIRECT"], 2)
        # Another user's link keeps its own head start.
        self.dm(self.bob, self.alice, bob_key(), ciphertext=ciphertext, sig=forged)
        self.error(self.bob_link, "INVALID_SIG")
        self.assertEqual(self.router.counters["unverified"], 2)

    def test_sender_pub_must_be_own_key(self) -> None:
        # Bob's key and a valid signature by Bob's key: still not Alice's authenticated key.
        self.dm(self.alice, self.bob, bob_key())
        self.assertIn("authenticated", self.error(self.alice_link, "INVALID_SIG")["detail"])
        self.dm(self.alice, self.bob, alice_key(), sender_pub=VECTORS["keys"]["alice"]["public_pem_b64u"])
        self.one(self.bob_link, "USER_DELIVER")  # the same key in another encoding is fine

    def test_spoofed_from(self) -> None:
        self.dm(self.alice, self.alice, bob_key(), from_=self.bob)
        error = self.error(self.alice_link, "BAD_FROM")
        self.assertEqual(error["msg_ref"], "MSG_DIRECT")
        self.assertEqual(self.users.counters["spoofed_from"], 1)
        self.assertEqual(self.take(self.bob_link), [])
        self.send(self.alice_link, "LIST_REQUEST", {}, from_=self.bob)
        self.error(self.alice_link, "BAD_FROM")

    def test_unknown_recipient(self) -> None:
        nobody = wire.new_uuid4()
        self.dm(self.alice, nobody, alice_key())
        self.assertEqual(self.error(self.alice_link, "USER_NOT_FOUND")["user_id"], nobody)

    def test_remote_recipient(self) -> None:
        carol = wire.new_uuid4()
        self.presence.user_online_remote(carol, OTHER_SERVER, crypto.encode_public_key(test_key(1)), {})
        self.take(self.alice_link)
        payload = self.dm(self.alice, carol, alice_key())
        [(server, frame)] = self.peers.sent_frames()
        self.assertEqual((server, frame["type"], frame["to"]), (OTHER_SERVER, "SERVER_DELIVER", OTHER_SERVER))
        self.assertEqual(frame["payload"]["sender"], self.alice)
        self.assertEqual(frame["payload"]["content_sig"], payload["content_sig"])
        self.assertEqual(self.take(self.alice_link), [])

    def test_bad_shapes(self) -> None:
        self.send(
            self.alice_link,
            "MSG_DIRECT",
            {"sender_pub": "x", "content_sig": "x"},
            from_=self.alice,
            to=self.bob,
        )
        self.error(self.alice_link, "MISSING_FIELD")
        self.dm(self.alice, "*", alice_key())
        self.error(self.alice_link, "BAD_UUID")
        self.send(
            self.alice_link,
            "MSG_DIRECT",
            {"ciphertext": "AA", "content_sig": "x"},
            from_=self.alice,
            to=self.bob,
        )
        self.error(self.alice_link, "MISSING_FIELD")
        self.send(
            self.alice_link,
            "MSG_DIRECT",
            {"ciphertext": 5, "content_sig": "x", "sender_pub": "x"},
            from_=self.alice,
            to=self.bob,
        )
        self.error(self.alice_link, "BAD_FIELD")
        self.assertEqual(self.take(self.bob_link), [])

    def test_list(self) -> None:
        carol = wire.new_uuid4()
        self.presence.user_online_remote(carol, OTHER_SERVER, crypto.encode_public_key(test_key(1)), {})
        self.take(self.alice_link)
        self.send(self.alice_link, "LIST_REQUEST", {}, from_=self.alice)
        frame = self.one(self.alice_link, "LIST_RESPONSE")
        expected = sorted([self.alice, self.bob, carol])
        self.assertEqual(frame["payload"], {"online_users": expected, "users": expected})
        self.assertEqual(frame["to"], self.alice)

    def test_pubkey(self) -> None:
        self.send(self.alice_link, "PUBKEY_REQUEST", {"user_id": self.bob}, from_=self.alice)
        frame = self.one(self.alice_link, "PUBKEY_RESPONSE")
        self.assertEqual(
            frame["payload"],
            {"user_id": self.bob, "pubkey": crypto.encode_public_key(bob_key()), "server_id": self.server_id},
        )
        nobody = wire.new_uuid4()
        self.send(self.alice_link, "PUBKEY_REQUEST", {"user_id": nobody}, from_=self.alice)
        self.assertEqual(self.error(self.alice_link, "USER_NOT_FOUND")["user_id"], nobody)
        self.send(self.alice_link, "PUBKEY_REQUEST", {"user_id": "me"}, from_=self.alice)
        self.error(self.alice_link, "BAD_UUID")

    def test_quiet_frames(self) -> None:
        for type_ in ("HEARTBEAT", "ERROR", "ACK"):
            self.send(self.alice_link, type_, {"code": "X"}, from_=self.alice)
        self.send(self.alice_link, "ERROR", {"code": "X"}, from_=self.bob)
        self.assertEqual(self.take(self.alice_link), [])
        self.assertIsNone(self.alice_link.closed)

    def test_ctrl_close(self) -> None:
        self.send(self.alice_link, "CTRL_CLOSE", {})
        self.assertEqual(self.alice_link.closed[0], 1000)

    def test_unknown_type(self) -> None:
        self.send(self.alice_link, "MSG_WHATEVER", {}, from_=self.alice)
        self.assertEqual(self.error(self.alice_link, "UNKNOWN_TYPE")["msg_ref"], "MSG_WHATEVER")
        self.assertIsNone(self.alice_link.closed)

    def test_extension_point(self) -> None:
        seen = []

        def handler(link, user_id, envelope):
            seen.append((link, user_id, envelope.type))
            raise wire.BadFieldType("nope", "x")

        self.users.register_user_frame("MSG_PUBLIC_CHANNEL", handler)
        self.send(self.alice_link, "MSG_PUBLIC_CHANNEL", {}, from_=self.alice)
        self.assertEqual(seen, [(self.alice_link, self.alice, "MSG_PUBLIC_CHANNEL")])
        self.error(self.alice_link, "BAD_FIELD")

    def test_handler_crash_is_contained(self) -> None:
        self.users.register_user_frame("BOOM", lambda link, user_id, envelope: 1 / 0)
        self.send(self.alice_link, "BOOM", {}, from_=self.alice)
        self.error(self.alice_link, "INTERNAL")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.send(self.alice_link, "LIST_REQUEST", {}, from_=self.alice)
        self.one(self.alice_link, "LIST_RESPONSE")


class _HoldAdverts:
    """Workers that hold back signing the USER_ADVERTISE about one user until released."""

    size = 1

    def __init__(self, inner: SynchronousWorkers, about: str) -> None:
        self.inner = inner
        self.about = about
        self.waiting: list[tuple[Deferred, Any, tuple]] = []

    def run(self, f: Any, *args: Any, **kwargs: Any) -> Deferred:
        # FrameSigner.frame runs frame_now(type, to, payload, ts) here.
        if args and args[0] == "USER_ADVERTISE" and args[2]["user_id"] == self.about:
            d: Deferred = Deferred()
            self.waiting.append((d, f, args))
            return d
        return self.inner.run(f, *args, **kwargs)

    def release(self, error: Exception | None = None) -> None:
        waiting, self.waiting = self.waiting, []
        for d, f, args in waiting:
            if error is None:
                d.callback(f(*args))
            else:
                d.errback(error)


class PreHelloTests(UserSideTestBase):
    def test_user_frames_need_hello(self) -> None:
        user_id = wire.new_uuid4()
        link = self.open_link()
        self.send(link, "USER_HELLO_CHALLENGE", {}, from_=user_id)
        self.take(link)
        for type_ in ("MSG_DIRECT", "LIST_REQUEST", "PUBKEY_REQUEST"):
            self.send(link, type_, {}, from_=user_id)
            self.assertIn("USER_HELLO first", self.error(link, "BAD_FRAME")["detail"])
        self.send(link, "SERVER_HELLO_JOIN", {}, from_=user_id)
        self.error(link, "UNKNOWN_TYPE")
        self.send(link, "HEARTBEAT", {}, from_=user_id)
        self.assertEqual(self.take(link), [])

    def test_challenge_from_must_be_a_uuid(self) -> None:
        # PROTOCOL §1: every envelope's "from" is a UUID, so the wire layer refuses "*" here.
        frame = wire.encode_frame("USER_HELLO_CHALLENGE", "*", "*", 1, {})
        self.assertRaises(wire.BadUUID, wire.parse_envelope, frame)

    def test_first_frame_not_claimed(self) -> None:
        link = self.open_link()
        self.send(link, "LIST_REQUEST", {}, from_=wire.new_uuid4())
        self.error(link, "UNKNOWN_TYPE")  # the hub's answer: nobody claimed it as a first frame
        self.assertEqual(self.users._links, {})

    def test_state_dropped_on_close(self) -> None:
        link = self.open_link()
        self.send(link, "USER_HELLO_CHALLENGE", {}, from_=wire.new_uuid4())
        self.assertIn(link.link_id, self.users._links)
        self.close_link(link)
        self.assertEqual(self.users._links, {})


class RelayTests(UserSideTestBase):
    def test_presence_relayed_to_local_users(self) -> None:
        alice, bob, carol = wire.new_uuid4(), wire.new_uuid4(), wire.new_uuid4()
        alice_link = self.online(alice, alice_key())
        carol_link = self.online(carol, test_key(1))
        self.take(alice_link)
        self.take(carol_link)
        bob_link = self.open_link()
        self.register(bob_link, bob, bob_key())
        frames = self.hello(bob_link, bob, bob_key())
        # Bob gets his ACK, then the current advertisements of the others (not his own).
        self.assertEqual([f["type"] for f in frames], ["ACK", "USER_ADVERTISE", "USER_ADVERTISE"])
        self.assertEqual(sorted(f["payload"]["user_id"] for f in frames[1:]), sorted([alice, carol]))
        # Alice and Carol get the same signed bytes about Bob.
        self.assertEqual(alice_link.sent, carol_link.sent)
        advert = self.one(alice_link, "USER_ADVERTISE")
        self.take(carol_link)
        self.assertEqual(advert["to"], "*")
        bob_pub = crypto.encode_public_key(bob_key())
        self.assertEqual(
            advert["payload"],
            {
                "user_id": bob,
                "server_id": self.server_id,
                "pubkey": bob_pub,
                "meta": {"client": "test/1", "enc_pubkey": bob_pub, "pubkey": bob_pub},
            },
        )
        # A remote user, then its removal.
        dave = wire.new_uuid4()
        self.presence.user_online_remote(dave, OTHER_SERVER, bob_pub, {"x": 1})
        self.assertEqual(self.one(alice_link, "USER_ADVERTISE")["payload"]["server_id"], OTHER_SERVER)
        self.presence.user_offline_remote(dave, OTHER_SERVER)
        self.assertEqual(len(self.take(carol_link)), 2)
        self.assertEqual(
            self.one(alice_link, "USER_REMOVE")["payload"], {"user_id": dave, "server_id": OTHER_SERVER}
        )
        # Bob leaves.
        self.take(bob_link)
        self.close_link(bob_link)
        self.assertEqual(
            self.one(alice_link, "USER_REMOVE")["payload"], {"user_id": bob, "server_id": self.server_id}
        )
        self.assertEqual(self.one(carol_link, "USER_REMOVE")["payload"]["user_id"], bob)
        self.assertNotIn(bob, self.users._adverts)
        self.assertEqual(set(self.users._adverts), {alice, carol})

    def test_user_online_while_an_advert_is_being_signed_still_gets_it(self) -> None:
        """A remote user advertised while its signature is being made is not missed by a
        user whose hello completes in that window (the ACK and cached adverts go out at once,
        before the relay's signature is ready)."""
        alice, bob, dave = wire.new_uuid4(), wire.new_uuid4(), wire.new_uuid4()
        alice_link = self.online(alice, alice_key())
        self.take(alice_link)
        held = _HoldAdverts(self.workers, about=dave)
        self.signer._workers = held
        self.presence.user_online_remote(dave, OTHER_SERVER, crypto.encode_public_key(test_key(1)), {})
        self.assertEqual(len(held.waiting), 1)
        bob_link = self.open_link()
        self.register(bob_link, bob, bob_key())
        frames = self.hello(bob_link, bob, bob_key())
        self.assertEqual([f["type"] for f in frames], ["ACK"])  # the adverts wait behind dave's
        held.release()
        # Alice's advert, signed only now (nobody needed it before), after dave's.
        self.assertEqual([f["payload"]["user_id"] for f in self.take(bob_link)], [dave, alice])
        # Alice: dave's advert, then bob's (which waited behind it: links keep call order).
        self.assertEqual([f["payload"]["user_id"] for f in self.take(alice_link)], [dave, bob])
        self.assertIsInstance(self.users._adverts[dave], bytes)

    def test_advert_withdrawn_while_being_signed_is_not_cached(self) -> None:
        alice, dave = wire.new_uuid4(), wire.new_uuid4()
        alice_link = self.online(alice, alice_key())
        self.take(alice_link)
        held = _HoldAdverts(self.workers, about=dave)
        self.signer._workers = held
        self.presence.user_online_remote(dave, OTHER_SERVER, crypto.encode_public_key(test_key(1)), {})
        self.presence.user_offline_remote(dave, OTHER_SERVER)
        held.release()
        self.assertNotIn(dave, self.users._adverts)
        # Alice sees both, in order.
        self.assertEqual([f["type"] for f in self.take(alice_link)], ["USER_ADVERTISE", "USER_REMOVE"])

    def test_advert_whose_signing_fails_is_not_cached_and_not_sent(self) -> None:
        alice, bob, dave = wire.new_uuid4(), wire.new_uuid4(), wire.new_uuid4()
        alice_link = self.online(alice, alice_key())
        self.take(alice_link)
        held = _HoldAdverts(self.workers, about=dave)
        self.signer._workers = held
        self.presence.user_online_remote(dave, OTHER_SERVER, crypto.encode_public_key(test_key(1)), {})
        bob_link = self.open_link()
        self.register(bob_link, bob, bob_key())
        self.hello(bob_link, bob, bob_key())
        held.release(error=RuntimeError("signing broke"))
        # Logged once by the relay, and once by each link that skipped its copy (alice, bob).
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 3)
        self.assertNotIn(dave, self.users._adverts)
        # Bob's copy of dave's was skipped; alice's advert, queued behind it, still came.
        self.assertEqual([f["payload"]["user_id"] for f in self.take(bob_link)], [alice])
        # Alice's copy was skipped; bob's advert, queued behind it, still went out.
        self.assertEqual([f["payload"]["user_id"] for f in self.take(alice_link)], [bob])
        # Both links still work.
        self.send(bob_link, "LIST_REQUEST", {}, from_=bob)
        self.one(bob_link, "LIST_RESPONSE")
