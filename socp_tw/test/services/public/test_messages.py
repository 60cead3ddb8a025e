"""MSG_PUBLIC_CHANNEL from local users: checked, then routed to members like a DM."""

from __future__ import annotations

from socp_tw import crypto, wire
from socp_tw.content import ContentError
from socp_tw.test.services.public.sim import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    A,
    B,
    PublicTestBase,
    public_message,
    user_key,
    user_pub,
)

# ---------------------------------------------------------------- MSG_PUBLIC_CHANNEL


class MessageTests(PublicTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.a, self.b = self.mesh(A, B)
        self.alice = self.net.join_user(self.a, ALICE)
        self.bob = self.net.join_user(self.a, BOB)
        self.carol = self.net.join_user(self.b, CAROL)
        self.net.pump()
        for node, user in ((self.a, ALICE), (self.a, BOB), (self.b, CAROL)):
            node.frames(user)
        self.handler = self.a.users.handlers["MSG_PUBLIC_CHANNEL"]

    def send(self, envelope: wire.Envelope, sender: str = ALICE):
        return self.handler(self.a.links[sender], sender, envelope)

    def test_local_member(self) -> None:
        message = public_message(ALICE, BOB)
        self.assertIsNone(self.send(message))
        [frame] = self.a.frames(BOB, ("MSG_PUBLIC_CHANNEL",))
        self.assertEqual((frame["from"], frame["to"], frame["ts"]), (A, BOB, message.ts))
        self.assertEqual(
            frame["payload"],
            {
                "ciphertext": message.payload["ciphertext"],
                "content_sig": message.payload["content_sig"],
                "sender": ALICE,
                "sender_pub": user_pub(ALICE),
            },
        )
        self.assertEqual(crypto.oaep_decrypt(user_key(BOB), frame["payload"]["ciphertext"]), b"hi all")
        self.assertEqual(self.a.public.counters["routed"], 1)

    def test_remote_member(self) -> None:
        message = public_message(ALICE, CAROL)
        self.send(message)
        self.net.pump()
        [frame] = self.b.frames(CAROL, ("MSG_PUBLIC_CHANNEL",))
        self.assertEqual((frame["from"], frame["ts"], frame["payload"]["sender"]), (B, message.ts, ALICE))
        [(_, _, deliver)] = [d for d in self.net.delivered if d[2]["type"] == "SERVER_DELIVER"]
        self.assertEqual(deliver["payload"]["type"], "MSG_PUBLIC_CHANNEL")
        self.assertEqual(deliver["to"], B)

    def test_to_public_goes_to_every_online_member(self) -> None:
        """docs/INTEROP.md row 5: one copy ``to: "public"``, as other clients send it."""
        message = public_message(ALICE, BOB, to="public")
        self.assertIsNone(self.send(message))
        self.net.pump()
        [local] = self.a.frames(BOB, ("MSG_PUBLIC_CHANNEL",))
        [remote] = self.b.frames(CAROL, ("MSG_PUBLIC_CHANNEL",))
        for frame, server in ((local, A), (remote, B)):
            self.assertEqual((frame["from"], frame["ts"]), (server, message.ts))
            self.assertEqual(frame["payload"]["ciphertext"], message.payload["ciphertext"])
            self.assertEqual(frame["payload"]["sender"], ALICE)
        self.assertEqual(self.a.frames(ALICE, ("MSG_PUBLIC_CHANNEL",)), [])  # never back to the sender
        self.assertEqual(self.a.public.counters["to_public"], 1)
        self.assertEqual(self.a.users.errors, [])

    def test_to_public_still_checks_the_content_sig(self) -> None:
        forged = public_message(
            ALICE, BOB, to="public", content_sig=public_message(BOB, BOB).payload["content_sig"]
        )
        self.failureResultOf(self.send(forged), ContentError)
        self.assertEqual(self.a.frames(BOB, ("MSG_PUBLIC_CHANNEL",)), [])

    def test_bad_to_refused(self) -> None:
        with self.assertRaises(wire.FrameError) as caught:
            self.send(public_message(ALICE, BOB, to="nobody"))
        self.assertEqual(caught.exception.code, "BAD_UUID")

    def test_not_a_member(self) -> None:
        with self.assertRaises(wire.FrameError) as caught:
            self.send(public_message(ALICE, DAVE))
        self.assertEqual(caught.exception.code, "USER_NOT_FOUND")
        self.assertEqual(self.a.public.counters["not_member"], 1)

    def test_member_not_reachable(self) -> None:
        self.b.presence.user_offline_local(CAROL)  # gone, but its leave not merged here yet
        self.a.presence.user_offline_remote(CAROL, B)
        self.send(public_message(ALICE, CAROL))
        [(link, error)] = self.a.users.errors
        self.assertIs(link, self.alice)
        self.assertEqual(error.pop("detail"), f"member {CAROL} is not online")
        self.assertEqual(error, {"code": "USER_NOT_FOUND", "msg_ref": "MSG_PUBLIC_CHANNEL", "user_id": CAROL})

    def test_forged_content_sig(self) -> None:
        forged = public_message(ALICE, BOB, content_sig=public_message(BOB, BOB).payload["content_sig"])
        failure = self.failureResultOf(self.send(forged), ContentError)
        self.assertEqual(failure.value.code, "INVALID_SIG")
        self.assertEqual(self.a.frames(BOB, ("MSG_PUBLIC_CHANNEL",)), [])

    def test_other_preimage_variant_accepted(self) -> None:
        message = public_message(ALICE, BOB)
        ciphertext = message.payload["ciphertext"]
        piped = crypto.sign_content(user_key(ALICE), f"{ciphertext}|{ALICE}|{message.ts}".encode())
        self.successResultOf(self.send(public_message(ALICE, BOB, ciphertext=ciphertext, content_sig=piped)))
        self.assertEqual(len(self.a.frames(BOB, ("MSG_PUBLIC_CHANNEL",))), 1)

    def test_sender_key_must_be_the_authenticated_one(self) -> None:
        with self.assertRaises(wire.FrameError) as caught:
            self.send(public_message(ALICE, BOB, sender_pub=user_pub(BOB)))
        self.assertEqual(caught.exception.code, "INVALID_SIG")

    def test_malformed(self) -> None:
        message = public_message(ALICE, BOB)
        for name, code in (("ciphertext", "MISSING_FIELD"), ("sender_pub", "MISSING_FIELD")):
            payload = {k: v for k, v in message.payload.items() if k != name}
            with self.assertRaises(wire.FrameError) as caught:
                self.send(wire.Envelope("MSG_PUBLIC_CHANNEL", ALICE, BOB, message.ts, payload))
            self.assertEqual(caught.exception.code, code)

    def test_forged_on_the_way_is_refused_by_the_recipients_server(self) -> None:
        # A SERVER_DELIVER whose content_sig does not verify never reaches Carol.
        message = public_message(ALICE, CAROL)
        payload = {
            "user_id": CAROL,
            "ciphertext": message.payload["ciphertext"],
            "content_sig": public_message(BOB, CAROL).payload["content_sig"],
            "sender": ALICE,
            "sender_pub": user_pub(ALICE),
            "type": "MSG_PUBLIC_CHANNEL",
        }
        self.net.queue.append((A, B, self.a.signer.frame_now("SERVER_DELIVER", B, payload, ts=message.ts)))
        self.net.pump()
        self.assertEqual(self.b.frames(CAROL, ("MSG_PUBLIC_CHANNEL",)), [])
        errors = [d[2]["payload"] for d in self.net.delivered if d[2]["type"] == "ERROR"]
        self.assertEqual([e["code"] for e in errors], ["INVALID_SIG"])
