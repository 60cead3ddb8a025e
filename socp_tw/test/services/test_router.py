"""The router (PROTOCOL.md §4-5): local delivery, SERVER_DELIVER, forwarding, errors back to the origin."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from socp_tw import crypto, wire
from socp_tw.content import extract_fields
from socp_tw.identity import ServerIdentity
from socp_tw.interfaces import IRouter, Unverified, UserNotFound
from socp_tw.services import router
from socp_tw.services.presence import Presence
from socp_tw.services.router import Router
from socp_tw.signer import FrameSigner
from socp_tw.test.keys import test_key, vector_id, vector_key
from socp_tw.testing import FakeLink, FakePeerLinks, FakeRouter, SynchronousWorkers, verify_server_frame

HERE = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
OTHER = "6fa459ea-ee8a-4ca4-894e-db77e160355e"
THIRD = "16fd2706-8baf-433b-82eb-8c7fada847da"
ALICE = vector_id("alice")
BOB = vector_id("bob")
CAROL = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
TS = 1_700_000_000_123
ALICE_PUB = crypto.encode_public_key(vector_key("alice"))
BOB_PUB = crypto.encode_public_key(vector_key("bob"))


def make_signer(server_id: str = HERE) -> FrameSigner:
    key = test_key(0)
    identity = ServerIdentity(server_id, key, crypto.encode_public_key(key))
    return FrameSigner(identity, SynchronousWorkers(), now_ms=lambda: 1_700_000_000_999)


def dm_fields(
    sender_key_name: str = "alice", sender: str = ALICE, recipient: str = BOB, ts: int = TS
) -> dict:
    ciphertext = wire.b64u_encode(b"\x01" * 512)
    sig = crypto.sign_content(
        vector_key(sender_key_name), crypto.dm_preimage(ciphertext, sender, recipient, ts)
    )
    return {"ciphertext": ciphertext, "content_sig": sig}


class RouterContract:
    """What every IRouter does; ``make()`` returns a router where BOB is local and CAROL is on OTHER."""

    def make(self):
        raise NotImplementedError

    def setUp(self) -> None:
        self.router = self.make()

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IRouter, self.router))

    def test_unknown_recipient(self) -> None:
        with self.assertRaises(UserNotFound):
            self.router.route("MSG_DIRECT", THIRD, dm_fields(recipient=THIRD), TS, ALICE, ALICE_PUB)

    def test_local_and_remote(self) -> None:
        self.assertEqual(self.router.route("MSG_DIRECT", BOB, dm_fields(), TS, ALICE, ALICE_PUB), "local")
        fields = dm_fields(recipient=CAROL)
        self.assertEqual(self.router.route("MSG_DIRECT", CAROL, fields, TS, ALICE, ALICE_PUB), OTHER)


class RealRouterContractTests(RouterContract, SynchronousTestCase):
    def make(self):
        presence = Presence(HERE)
        presence.user_online_local(BOB, BOB_PUB, {}, FakeLink("bob", "user", BOB))
        presence.user_online_remote(CAROL, OTHER, ALICE_PUB, {})
        return Router(presence, make_signer(), FakePeerLinks([OTHER]), clock=Clock())


class FakeRouterContractTests(RouterContract, SynchronousTestCase):
    def make(self):
        return FakeRouter({BOB: "local", CAROL: OTHER})

    def test_records_routes(self) -> None:
        self.router.route("MSG_PUBLIC_CHANNEL", BOB, {"ciphertext": "x"}, TS, ALICE, ALICE_PUB)
        self.assertEqual(
            self.router.routed, [("MSG_PUBLIC_CHANNEL", BOB, {"ciphertext": "x"}, TS, ALICE, ALICE_PUB)]
        )


class RouterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.presence = Presence(HERE)
        self.signer = make_signer()
        self.peers = FakePeerLinks([OTHER, THIRD])
        self.clock = Clock()
        self.router = Router(self.presence, self.signer, self.peers, clock=self.clock)
        self.bob_link = FakeLink("bob", "user", BOB)
        self.presence.user_online_local(BOB, BOB_PUB, {}, self.bob_link)
        self.alice_link = FakeLink("alice", "user", ALICE)

    def server_deliver(self, payload: dict, origin: str = OTHER, ts: int = TS) -> wire.Envelope:
        return wire.Envelope("SERVER_DELIVER", origin, HERE, ts, payload, "sig-checked-by-the-mesh")

    def test_registers_with_the_mesh(self) -> None:
        self.assertEqual(set(self.peers.handlers), {"SERVER_DELIVER", "ERROR", "ACK"})

    def test_local_dm_is_a_signed_user_deliver_keeping_ts(self) -> None:
        fields = dm_fields()
        self.assertEqual(self.router.route("MSG_DIRECT", BOB, fields, TS, ALICE, ALICE_PUB), "local")
        [frame] = self.bob_link.frames()
        self.assertEqual(frame["type"], "USER_DELIVER")
        self.assertEqual((frame["from"], frame["to"], frame["ts"]), (HERE, BOB, TS))
        self.assertEqual(frame["payload"], {**fields, "sender": ALICE, "sender_pub": ALICE_PUB})
        self.assertTrue(verify_server_frame(frame, self.signer.public_key_text))

    def test_local_other_kinds_keep_their_type(self) -> None:
        self.router.route("FILE_END", BOB, {"file_id": "f1"}, TS, ALICE, ALICE_PUB)
        self.assertEqual(self.bob_link.frames()[0]["type"], "FILE_END")

    def test_remote_dm_is_a_server_deliver_to_the_hosting_server(self) -> None:
        self.presence.user_online_remote(CAROL, OTHER, ALICE_PUB, {})
        fields = dm_fields(recipient=CAROL)
        self.assertEqual(self.router.route("MSG_DIRECT", CAROL, fields, TS, ALICE, ALICE_PUB), OTHER)
        [(server_id, frame)] = self.peers.sent_frames()
        self.assertEqual(server_id, OTHER)
        self.assertEqual(
            (frame["type"], frame["from"], frame["to"], frame["ts"]), ("SERVER_DELIVER", HERE, OTHER, TS)
        )
        self.assertEqual(
            frame["payload"], {"user_id": CAROL, **fields, "sender": ALICE, "sender_pub": ALICE_PUB}
        )
        self.assertTrue(verify_server_frame(frame, self.signer.public_key_text))

    def test_remote_public_message_carries_its_type(self) -> None:
        self.presence.user_online_remote(CAROL, OTHER, ALICE_PUB, {})
        self.router.route(
            "MSG_PUBLIC_CHANNEL", CAROL, {"ciphertext": "c", "content_sig": "s"}, TS, ALICE, ALICE_PUB
        )
        self.assertEqual(self.peers.sent_frames()[0][1]["payload"]["type"], "MSG_PUBLIC_CHANNEL")

    def test_unknown_or_unreachable_recipient(self) -> None:
        with self.assertRaises(UserNotFound):
            self.router.route("MSG_DIRECT", CAROL, dm_fields(recipient=CAROL), TS, ALICE, ALICE_PUB)
        unreachable = "9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
        self.presence.user_online_remote(CAROL, unreachable, ALICE_PUB, {})
        with self.assertRaises(UserNotFound):
            self.router.route("MSG_DIRECT", CAROL, dm_fields(recipient=CAROL), TS, ALICE, ALICE_PUB)
        self.assertEqual(self.router.counters["not_found"], 1)
        self.assertEqual(self.router.counters["no_route"], 1)
        self.assertEqual(self.peers.sent, [])

    def test_server_deliver_to_local_user_after_content_check(self) -> None:
        fields = dm_fields()
        payload = {"user_id": BOB, **fields, "sender": ALICE, "sender_pub": ALICE_PUB}
        self.peers.deliver(self.server_deliver(payload))
        [frame] = self.bob_link.frames()
        self.assertEqual((frame["type"], frame["ts"], frame["from"]), ("USER_DELIVER", TS, HERE))
        self.assertEqual(frame["payload"]["sender"], ALICE)
        self.assertEqual(self.peers.sent, [])

    def assert_error_to_origin(self, code: str, origin: str = OTHER) -> dict:
        [(server_id, frame)] = self.peers.sent_frames()
        self.assertEqual(server_id, origin)
        self.assertEqual((frame["type"], frame["to"]), ("ERROR", origin))
        self.assertEqual(frame["payload"]["code"], code)
        self.assertEqual(frame["payload"]["msg_ref"], "SERVER_DELIVER")
        self.assertTrue(verify_server_frame(frame, self.signer.public_key_text))
        return frame["payload"]

    def test_bad_content_sig_is_refused_back_to_the_origin(self) -> None:
        fields = dm_fields(sender_key_name="bob")  # signed by the wrong key
        payload = {"user_id": BOB, **fields, "sender": ALICE, "sender_pub": ALICE_PUB}
        self.peers.deliver(self.server_deliver(payload))
        self.assertEqual(self.bob_link.sent, [])
        error = self.assert_error_to_origin("INVALID_SIG")
        self.assertEqual((error["user_id"], error["sender"]), (BOB, ALICE))

    def test_wrong_ts_breaks_the_content_sig(self) -> None:
        payload = {"user_id": BOB, **dm_fields(), "sender": ALICE, "sender_pub": ALICE_PUB}
        self.peers.deliver(self.server_deliver(payload, ts=TS + 1))  # a relay that re-stamped it
        self.assertEqual(self.bob_link.sent, [])
        self.assert_error_to_origin("INVALID_SIG")

    def test_deliver_without_sender_is_refused(self) -> None:
        payload = {"user_id": BOB, **dm_fields(), "sender_pub": ALICE_PUB}
        self.peers.deliver(self.server_deliver(payload))
        self.assertEqual(self.bob_link.sent, [])
        self.assert_error_to_origin("INVALID_SIG")

    def test_sender_key_must_match_gossip(self) -> None:
        self.presence.user_online_remote(ALICE, OTHER, BOB_PUB, {})  # gossip says Alice holds another key
        payload = {"user_id": BOB, **dm_fields(), "sender": ALICE, "sender_pub": ALICE_PUB}
        self.peers.deliver(self.server_deliver(payload))
        self.assertEqual(self.bob_link.sent, [])
        self.assert_error_to_origin("INVALID_SIG")

    def test_malformed_deliver_gets_a_precise_error(self) -> None:
        self.peers.deliver(self.server_deliver({"user_id": "nope", "sender": ALICE}))
        self.assert_error_to_origin("BAD_UUID")

    def test_non_string_type_is_an_error_not_a_crash(self) -> None:
        payload = {"user_id": BOB, **dm_fields(), "sender": ALICE, "sender_pub": ALICE_PUB, "type": ["x"]}
        self.peers.deliver(self.server_deliver(payload))
        self.assertEqual(self.bob_link.sent, [])
        self.assertEqual(self.assert_error_to_origin("BAD_FIELD")["msg_ref"], "SERVER_DELIVER")

    def test_deliver_for_user_elsewhere_is_forwarded_unchanged(self) -> None:
        self.presence.user_online_remote(CAROL, THIRD, ALICE_PUB, {})
        payload = {"user_id": CAROL, **dm_fields(recipient=CAROL), "sender": ALICE, "sender_pub": ALICE_PUB}
        envelope = self.server_deliver(payload)
        self.peers.deliver(envelope)
        [(server_id, frame)] = self.peers.sent_frames()
        self.assertEqual(server_id, THIRD)
        self.assertEqual(frame, envelope.to_dict())
        self.assertEqual(self.router.counters["forwarded"], 1)

    def test_deliver_for_unknown_user_answers_user_not_found(self) -> None:
        payload = {"user_id": CAROL, **dm_fields(recipient=CAROL), "sender": ALICE, "sender_pub": ALICE_PUB}
        self.peers.deliver(self.server_deliver(payload))
        self.assert_error_to_origin("USER_NOT_FOUND")

    def test_no_ping_pong_with_the_origin(self) -> None:
        # We think the user is on the very server that sent it to us: say so, don't send it back.
        self.presence.user_online_remote(CAROL, OTHER, ALICE_PUB, {})
        payload = {"user_id": CAROL, **dm_fields(recipient=CAROL), "sender": ALICE, "sender_pub": ALICE_PUB}
        self.peers.deliver(self.server_deliver(payload))
        self.assert_error_to_origin("USER_NOT_FOUND")

    def test_delivery_error_reaches_the_sending_user(self) -> None:
        self.presence.user_online_local(ALICE, ALICE_PUB, {}, self.alice_link)
        self.presence.user_online_remote(CAROL, OTHER, BOB_PUB, {})
        self.router.route("MSG_DIRECT", CAROL, dm_fields(recipient=CAROL), TS, ALICE, ALICE_PUB)
        sent = len(self.peers.sent)
        payload = {
            "code": "USER_NOT_FOUND",
            "detail": "no server hosts it",
            "msg_ref": "SERVER_DELIVER",
            "user_id": CAROL,
            "sender": ALICE,
        }
        self.peers.deliver(wire.Envelope("ERROR", OTHER, HERE, TS, payload, "s"))
        [frame] = self.alice_link.frames()
        self.assertEqual((frame["type"], frame["to"]), ("ERROR", ALICE))
        self.assertEqual(frame["payload"]["code"], "USER_NOT_FOUND")
        self.assertEqual(frame["payload"]["user_id"], CAROL)
        self.assertEqual(frame["payload"]["ts"], TS)  # the client can tell which DM failed
        self.assertEqual(frame["payload"]["msg_ref"], "MSG_DIRECT")
        self.assertEqual(len(self.peers.sent), sent)  # an ERROR is never answered
        # Reported once: a second error for the same DM, and the timeout, say nothing more.
        self.peers.deliver(wire.Envelope("ERROR", OTHER, HERE, TS + 1, payload, "s"))
        self.clock.advance(60)
        self.assertEqual(len(self.alice_link.frames()), 1)

    def test_an_error_for_no_dm_of_ours_is_not_passed_on(self) -> None:
        # A lying peer cannot make our users believe their DMs failed.
        self.presence.user_online_local(ALICE, ALICE_PUB, {}, self.alice_link)
        payload = {"code": "USER_NOT_FOUND", "detail": "x", "msg_ref": "SERVER_DELIVER", "sender": ALICE}
        self.peers.deliver(wire.Envelope("ERROR", OTHER, HERE, TS, {**payload, "user_id": CAROL}, "s"))
        self.assertEqual(self.alice_link.frames(), [])
        self.assertEqual(self.router.counters["late_errors"], 1)

    def test_other_errors_are_only_logged(self) -> None:
        self.presence.user_online_local(ALICE, ALICE_PUB, {}, self.alice_link)
        payload = {"code": "UNKNOWN_TYPE", "detail": "what?", "msg_ref": "HEARTBEAT", "sender": ALICE}
        self.peers.deliver(wire.Envelope("ERROR", OTHER, HERE, TS, payload, "s"))
        self.peers.deliver(wire.Envelope("ERROR", OTHER, HERE, TS, {"code": 5}, "s"))
        self.assertEqual(self.alice_link.sent, [])
        self.assertEqual(self.peers.sent, [])


class SignWhileCheckingTests(SynchronousTestCase):
    """A DM's signature is started before its content_sig is checked, so the check adds nothing
    to its latency; a frame that fails the check is dropped unsent, and whoever sent one loses
    the head start (one wasted signature at most)."""

    def setUp(self) -> None:
        self.presence = Presence(HERE)
        self.signer = make_signer()
        self.peers = FakePeerLinks([OTHER])
        self.clock = Clock()
        self.router = Router(self.presence, self.signer, self.peers, clock=self.clock)
        self.bob_link = FakeLink("bob", "user", BOB)
        self.presence.user_online_local(BOB, BOB_PUB, {}, self.bob_link)
        self.presence.user_online_remote(CAROL, OTHER, ALICE_PUB, {})
        self.events: list[str] = []
        frame = self.signer.frame

        def recording_frame(*args, **kwargs):
            self.events.append("sign " + args[0])
            return frame(*args, **kwargs)

        self.patch(self.signer, "frame", recording_frame)

    def check(self, result: bool):
        def verified() -> bool:
            self.events.append("check")
            return result

        return verified

    def test_local_and_remote_frames_are_signed_before_the_check_and_sent_after_it(self) -> None:
        self.assertEqual(
            self.router.route("MSG_DIRECT", BOB, dm_fields(), TS, ALICE, ALICE_PUB, self.check(True)), "local"
        )
        fields = dm_fields(recipient=CAROL)
        self.assertEqual(
            self.router.route("MSG_DIRECT", CAROL, fields, TS, ALICE, ALICE_PUB, self.check(True)), OTHER
        )
        self.assertEqual(self.events, ["sign USER_DELIVER", "check", "sign SERVER_DELIVER", "check"])
        self.assertEqual(len(self.bob_link.sent), 1)
        self.assertEqual([server for server, _ in self.peers.sent], [OTHER])

    def test_a_failed_check_sends_nothing_and_raises_unverified(self) -> None:
        for recipient in (BOB, CAROL):
            with self.assertRaises(Unverified):
                self.router.route(
                    "MSG_DIRECT",
                    recipient,
                    dm_fields(recipient=recipient),
                    TS,
                    ALICE,
                    ALICE_PUB,
                    self.check(False),
                )
        self.assertEqual(self.events, ["sign USER_DELIVER", "check", "sign SERVER_DELIVER", "check"])
        self.assertEqual((self.bob_link.sent, self.peers.sent), ([], []))
        self.assertEqual(self.router.counters["unverified"], 2)
        self.assertEqual(self.flushLoggedErrors(), [])  # the dropped frames fail nothing

    def test_an_unknown_recipient_with_a_bad_signature_is_reported_as_a_bad_signature(self) -> None:
        with self.assertRaises(Unverified):
            self.router.route(
                "MSG_DIRECT", THIRD, dm_fields(recipient=THIRD), TS, ALICE, ALICE_PUB, self.check(False)
            )
        with self.assertRaises(UserNotFound):
            self.router.route(
                "MSG_DIRECT", THIRD, dm_fields(recipient=THIRD), TS, ALICE, ALICE_PUB, self.check(True)
            )
        self.assertEqual(self.events, ["check", "check"])  # nothing to sign for nobody

    def deliver(self, fields: dict, origin: str = OTHER) -> None:
        payload = {"user_id": BOB, **fields, "sender": ALICE, "sender_pub": ALICE_PUB}
        self.peers.deliver(wire.Envelope("SERVER_DELIVER", origin, HERE, TS, payload, "checked-by-the-mesh"))

    def record_content_checks(self) -> None:
        check = router.verify_user_content

        def recording_check(*args):
            self.events.append("check")
            return check(*args)

        self.patch(router, "verify_user_content", recording_check)

    def test_server_deliver_signs_first_until_its_origin_sends_a_bad_one(self) -> None:
        self.record_content_checks()
        self.deliver(dm_fields())
        self.assertEqual(self.events, ["sign USER_DELIVER", "check"])
        self.deliver(dm_fields(sender_key_name="bob"))  # a content_sig by the wrong key
        self.assertEqual(self.events[2:], ["sign USER_DELIVER", "check", "sign ERROR"])
        [(server_id, error)] = self.peers.sent_frames()
        self.assertEqual(
            (server_id, error["type"], error["payload"]["code"]), (OTHER, "ERROR", "INVALID_SIG")
        )
        self.assertEqual(len(self.bob_link.sent), 1)  # only the good one
        # From now on this origin's deliveries are checked before anything is signed.
        self.deliver(dm_fields(sender_key_name="bob"))
        self.assertEqual(self.events[5:], ["check", "sign ERROR"])
        self.deliver(dm_fields())
        self.assertEqual(self.events[7:], ["check", "sign USER_DELIVER"])
        self.assertEqual(len(self.bob_link.sent), 2)
        self.assertEqual([e["payload"]["code"] for _, e in self.peers.sent_frames()], ["INVALID_SIG"] * 2)

    def test_a_prepared_delivery_is_signed_once_and_sent_after_the_content_check(self) -> None:
        self.record_content_checks()
        payload = {"user_id": BOB, **dm_fields(), "sender": ALICE, "sender_pub": ALICE_PUB}
        envelope = wire.Envelope("SERVER_DELIVER", OTHER, HERE, TS, payload, "checked-by-the-mesh")
        reads = []
        self.patch(router, "extract_fields", lambda *args: reads.append(args) or extract_fields(*args))
        prepared = self.router.prepare_delivery(envelope)  # before the mesh checked the frame
        self.assertEqual((self.events, self.bob_link.sent), (["sign USER_DELIVER"], []))
        self.router.deliver_from_server(envelope, FakeLink("other", "server", OTHER), prepared)
        self.assertEqual(self.events, ["sign USER_DELIVER", "check"])  # not signed twice
        self.assertEqual(len(reads), 1)  # nor its payload read twice
        self.assertIsNone(prepared.frame)  # taken: the mesh's discard() afterwards drops nothing
        [frame] = self.bob_link.frames()
        self.assertEqual((frame["type"], frame["payload"]["sender"]), ("USER_DELIVER", ALICE))

    def test_a_token_prepared_for_another_frame_is_not_used(self) -> None:
        def envelope(ts: int) -> wire.Envelope:
            payload = {"user_id": BOB, **dm_fields(ts=ts), "sender": ALICE, "sender_pub": ALICE_PUB}
            return wire.Envelope("SERVER_DELIVER", OTHER, HERE, ts, payload, "checked-by-the-mesh")

        other = self.router.prepare_delivery(envelope(TS + 1))
        self.router.deliver_from_server(envelope(TS), FakeLink("other", "server", OTHER), other)
        self.assertIsNone(other.frame)  # discarded, not sent
        [frame] = self.bob_link.frames()
        self.assertEqual((frame["type"], frame["ts"]), ("USER_DELIVER", TS))  # this frame's own copy

    def test_a_prepared_delivery_that_fails_the_content_check_is_dropped(self) -> None:
        payload = {
            "user_id": BOB,
            **dm_fields(sender_key_name="bob"),
            "sender": ALICE,
            "sender_pub": ALICE_PUB,
        }
        envelope = wire.Envelope("SERVER_DELIVER", OTHER, HERE, TS, payload, "checked-by-the-mesh")
        prepared = self.router.prepare_delivery(envelope)
        self.router.deliver_from_server(envelope, FakeLink("other", "server", OTHER), prepared)
        self.assertEqual(self.bob_link.sent, [])
        [(_, error)] = self.peers.sent_frames()
        self.assertEqual(error["payload"]["code"], "INVALID_SIG")
        self.assertIsNone(self.router.prepare_delivery(envelope))  # that origin is checked first now
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_nothing_is_prepared_for_what_would_not_be_delivered_here(self) -> None:
        def envelope(**changes) -> wire.Envelope:
            payload = {"user_id": BOB, **dm_fields(), "sender": ALICE, "sender_pub": ALICE_PUB, **changes}
            return wire.Envelope("SERVER_DELIVER", OTHER, HERE, TS, payload, "s")

        self.assertIsNone(self.router.prepare_delivery(envelope(user_id=CAROL)))  # not ours
        self.assertIsNone(self.router.prepare_delivery(envelope(user_id="nope")))  # malformed
        self.assertIsNone(self.router.prepare_delivery(envelope(sender=None)))
        self.assertEqual(self.events, [])

    def test_a_prepared_delivery_not_used_is_discarded_quietly(self) -> None:
        payload = {"user_id": BOB, **dm_fields(), "sender": ALICE, "sender_pub": ALICE_PUB}
        envelope = wire.Envelope("SERVER_DELIVER", OTHER, HERE, TS, payload, "s")
        prepared = self.router.prepare_delivery(envelope)
        prepared.discard()
        prepared.discard()
        self.assertIsNone(prepared.take(self.bob_link))
        self.assertEqual((self.bob_link.sent, self.flushLoggedErrors()), ([], []))
        # Made for a link that is gone by the time the frame is handled: not used.
        other = self.router.prepare_delivery(envelope)
        self.assertIsNone(other.take(FakeLink("new-bob", "user", BOB)))
