"""The IUserFrames contract, run against the real UserSide and against FakeUserFrames."""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from socp_tw import crypto, wire
from socp_tw.interfaces import ILink, IUserFrames
from socp_tw.services.presence import Presence
from socp_tw.test.keys import vector_key
from socp_tw.test.services.users.test_users import UserSideTestBase
from socp_tw.testing import FakeLink, FakeUserFrames


class _Refused(wire.FrameError):
    code = "FILE_UNKNOWN"


class UserFramesContract:
    """What every IUserFrames does.  ``setUp`` provides ``self.frames``; the hooks below drive it."""

    frames: IUserFrames

    def authenticated(self, user_id: str, key) -> ILink:
        """A link on which ``user_id`` (with ``key``) is authenticated."""
        raise NotImplementedError

    def deliver(self, link: ILink, user_id: str, type_: str, payload: dict) -> None:
        """``user_id`` sends a frame on its authenticated ``link``."""
        raise NotImplementedError

    def errors(self, link: ILink) -> list[dict]:
        """The ERROR payloads sent on ``link`` so far."""
        raise NotImplementedError

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IUserFrames, self.frames))

    def test_authenticated_key(self) -> None:
        user_id = wire.new_uuid4()
        self.assertIsNone(self.frames.authenticated_key(user_id))
        self.authenticated(user_id, vector_key("alice"))
        self.assertEqual(
            self.frames.authenticated_key(user_id), crypto.encode_public_key(vector_key("alice"))
        )

    def test_registered_handler_gets_the_frames_of_its_type(self) -> None:
        seen: list[tuple[ILink, str, wire.Envelope]] = []
        self.frames.register_user_frame("FILE_END", lambda *args: seen.append(args))
        user_id = wire.new_uuid4()
        link = self.authenticated(user_id, vector_key("alice"))
        self.deliver(link, user_id, "FILE_END", {"file_id": "f1"})
        [(got_link, got_user, envelope)] = seen
        self.assertEqual((got_link.link_id, got_user), (link.link_id, user_id))
        self.assertEqual((envelope.type, envelope.payload), ("FILE_END", {"file_id": "f1"}))

    def test_frame_errors_are_answered(self) -> None:
        def refuse(link, user_id, envelope):
            raise _Refused("no such file")

        later: Deferred = Deferred()
        self.frames.register_user_frame("FILE_END", refuse)
        self.frames.register_user_frame("FILE_CHUNK", lambda *args: later)
        user_id = wire.new_uuid4()
        link = self.authenticated(user_id, vector_key("alice"))
        self.deliver(link, user_id, "FILE_END", {"file_id": "f1"})
        self.deliver(link, user_id, "FILE_CHUNK", {"file_id": "f1"})
        later.errback(_Refused("not any more"))
        self.assertEqual(
            self.errors(link),
            [
                {"code": "FILE_UNKNOWN", "detail": "no such file", "msg_ref": "FILE_END"},
                {"code": "FILE_UNKNOWN", "detail": "not any more", "msg_ref": "FILE_CHUNK"},
            ],
        )

    def test_other_failures_are_internal_errors(self) -> None:
        self.frames.register_user_frame("FILE_END", lambda *args: fail(RuntimeError("bug")))
        self.frames.register_user_frame("FILE_CHUNK", lambda *args: 1 / 0)
        user_id = wire.new_uuid4()
        link = self.authenticated(user_id, vector_key("alice"))
        self.deliver(link, user_id, "FILE_END", {})
        self.deliver(link, user_id, "FILE_CHUNK", {})
        self.flushLoggedErrors(RuntimeError, ZeroDivisionError)
        self.assertEqual(
            [(e["code"], e["msg_ref"]) for e in self.errors(link)],
            [("INTERNAL", "FILE_END"), ("INTERNAL", "FILE_CHUNK")],
        )

    def test_send_error_carries_ref_and_extra_fields(self) -> None:
        user_id = wire.new_uuid4()
        link = self.authenticated(user_id, vector_key("alice"))
        self.frames.send_error(link, "TIMEOUT", "stalled", ref="FILE_CHUNK", file_id="f1")
        self.frames.send_error(link, "USER_NOT_FOUND", "gone")
        self.assertEqual(
            self.errors(link),
            [
                {"code": "TIMEOUT", "detail": "stalled", "msg_ref": "FILE_CHUNK", "file_id": "f1"},
                {"code": "USER_NOT_FOUND", "detail": "gone"},
            ],
        )


class UserSideFramesTests(UserFramesContract, UserSideTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.frames = self.users

    def authenticated(self, user_id: str, key) -> ILink:
        link = self.online(user_id, key, register=False)
        self.take(link)
        return link

    def deliver(self, link: ILink, user_id: str, type_: str, payload: dict) -> None:
        self.send(link, type_, payload, from_=user_id)

    def errors(self, link: ILink) -> list[dict]:
        return [f["payload"] for f in self.take(link) if f["type"] == "ERROR"]


class FakeUserFramesTests(UserFramesContract, SynchronousTestCase):
    def setUp(self) -> None:
        self.presence = Presence(wire.new_uuid4())
        self.frames = FakeUserFrames(self.presence)

    def authenticated(self, user_id: str, key) -> ILink:
        link = FakeLink(f"user-{user_id[:8]}", role="user", identity=user_id)
        self.presence.user_online_local(user_id, crypto.encode_public_key(key), {}, link)
        return link

    def deliver(self, link: ILink, user_id: str, type_: str, payload: dict) -> None:
        self.frames.deliver(link, wire.Envelope(type_, user_id, "*", 1_700_000_000_000, payload, ""))

    def errors(self, link: ILink) -> list[dict]:
        return [payload for where, payload in self.frames.errors if where is link]
