"""Other SOCP clients on our server (docs/INTEROP.md row 3): PEM-only clients.

Such a client sends its USER_HELLO key as b64u(PEM) and cannot load DER keys: every key we
send it (ACK server_pub, relayed adverts, USER_DELIVER sender_pub, PUBKEY_RESPONSE) is in PEM.
"""

from __future__ import annotations

from socp_tw import crypto, wire
from socp_tw.test.services.mesh.support import user_pub
from socp_tw.test.services.users.test_users import UserSideTestBase, alice_key, bob_key


def pem(key) -> str:
    return crypto.encode_public_key(key, pem=True)


class PemClientTests(UserSideTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.alice, self.pemmy = wire.new_uuid4(), wire.new_uuid4()

    def pem_hello(self, link=None) -> tuple:
        link = link or self.open_link()
        payload = {"client": "theirs/1", "pubkey": pem(bob_key())}
        self.send(link, "USER_HELLO", payload, from_=self.pemmy)
        return link, self.take(link)

    def test_keys_sent_to_a_pem_client_are_pem(self) -> None:
        alice_link = self.online(self.alice, alice_key(), register=False)
        self.take(alice_link)
        link, frames = self.pem_hello()
        ack = frames[0]
        self.assertEqual((ack["type"], ack["payload"]["msg_ref"]), ("ACK", "USER_HELLO"))
        self.assertEqual(ack["payload"]["server_pub"], pem(self.signer._identity.private_key))
        # The cached advert of alice, replayed after the hello, carries her key as PEM.
        [advert] = [f for f in frames if f["type"] == "USER_ADVERTISE"]
        self.assertEqual(advert["payload"]["pubkey"], pem(alice_key()))
        self.assertEqual(advert["payload"]["meta"]["pubkey"], pem(alice_key()))
        # Alice (a DER client) still gets DER keys, of the PEM user too.
        [to_alice] = [f for f in self.take(alice_link) if f["type"] == "USER_ADVERTISE"]
        self.assertEqual(to_alice["payload"]["pubkey"], crypto.encode_public_key(bob_key()))
        # A remote user's advert: PEM to the PEM user, DER to alice.
        remote = wire.new_uuid4()
        self.presence.user_online_remote(remote, wire.new_uuid4(), user_pub(), {})
        [live] = self.take(link)
        self.assertEqual(
            live["payload"]["pubkey"], crypto.encode_public_key(crypto.load_public_key(user_pub()), pem=True)
        )
        self.assertEqual(self.take(alice_link)[0]["payload"]["pubkey"], user_pub())
        # A DM from alice: sender_pub as PEM, and the content_sig verifies under it.
        ts = int(self.clock.seconds() * 1000)
        ciphertext = crypto.oaep_encrypt(bob_key().public_key(), b"hi")
        sig = crypto.sign_content(alice_key(), crypto.dm_preimage(ciphertext, self.alice, self.pemmy, ts))
        dm = {
            "ciphertext": ciphertext,
            "sender_pub": crypto.encode_public_key(alice_key()),
            "content_sig": sig,
        }
        self.send(alice_link, "MSG_DIRECT", dm, from_=self.alice, to=self.pemmy, ts=ts)
        deliver = self.one(link, "USER_DELIVER")
        self.assertEqual(deliver["payload"]["sender_pub"], pem(alice_key()))
        key = crypto.load_public_key(deliver["payload"]["sender_pub"])
        self.assertTrue(crypto.verify_dm_content_sig(key, ciphertext, self.alice, self.pemmy, ts, sig))
        # PUBKEY_REQUEST: PEM.
        self.send(link, "PUBKEY_REQUEST", {"user_id": self.alice}, from_=self.pemmy)
        self.assertEqual(self.one(link, "PUBKEY_RESPONSE")["payload"]["pubkey"], pem(alice_key()))
