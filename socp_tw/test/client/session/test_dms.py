"""ClientSession: sending and receiving DMs, long DMs in parts, and DMs the server could not deliver."""

from __future__ import annotations

import json
import time

from twisted.internet.testing import StringTransport

from socp_tw import crypto, wire
from socp_tw.client.console import Console
from socp_tw.client.session import (
    MAX_DM_BYTES,
    MAX_PENDING_PER_SENDER,
    PART_TEXT_BYTES,
    SENT_DM_TTL,
    SentDMs,
    encode_dm_parts,
)
from socp_tw.test.client.session.fakes import SessionTestBase
from socp_tw.test.keys import test_key


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
        for n in range(MAX_PENDING_PER_SENDER + 1):
            header = f"[SOCP-PART 1/2 id={n:016x}]\nchunk".encode()
            self.deliver(bob_link, alice_id, bob_id, test_key(1), header)
        self.assertEqual(len(bob._partials), MAX_PENDING_PER_SENDER)
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
        self.clock.advance(SENT_DM_TTL + 1)
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
