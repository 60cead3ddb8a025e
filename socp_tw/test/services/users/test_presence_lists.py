"""Batched presence to local users who ask for it: USER_HELLO ``presence: "lists"`` (adverts.py)."""

from __future__ import annotations

from socp_tw import crypto, wire
from socp_tw.services.users.adverts import MAX_LIST_USERS, PRESENCE_WINDOW
from socp_tw.test.keys import test_key
from socp_tw.test.services.users.test_users import OTHER_SERVER, UserSideTestBase, alice_key, bob_key


class PresenceListTests(UserSideTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.lists = False
        self.pub = crypto.encode_public_key(test_key(1))

    def hello_payload(self, user_id, key, nonce=None, server_id=None) -> dict:
        payload = super().hello_payload(user_id, key, nonce, server_id)
        if self.lists:
            payload["presence"] = "lists"
        return payload

    def lists_user(self):
        self.lists = True
        try:
            link = self.online(wire.new_uuid4(), alice_key())
        finally:
            self.lists = False
        self.take(link)
        return link

    def plain_user(self):
        link = self.online(wire.new_uuid4(), bob_key())
        self.take(link)
        return link

    def remote(self, user_id: str, online: bool = True) -> None:
        if online:
            self.presence.user_online_remote(user_id, OTHER_SERVER, self.pub, {"x": 1})
        else:
            self.presence.user_offline_remote(user_id, OTHER_SERVER)

    def test_a_window_of_changes_is_one_frame(self) -> None:
        lists, plain = self.lists_user(), self.plain_user()
        self.take(lists)  # the plain user's own advert, batched
        self.clock.advance(PRESENCE_WINDOW)
        [first] = self.take(lists)
        self.assertEqual(first["type"], "USER_LIST")
        users = [wire.new_uuid4() for _ in range(3)]
        for user_id in users:
            self.remote(user_id)
        self.assertEqual([f["type"] for f in self.take(plain)], ["USER_ADVERTISE"] * 3)  # spec frames
        self.assertEqual(self.take(lists), [])  # not yet
        self.clock.advance(PRESENCE_WINDOW)
        [frame] = self.take(lists)
        self.assertEqual(frame["type"], "USER_LIST")
        self.assertEqual(frame["to"], "*")
        self.assertEqual([u["user_id"] for u in frame["payload"]["users"]], users)
        self.assertEqual(
            frame["payload"]["users"][0],
            {
                "user_id": users[0],
                "server_id": OTHER_SERVER,
                "pubkey": self.pub,
                "meta": {"x": 1, "pubkey": self.pub},
            },
        )
        self.assertEqual(frame["payload"]["removed"], [])
        self.assertEqual(self.users.counters["presence_lists"], 2)
        self.clock.advance(10)
        self.assertEqual(self.take(lists), [])  # nothing changed: nothing sent

    def test_last_change_in_the_window_wins(self) -> None:
        lists = self.lists_user()
        came_and_went, went_and_came = wire.new_uuid4(), wire.new_uuid4()
        self.remote(went_and_came)
        self.clock.advance(PRESENCE_WINDOW)
        self.take(lists)
        self.remote(came_and_went)
        self.remote(went_and_came, online=False)
        self.remote(came_and_went, online=False)
        self.remote(went_and_came)
        self.clock.advance(PRESENCE_WINDOW)
        [frame] = self.take(lists)
        self.assertEqual([u["user_id"] for u in frame["payload"]["users"]], [went_and_came])
        self.assertEqual(frame["payload"]["removed"], [{"user_id": came_and_went, "server_id": OTHER_SERVER}])

    def test_pages(self) -> None:
        lists = self.lists_user()
        count = 2 * MAX_LIST_USERS + 20
        for _ in range(count):
            self.remote(wire.new_uuid4())
        self.clock.advance(PRESENCE_WINDOW)
        pages = self.take(lists)
        self.assertEqual([len(p["payload"]["users"]) for p in pages], [MAX_LIST_USERS, MAX_LIST_USERS, 20])

    def test_no_timer_without_list_users(self) -> None:
        self.plain_user()
        self.remote(wire.new_uuid4())
        self.assertEqual(self.clock.getDelayedCalls(), [])
        lists = self.lists_user()
        self.close_link(lists)
        self.remote(wire.new_uuid4())  # the closed link is still counted: one last window
        self.clock.advance(PRESENCE_WINDOW)
        self.remote(wire.new_uuid4())
        self.assertEqual(self.users._list_links, set())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_cancels_the_window(self) -> None:
        self.lists_user()
        self.remote(wire.new_uuid4())
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.users.startService()
        self.users.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_list_users_get_no_per_event_frames(self) -> None:
        lists, plain = self.lists_user(), self.plain_user()
        self.clock.advance(PRESENCE_WINDOW)
        self.take(lists)
        self.close_link(plain)
        self.assertEqual(self.take(lists), [])
        self.clock.advance(PRESENCE_WINDOW)
        [frame] = self.take(lists)
        self.assertEqual(len(frame["payload"]["removed"]), 1)
