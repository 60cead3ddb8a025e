"""Presence for clients that follow: USER_HELLO ``presence: "follow"`` and PRESENCE_FOLLOW (follows.py)."""

from __future__ import annotations

from twisted.internet.defer import fail

from socp_tw import crypto, wire
from socp_tw.services.users.follows import MAX_FOLLOWS
from socp_tw.test.keys import test_key
from socp_tw.test.services.users.test_users import OTHER_SERVER, UserSideTestBase, alice_key, bob_key


class PresenceFollowTests(UserSideTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.mode: str | None = None
        self.pub = crypto.encode_public_key(test_key(1))

    def hello_payload(self, user_id, key, nonce=None, server_id=None) -> dict:
        payload = super().hello_payload(user_id, key, nonce, server_id)
        if self.mode is not None:
            payload["presence"] = self.mode
        return payload

    def follower(self) -> tuple[str, object]:
        """A user in follow mode, online; its frames so far taken."""
        user_id = wire.new_uuid4()
        self.mode = "follow"
        try:
            link = self.online(user_id, alice_key())
        finally:
            self.mode = None
        self.take(link)
        return user_id, link

    def remote(self, user_id: str, online: bool = True) -> None:
        if online:
            self.presence.user_online_remote(user_id, OTHER_SERVER, self.pub, {"x": 1})
        else:
            self.presence.user_offline_remote(user_id, OTHER_SERVER)

    def follow(self, link, me: str, ids) -> dict:
        self.send(link, "PRESENCE_FOLLOW", {"user_ids": ids}, from_=me)
        return self.one(link, "USER_LIST")

    def hello_frames(self, mode: str | None) -> tuple[object, list[str]]:
        """A new user's link and the types of the frames its hello got."""
        user_id, link = wire.new_uuid4(), self.open_link()
        self.mode = mode
        try:
            frames = self.hello(link, user_id, alice_key(), proof=False)
        finally:
            self.mode = None
        return link, [f["type"] for f in frames]

    def test_no_replay_and_no_presence_of_the_unfollowed(self) -> None:
        for _ in range(3):
            self.remote(wire.new_uuid4())
        link, got = self.hello_frames("follow")
        self.assertEqual(got, ["ACK"])  # no replay of the three online users
        plain, got = self.hello_frames(None)
        self.assertEqual(got, ["ACK"] + ["USER_ADVERTISE"] * 4)  # the three and the follower
        self.remote(wire.new_uuid4())
        self.assertEqual(self.take(link), [])
        self.assertEqual([f["type"] for f in self.take(plain)], ["USER_ADVERTISE"])

    def test_follow_answers_the_state_then_relays_changes(self) -> None:
        online, offline = wire.new_uuid4(), wire.new_uuid4()
        self.remote(online)
        me, link = self.follower()
        answer = self.follow(link, me, [online, offline.upper()])
        self.assertEqual(answer["to"], me)
        self.assertTrue(answer["payload"]["follow"])
        self.assertEqual(
            answer["payload"]["users"],
            [
                {
                    "user_id": online,
                    "server_id": OTHER_SERVER,
                    "pubkey": self.pub,
                    "meta": {"x": 1, "pubkey": self.pub},
                }
            ],
        )
        self.assertEqual(answer["payload"]["removed"], [{"user_id": offline}])
        self.remote(offline)  # followed (given in capitals), now online
        [advert] = self.take(link)
        self.assertEqual((advert["type"], advert["payload"]["user_id"]), ("USER_ADVERTISE", offline))
        self.remote(online, online=False)
        [remove] = self.take(link)
        self.assertEqual((remove["type"], remove["payload"]["user_id"]), ("USER_REMOVE", online))
        self.remote(wire.new_uuid4())  # not followed
        self.assertEqual(self.take(link), [])

    def test_followers_share_the_event_signature(self) -> None:
        target = wire.new_uuid4()
        me, link = self.follower()
        plain = self.online(wire.new_uuid4(), bob_key())
        self.take(plain)
        self.follow(link, me, [target])
        self.remote(target)
        [to_follower], [to_plain] = self.take(link), self.take(plain)
        self.assertEqual(to_follower, to_plain)  # the same signed bytes: one signature

    def test_follows_add_up_and_are_bounded(self) -> None:
        me, link = self.follower()
        first = [wire.new_uuid4() for _ in range(MAX_FOLLOWS - 1)]
        self.follow(link, me, first)
        self.follow(link, me, [*first[:10], me])  # repeats and oneself cost nothing
        self.send(link, "PRESENCE_FOLLOW", {"user_ids": [wire.new_uuid4(), wire.new_uuid4()]}, from_=me)
        self.assertIn("at most", self.error(link, "BAD_FIELD")["detail"])
        self.follow(link, me, [wire.new_uuid4()])  # exactly the bound
        self.remote(first[-1])
        self.assertEqual([f["type"] for f in self.take(link)], ["USER_ADVERTISE"])  # still followed

    def test_bad_frames(self) -> None:
        me, link = self.follower()
        for payload, code in [
            ({}, "MISSING_FIELD"),
            ({"user_ids": "x"}, "BAD_FIELD"),
            ({"user_ids": [1]}, "BAD_UUID"),
            ({"user_ids": ["not-a-uuid"]}, "BAD_UUID"),
            ({"user_ids": [wire.new_uuid4()] * (MAX_FOLLOWS + 1)}, "BAD_FIELD"),
        ]:
            self.send(link, "PRESENCE_FOLLOW", payload, from_=me)
            self.error(link, code)
        self.follow(link, me, [])  # still served

    def test_closed_link_is_forgotten(self) -> None:
        target = wire.new_uuid4()
        me, link = self.follower()
        self.follow(link, me, [target])
        self.close_link(link)
        self.assertEqual(self.users._followers, {})
        self.assertEqual(self.users._quiet_links, set())
        self.remote(target)  # nobody to tell: no error

    def test_default_and_lists_links_get_the_answer_but_no_double_frames(self) -> None:
        target = wire.new_uuid4()
        plain_id = wire.new_uuid4()
        plain = self.online(plain_id, bob_key())
        self.take(plain)
        self.follow(plain, plain_id, [target])
        self.remote(target)
        self.assertEqual([f["type"] for f in self.take(plain)], ["USER_ADVERTISE"])  # once
        self.assertEqual(self.users._followers, {})

    def test_hello_sets_public_pushes(self) -> None:
        _me, link = self.follower()
        self.assertIs(link.public_pushes, False)
        plain = self.online(wire.new_uuid4(), bob_key())
        self.assertIs(plain.public_pushes, True)

    def test_an_advert_nobody_listens_to_is_not_signed(self) -> None:
        """Only followers online: a presence event costs no signature; a spec client's hello
        signs what it needs (adverts.py), once."""
        calls: list[tuple] = []
        inner = self.workers.run

        def run(f, *args, **kwargs):
            calls.append(args)
            return inner(f, *args, **kwargs)

        def signed_adverts() -> list[str]:
            return [args[2]["user_id"] for args in calls if args and args[0] == "USER_ADVERTISE"]

        self.patch(self.workers, "run", run)
        first, _ = self.follower()
        dave = wire.new_uuid4()
        self.remote(dave)
        self.assertEqual(signed_adverts(), [])
        _, got = self.hello_frames(None)  # a spec client: every online user's advert, signed now
        self.assertEqual(got, ["ACK", "USER_ADVERTISE", "USER_ADVERTISE"])
        self.assertEqual(sorted(signed_adverts()), sorted([first, dave]))
        calls.clear()
        _, got = self.hello_frames(None)
        self.assertEqual(got.count("USER_ADVERTISE"), 3)
        # The first spec client's advert (nobody needed it when it came) and the new one's own
        # (for the first): the others' are replayed as signed before.
        self.assertEqual(len(signed_adverts()), 2)

    def test_a_replay_signature_that_fails_is_logged_and_skipped(self) -> None:
        first, _ = self.follower()  # nobody hears its advert: not signed
        inner = self.workers.run

        def failing(f, *args, **kwargs):
            if args and args[0] == "USER_ADVERTISE":
                return fail(RuntimeError("signing broke"))  # as the pool reports it
            return inner(f, *args, **kwargs)

        self.patch(self.workers, "run", failing)
        _, got = self.hello_frames(None)
        self.assertEqual(got, ["ACK"])  # the copy was skipped, the link goes on
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertNotIn(first, self.users._adverts)
