"""ClientSession: every check an incoming DM must pass before it is shown."""

from __future__ import annotations

from socp_tw import crypto, wire
from socp_tw.test.client.session.fakes import SessionTestBase
from socp_tw.test.keys import test_key


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
