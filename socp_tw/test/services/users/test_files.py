"""File transfer, unit level: the user side's read pausing and FILE_END content checks.
The server's FileRelay is tested in socp_tw/test/services/files/, the client's sender and
receiver in socp_tw/test/client/files/.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import content, crypto, wire
from socp_tw.content import file_end_preimage
from socp_tw.services import users as users_module
from socp_tw.test.file_frames import FakeTCP, end_payload
from socp_tw.test.keys import vector_key
from socp_tw.test.services.users.test_users import UserSideTestBase

# ================================================================== content.py


class FileEndContentTests(SynchronousTestCase):
    ALICE, BOB, TS = wire.new_uuid4(), wire.new_uuid4(), 1_700_000_000_000

    def test_optional_fields_relayed_only_when_present(self) -> None:
        self.assertEqual(content.extract_fields("FILE_END", {"file_id": "f"}), {"file_id": "f"})
        fields = content.extract_fields("FILE_END", {"file_id": "f", "chunks": 3, "content_sig": "s", "x": 1})
        self.assertEqual(fields, {"file_id": "f", "chunks": 3, "content_sig": "s"})
        with self.assertRaises(wire.BadFieldType):
            content.extract_fields("FILE_END", {"file_id": "f", "chunks": -1})

    def test_file_end_signature(self) -> None:
        key = vector_key("alice")
        pub = crypto.encode_public_key(key)
        fields = end_payload(key, "f1", 2, self.ALICE, self.BOB, self.TS)
        content.verify_user_content("FILE_END", fields, self.ALICE, self.BOB, self.TS, pub)
        content.verify_user_content(
            "FILE_END", {"file_id": "f1"}, self.ALICE, self.BOB, self.TS, pub
        )  # tolerant
        for bad in (
            dict(fields, chunks=3),
            dict(fields, file_id="f2"),
            {"file_id": "f1", "content_sig": fields["content_sig"]},
        ):
            with self.assertRaises(content.ContentError):
                content.verify_user_content("FILE_END", bad, self.ALICE, self.BOB, self.TS, pub)
        with self.assertRaises(content.ContentError):  # another sender, or another ts
            content.verify_user_content("FILE_END", fields, self.BOB, self.ALICE, self.TS, pub)
        self.assertEqual(
            file_end_preimage("f1", 2, self.ALICE, self.BOB, self.TS),
            f"SOCP-FILE-END|f1|2|{self.ALICE}|{self.BOB}|{self.TS}".encode(),
        )


class UserLinkPauseTests(UserSideTestBase):
    """users.py stops reading a link whose backlog is long, and reads again once it shrinks."""

    def test_pause_and_resume(self) -> None:
        user_id = wire.new_uuid4()
        link = self.online(user_id, vector_key("alice"), register=False)
        link.transport = tcp = FakeTCP()
        gate: list[Deferred] = []
        handled: list[int] = []

        def slow(link, user, envelope) -> Deferred:
            handled.append(envelope.payload["n"])
            gate.append(Deferred())
            return gate[-1]

        self.users.register_user_frame("SLOW_TEST", slow)
        for n in range(users_module.BACKLOG_PAUSE + 1):
            self.send(link, "SLOW_TEST", {"n": n}, from_=user_id)
        self.assertFalse(tcp.reading)
        self.assertEqual(handled, [0])
        while len(handled) < users_module.BACKLOG_PAUSE // 2 + 1:
            self.assertFalse(tcp.reading)
            gate[-1].callback(None)
        self.assertTrue(tcp.reading)
        self.assertEqual(tcp.pauses, 1)
        while len(handled) <= users_module.BACKLOG_PAUSE:
            gate[-1].callback(None)
        self.assertEqual(handled, list(range(users_module.BACKLOG_PAUSE + 1)))
        self.assertEqual(self.take(link), [])
