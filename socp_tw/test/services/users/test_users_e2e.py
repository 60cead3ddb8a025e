"""Register, log in, hello and direct messages against a real server, spoken to frame by frame."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from socp_tw import crypto, wire
from socp_tw.auth.hello import hello_proof_preimage
from socp_tw.auth.login import SrpClient
from socp_tw.auth.scrypt import TEST_SCRYPT
from socp_tw.auth.sealing import open_private_key, seal_private_key
from socp_tw.auth.verifier import make_verifier
from socp_tw.services.store import DB_FILE
from socp_tw.test.keys import VECTORS, test_key, vector_id, vector_key
from socp_tw.test.servers import RunningServer, connect_raw
from socp_tw.testing import verify_server_frame

PASSWORD = "hunter2 is not a good password"


class RawUser:
    """One raw WebSocket connection speaking our user frames by hand."""

    def __init__(self, case: TestCase, server: RunningServer, factory, user_id: str, key) -> None:
        self.case = case
        self.server = server
        self.factory = factory
        self.user_id = user_id
        self.key = key

    def send(
        self,
        frame_type: str,
        payload: dict[str, Any],
        to: str = "*",
        sign: bool = False,
        from_: str | None = None,
        ts: int | None = None,
    ) -> None:
        self.factory.send(
            {
                "type": frame_type,
                "from": from_ or self.user_id,
                "to": to,
                "ts": wire.now_ms() if ts is None else ts,
                "payload": payload,
                "sig": crypto.sign_payload(self.key, payload) if sign else "",
            }
        )

    @inlineCallbacks
    def receive(self, frame_type: str | None = None):
        while True:
            frame = yield self.factory.messages.get()
            # The public channel's pushes (docs/PUBLIC-CHANNEL.md) come between the others.
            if not frame["type"].startswith("PUBLIC_CHANNEL_") or frame["type"] == frame_type:
                break
        self.case.assertEqual(frame["from"], self.server.server_id)
        self.case.assertTrue(verify_server_frame(frame, self.server.public_key_text), frame)
        if frame_type is not None:
            self.case.assertEqual(frame["type"], frame_type, frame)
        return frame

    @inlineCallbacks
    def error(self, code: str):
        frame = yield self.receive("ERROR")
        self.case.assertEqual(frame["payload"]["code"], code, frame["payload"])
        return frame["payload"]

    def register(self, password: str = PASSWORD) -> None:
        payload = {
            "user_id": self.user_id,
            "pubkey": crypto.encode_public_key(self.key),
            "privkey_store": seal_private_key(self.key, password, params=TEST_SCRYPT),
            "pake_password": make_verifier(self.user_id, password, params=TEST_SCRYPT),
        }
        self.send("USER_REGISTER", payload, sign=True)

    def hello_payload(self, nonce: str | None) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "client": "e2e/1",
            "pubkey": crypto.encode_public_key(self.key),
            "enc_pubkey": crypto.encode_public_key(self.key),
        }
        if nonce is not None:
            preimage = hello_proof_preimage(nonce, self.user_id, self.server.server_id)
            payload.update(nonce=nonce, proof=crypto.pss_sign(self.key, preimage))
        return payload

    @inlineCallbacks
    def hello(self):
        """USER_HELLO_CHALLENGE then USER_HELLO with the proof; fire with the answer."""
        self.send("USER_HELLO_CHALLENGE", {}, to=self.server.server_id)
        nonce = (yield self.receive("USER_HELLO_NONCE"))["payload"]["nonce"]
        payload = self.hello_payload(nonce)
        self.send("USER_HELLO", payload, to=self.server.server_id)
        answer = yield self.receive()
        return answer, payload

    @inlineCallbacks
    def login(self, password: str):
        """SRP login; fire with the last frame (USER_LOGIN_OK or ERROR) and the SRP client."""
        client = SrpClient(self.user_id, password)
        self.send("USER_LOGIN_START", {"user_id": self.user_id, "A": client.start()})
        challenge = yield self.receive()
        if challenge["type"] != "USER_LOGIN_CHALLENGE":
            return challenge, client
        m1 = client.process_challenge(challenge["payload"])
        self.send("USER_LOGIN_PROOF", {"user_id": self.user_id, "M1": m1})
        answer = yield self.receive()
        return answer, client

    def dm(
        self, recipient: str, text: bytes, recipient_key, sig: str | None = None, from_: str | None = None
    ):
        ts = wire.now_ms()
        ciphertext = crypto.oaep_encrypt(recipient_key.public_key(), text)
        if sig is None:
            sig = crypto.sign_content(self.key, crypto.dm_preimage(ciphertext, self.user_id, recipient, ts))
        payload = {
            "ciphertext": ciphertext,
            "sender_pub": crypto.encode_public_key(self.key),
            "content_sig": sig,
        }
        self.send("MSG_DIRECT", payload, to=recipient, ts=ts, from_=from_)
        return payload, ts


class UserSideEndToEndTests(TestCase):
    def setUp(self) -> None:
        self.server = RunningServer(self, 0)
        self.addCleanup(self.server.stop)

    @inlineCallbacks
    def user(self, key, user_id: str | None = None, server: RunningServer | None = None):
        server = server or self.server
        factory = yield connect_raw(self, server.url)
        return RawUser(self, server, factory, user_id or wire.new_uuid4(), key)

    @inlineCallbacks
    def registered_online(self, key):
        user = yield self.user(key)
        user.register()
        yield user.receive("ACK")
        ack, _ = yield user.hello()
        self.assertEqual(ack["type"], "ACK", ack)
        return user

    @inlineCallbacks
    def test_register_login_hello_and_dm(self):
        alice = yield self.registered_online(vector_key("alice"))
        # Bob registers on one connection, then logs in with only his password on another.
        bob_id = wire.new_uuid4()
        registering = yield self.user(vector_key("bob"), bob_id)
        registering.register()
        ack = yield registering.receive("ACK")
        self.assertEqual(ack["payload"], {"msg_ref": "USER_REGISTER", "user_id": bob_id})
        bob = yield self.user(None, bob_id)
        ok, client = yield bob.login(PASSWORD)
        self.assertEqual(ok["type"], "USER_LOGIN_OK", ok)
        self.assertTrue(client.verify_server(ok["payload"]["M2"]))
        bob.key = open_private_key(ok["payload"]["privkey_store"], PASSWORD)
        payload = bob.hello_payload(ok["payload"]["nonce"])
        bob.send("USER_HELLO", payload, to=ok["from"])
        ack = yield bob.receive("ACK")
        self.assertEqual(ack["payload"]["server_pub"], self.server.public_key_text)
        self.assertEqual(ack["payload"]["server_id"], self.server.server_id)
        # Bob sees Alice's advertisement; Alice sees Bob's.
        advert = yield bob.receive("USER_ADVERTISE")
        self.assertEqual(advert["payload"]["user_id"], alice.user_id)
        advert = yield alice.receive("USER_ADVERTISE")
        self.assertEqual(advert["payload"]["user_id"], bob_id)
        # A direct message, end to end.
        sent, ts = alice.dm(bob_id, "hello bob ✓".encode(), vector_key("bob"))
        deliver = yield bob.receive("USER_DELIVER")
        self.assertEqual(deliver["ts"], ts)
        self.assertEqual(deliver["payload"]["sender"], alice.user_id)
        self.assertEqual(deliver["payload"]["ciphertext"], sent["ciphertext"])
        self.assertEqual(
            crypto.oaep_decrypt(bob.key, deliver["payload"]["ciphertext"]).decode(), "hello bob ✓"
        )
        self.assertTrue(
            crypto.verify_dm_content_sig(
                crypto.load_public_key(deliver["payload"]["sender_pub"]),
                deliver["payload"]["ciphertext"],
                alice.user_id,
                bob_id,
                ts,
                deliver["payload"]["content_sig"],
            )
        )
        # The list and key lookups.
        bob.send("LIST_REQUEST", {})
        listing = yield bob.receive("LIST_RESPONSE")
        self.assertEqual(listing["payload"]["online_users"], sorted([alice.user_id, bob_id]))
        bob.send("PUBKEY_REQUEST", {"user_id": alice.user_id})
        answer = yield bob.receive("PUBKEY_RESPONSE")
        self.assertEqual(answer["payload"]["pubkey"], crypto.encode_public_key(vector_key("alice")))
        # Bob leaves: Alice is told.
        bob.send("CTRL_CLOSE", {})
        code, _ = yield bob.factory.closed
        self.assertEqual(code, 1000)
        removed = yield alice.receive("USER_REMOVE")
        self.assertEqual(removed["payload"], {"user_id": bob_id, "server_id": self.server.server_id})
        # A DM for Bob, now offline, is held for him (docs/MESH.md "Held messages").
        _, ts = alice.dm(bob_id, b"are you there?", vector_key("bob"))
        queued = yield alice.receive("ACK")
        self.assertEqual(
            queued["payload"],
            {"msg_ref": "MSG_DIRECT", "user_id": bob_id, "ts": ts, "status": "queued", "reason": "offline"},
        )
        # A user no server has ever seen is still not found.
        stranger = wire.new_uuid4()
        alice.dm(stranger, b"who?", vector_key("bob"))
        self.assertEqual((yield alice.error("USER_NOT_FOUND"))["user_id"], stranger)

    @inlineCallbacks
    def test_wrong_password_then_rate_limited(self):
        user = yield self.user(vector_key("alice"))
        user.register()
        yield user.receive("ACK")
        for _ in range(4):
            answer, _ = yield user.login("not the password")
            self.assertEqual(answer["payload"]["code"], "LOGIN_FAILED", answer)
            self.assertNotIn("privkey_store", answer["payload"])
        answer, _ = yield user.login(PASSWORD)
        self.assertEqual(
            answer["payload"],
            {"code": "RATE_LIMITED", "detail": "retry after 1 s", "msg_ref": "USER_LOGIN_START"},
        )
        unknown = yield self.user(None)
        answer, _ = yield unknown.login(PASSWORD)
        self.assertEqual(answer["payload"]["code"], "USER_NOT_FOUND")

    @inlineCallbacks
    def test_replayed_hello_and_name_in_use(self):
        alice = yield self.user(vector_key("alice"))
        alice.register()
        yield alice.receive("ACK")
        ack, hello = yield alice.hello()
        self.assertEqual(ack["type"], "ACK")
        # The captured hello, replayed on a new connection: the nonce is unknown there.
        replay = yield self.user(vector_key("alice"), alice.user_id)
        replay.send("USER_HELLO", hello)
        yield replay.error("AUTH_FAILED")
        # A genuine second hello while the first connection is up.
        answer, _ = yield replay.hello()
        self.assertEqual(answer["payload"]["code"], "NAME_IN_USE", answer)

    @inlineCallbacks
    def test_forged_sig_and_spoofed_from(self):
        alice = yield self.registered_online(vector_key("alice"))
        bob = yield self.registered_online(vector_key("bob"))
        yield alice.receive("USER_ADVERTISE")
        yield bob.receive("USER_ADVERTISE")
        alice.dm(bob.user_id, b"forged", vector_key("bob"), sig=crypto.sign_content(test_key(1), b"x"))
        self.assertEqual((yield alice.error("INVALID_SIG"))["msg_ref"], "MSG_DIRECT")
        alice.dm(alice.user_id, b"as bob", vector_key("alice"), from_=bob.user_id)
        yield alice.error("BAD_FROM")
        # Neither reached Bob: the next thing he gets is this list.
        bob.send("LIST_REQUEST", {})
        yield bob.receive("LIST_RESPONSE")
        self.assertEqual(self.server.service.getServiceNamed("users").counters["spoofed_from"], 1)

    @inlineCallbacks
    def test_first_use_hello_from_spec_client(self):
        spec_id = vector_id("alice")  # not a strict v4: other implementations' ids are accepted
        spec = yield self.user(vector_key("alice"), spec_id)
        spec.send(
            "USER_HELLO",
            {
                "client": "other-socp/1.3",
                "pubkey": VECTORS["keys"]["alice"]["public_pem_b64u"],
                "enc_pubkey": VECTORS["keys"]["alice"]["public_pem_b64u"],
            },
        )
        ack = yield spec.receive("ACK")
        self.assertEqual(ack["payload"]["msg_ref"], "USER_HELLO")
        spec.send("CTRL_CLOSE", {})
        yield spec.factory.closed
        # The pin survives a restart; another key for the id is refused.
        registered = yield self.user(vector_key("bob"))
        registered.register()
        yield registered.receive("ACK")
        registered.send("CTRL_CLOSE", {})
        yield registered.factory.closed
        yield self.server.stop()
        self.assertTrue((Path(self.server.data_dir) / DB_FILE).is_file())
        restarted = RunningServer(self, 0, data_dir=self.server.data_dir)
        self.addCleanup(restarted.stop)
        impostor = yield self.user(vector_key("bob"), spec_id, server=restarted)
        impostor.send("USER_HELLO", impostor.hello_payload(None))
        self.assertIn("pinned", (yield impostor.error("BAD_KEY"))["detail"])
        again = yield self.user(vector_key("alice"), spec_id, server=restarted)
        again.send("USER_HELLO", again.hello_payload(None))
        yield again.receive("ACK")
        # The registered user still logs in after the restart.
        returning = yield self.user(None, registered.user_id, server=restarted)
        ok, _ = yield returning.login(PASSWORD)
        self.assertEqual(ok["type"], "USER_LOGIN_OK", ok)
