"""The client's side of the public channel (/all, /members): ClientSession against a hand-driven
server.  The server's side is tested in socp_tw/test/services/public/.
"""

from __future__ import annotations

import json
from functools import partial

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import crypto, wire
from socp_tw.services.public import (
    make_key_parts,
)
from socp_tw.test.keys import test_key
from socp_tw.test.services.public.sim import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    A,
    B,
    server_pub,
    user_key,
    user_pub,
)
from socp_tw.testing import SynchronousWorkers

# ---------------------------------------------------------------- the client side (/all, /members)


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def show(self, text: str) -> None:
        self.lines.extend(text.split("\n"))

    def ask_password(self, prompt: str) -> Deferred:
        raise AssertionError("no password expected")


class _ClientLink:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send(self, data: bytes) -> None:
        self.sent.append(json.loads(data))

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        pass


class ClientPublicTests(SynchronousTestCase):
    """ClientSession's public channel, logged in by hand as Alice on server A (test_key(0))."""

    def setUp(self) -> None:
        from socp_tw.client.pins import PinStore
        from socp_tw.client.session import ClientSession

        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.ui = _Lines()
        self.pins = PinStore(self.mktemp())
        session = self.session = ClientSession(
            self.ui, self.pins, "ws://127.0.0.1:1", workers=SynchronousWorkers(), clock=self.clock
        )
        self.link = _ClientLink()
        session.connection_made(self.link)
        session.user_id, session._key, session._pub = ALICE, user_key(ALICE), user_pub(ALICE)
        session.logged_in = session._want_online = True
        session.server_id, session._server_key = A, test_key(0).public_key()
        self.ui.lines.clear()
        self.addCleanup(session.shutdown)

    def push(self, frame_type: str, payload: dict, ts: int = 1_700_000_000_500, key=None, to: str = ALICE):
        sig = crypto.sign_payload(key or test_key(0), payload)
        self.session.frame_received(wire.Envelope(frame_type, A, to, ts, payload, sig))

    def members(self, *user_ids: str, version: int = 3, reset: bool = True, removed=()) -> None:
        payload = {
            "version": version,
            "wraps": [],
            "members": [{"user_id": u, "pubkey": user_pub(u)} for u in user_ids],
            "removed": list(removed),
            "reset": reset,
        }
        self.push("PUBLIC_CHANNEL_UPDATED", payload)

    def test_membership_snapshot_then_changes(self) -> None:
        self.members(ALICE, BOB, CAROL, version=3)
        self.assertEqual(set(self.session.public_members), {ALICE, BOB, CAROL})
        self.members(DAVE, version=5, reset=False, removed=[BOB])
        self.assertEqual(
            (set(self.session.public_members), self.session.public_version), ({ALICE, CAROL, DAVE}, 5)
        )
        self.session.members()
        self.assertEqual(self.ui.lines[0], "Public channel, version 5 (3 members):")
        self.assertIn(f"* {ALICE}  [{crypto.fingerprint(user_key(ALICE))}] (you)", self.ui.lines)
        self.assertIn(f"  {DAVE}  [{crypto.fingerprint(user_key(DAVE))}]", self.ui.lines)
        # Lost connection: forgotten until the next snapshot.
        self.session.connection_lost("test")
        self.assertEqual((self.session.public_version, self.session.public_members), (None, {}))

    def test_updates_not_signed_by_the_server_ignored(self) -> None:
        self.members(ALICE, BOB)
        payload = {"version": 9, "wraps": [], "members": [], "removed": [BOB], "reset": True}
        self.push("PUBLIC_CHANNEL_UPDATED", payload, key=test_key(1))
        self.push("PUBLIC_CHANNEL_UPDATED", {"version": "9", "members": []})
        self.assertEqual((set(self.session.public_members), self.session.public_version), ({ALICE, BOB}, 3))

    def sent_public(self) -> list[dict]:
        return [f for f in self.link.sent if f["type"] == "MSG_PUBLIC_CHANNEL"]

    def test_all_sends_one_signed_copy_per_other_member(self) -> None:
        self.members(ALICE, BOB, CAROL)
        self.successResultOf(self.session.send_all("hello everyone"))
        frames = self.sent_public()
        self.assertEqual(sorted(f["to"] for f in frames), sorted([BOB, CAROL]))
        for frame in frames:
            payload = frame["payload"]
            self.assertEqual((frame["from"], payload["sender_pub"]), (ALICE, user_pub(ALICE)))
            self.assertTrue(crypto.verify_payload(user_key(ALICE), payload, frame["sig"]))
            preimage = crypto.public_preimage(payload["ciphertext"], ALICE, frame["ts"])
            self.assertTrue(crypto.pss_verify(user_key(ALICE), preimage, payload["content_sig"]))
            plain = crypto.oaep_decrypt(user_key(frame["to"]), payload["ciphertext"])
            self.assertEqual(plain, b"hello everyone")
        self.assertIn("[KEY] pinned the keys of 2 public channel members (first contact)", self.ui.lines)
        self.assertIn("[public] sent to 2 members: hello everyone", self.ui.lines)
        self.assertEqual(self.pins.user_key(BOB), user_pub(BOB))

    def test_all_splits_long_text_like_dms(self) -> None:
        from socp_tw.client.session import PART_RE

        self.members(ALICE, BOB)
        text = "é" * 400  # 800 bytes: two parts
        self.successResultOf(self.session.send_all(text))
        frames = self.sent_public()
        self.assertEqual(len(frames), 2)
        plains = [crypto.oaep_decrypt(user_key(BOB), f["payload"]["ciphertext"]).decode() for f in frames]
        self.assertTrue(all(PART_RE.match(p) for p in plains))
        self.assertIn(f"[public] sent to 1 member, 2 parts each: {text}", self.ui.lines)

    def test_all_with_nobody_else_or_no_membership(self) -> None:
        pending = self.session.send_all("anyone?")
        self.assertNoResult(pending)  # waits for the snapshot that follows a login
        self.clock.advance(10)
        self.successResultOf(pending)
        self.assertIn(
            "[ERROR] message not sent: the server has not told us the public channel's members", self.ui.lines
        )
        self.members(ALICE)
        self.successResultOf(self.session.send_all("anyone?"))
        self.assertIn("[public] nobody else is in the public channel: message not sent", self.ui.lines)
        self.assertEqual(self.sent_public(), [])

    def test_all_skips_a_member_whose_key_changed(self) -> None:
        self.pins.pin_user(BOB, user_pub(CAROL))
        self.members(ALICE, BOB, CAROL)
        self.successResultOf(self.session.send_all("careful"))
        self.assertEqual([f["to"] for f in self.sent_public()], [CAROL])
        self.assertIn(f"[WARNING] /all skips {BOB}: its key changed", self.ui.lines)
        self.assertTrue(any("THE KEY OF" in line and BOB in line for line in self.ui.lines))

    def incoming(self, sender: str, text: bytes, ts: int = 1_700_000_000_100, **over) -> dict:
        ciphertext = crypto.oaep_encrypt(user_key(ALICE).public_key(), text)
        payload = {
            "ciphertext": ciphertext,
            "content_sig": crypto.sign_content(
                user_key(sender), crypto.public_preimage(ciphertext, sender, ts)
            ),
            "sender": sender,
            "sender_pub": user_pub(sender),
        }
        payload.update(over)
        return payload

    def test_incoming_shown_exactly_once(self) -> None:
        payload = self.incoming(BOB, b"hi alice")
        self.push("MSG_PUBLIC_CHANNEL", payload, ts=1_700_000_000_100)
        self.push("MSG_PUBLIC_CHANNEL", payload, ts=1_700_000_000_100)  # a repeat on the way
        self.assertEqual(self.ui.lines.count(f"[public] {BOB}: hi alice"), 1)
        self.assertEqual(self.session.counters["public_duplicates"], 1)
        # The same text again is another message.
        self.push("MSG_PUBLIC_CHANNEL", self.incoming(BOB, b"hi alice", ts=7), ts=7)
        self.assertEqual(self.ui.lines.count(f"[public] {BOB}: hi alice"), 2)

    def test_incoming_multipart(self) -> None:
        from socp_tw.client.session import encode_dm_parts

        text = "z" * 1000
        parts = encode_dm_parts(text)
        for index, plain in reversed(list(enumerate(parts))):
            self.push("MSG_PUBLIC_CHANNEL", self.incoming(CAROL, plain, ts=100 + index), ts=100 + index)
        self.assertEqual(self.ui.lines[-1], f"[public] {CAROL}: {text}")
        self.assertEqual(self.session.counters["public_received"], 1)

    def test_incoming_forgeries_rejected(self) -> None:
        good = self.incoming(BOB, b"real")
        cases = [
            (self.incoming(BOB, b"x", content_sig=good["content_sig"]), {}, "invalid signature"),
            (good, {"key": test_key(1)}, "invalid server signature"),
            (good, {"to": CAROL}, "not addressed to you"),
            ({**good, "sender": "bob"}, {}, "no valid sender id"),
            ({k: v for k, v in good.items() if k != "ciphertext"}, {}, "malformed"),
        ]
        for payload, options, reason in cases:
            self.push("MSG_PUBLIC_CHANNEL", payload, **options)
            self.assertIn(reason, self.ui.lines[-1])
            self.assertTrue(self.ui.lines[-1].startswith("[WARNING] rejected public message"))
        self.assertFalse([line for line in self.ui.lines if line.startswith("[public]")])
        self.pins.pin_user(BOB, user_pub(CAROL))
        self.push("MSG_PUBLIC_CHANNEL", good, ts=1_700_000_000_100)  # genuine, but not the pinned key
        self.assertIn("signed by a key different", self.ui.lines[-1])

    def test_key_share(self) -> None:
        creator_pub = server_pub(A)
        [part] = make_key_parts(
            partial(crypto.sign_content, test_key(0)),
            creator_pub,
            [(ALICE, user_pub(ALICE)), (BOB, user_pub(BOB))],
            64,
        )
        payload = {**part, "creator_pub": creator_pub, "version": 3, "creator": A, "part": 0, "parts": 1}
        self.push("PUBLIC_CHANNEL_KEY_SHARE", payload)
        share = self.session.public_key_share
        self.assertEqual((share["version"], share["creator"]), (3, A))
        self.assertEqual(len(crypto.oaep_decrypt(user_key(ALICE), share["wrapped"])), 32)
        self.session.public_key_share = None
        for bad in (
            {**payload, "content_sig": part["content_sig"][::-1]},
            {**payload, "creator_pub": server_pub(B)},  # not our server's key though it says it made it
            {**payload, "shares": part["shares"][1:]},
        ):
            self.push("PUBLIC_CHANNEL_KEY_SHARE", bad)
        self.assertIsNone(self.session.public_key_share)
        self.assertEqual(self.session.counters["key_share_rejected"], 3)
