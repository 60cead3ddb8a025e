"""``USER_SET_META {name}``: checked, stored on the home server, advertised (EXTENSIONS §13)."""

from __future__ import annotations

from socp_tw import wire
from socp_tw.test.services.users.test_users import UserSideTestBase, alice_key, bob_key


class SetNameTests(UserSideTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.alice, self.bob = wire.new_uuid4(), wire.new_uuid4()
        self.alice_link = self.online(self.alice, alice_key())
        self.bob_link = self.online(self.bob, bob_key())
        self.take(self.alice_link)
        self.take(self.bob_link)

    def set_name(self, name: object, **extra: object) -> None:
        self.send(
            self.alice_link, "USER_SET_META", {"name": name, **extra}, from_=self.alice, to=self.server_id
        )

    def stored_meta(self, user_id: str) -> dict:
        return self.successResultOf(self.store.get_user(user_id))["meta"]

    def test_name_is_acked_stored_and_advertised(self) -> None:
        self.set_name(" Zoe\u0308 ")
        ack = self.one(self.alice_link, "ACK")
        self.assertEqual(ack["payload"], {"msg_ref": "USER_SET_META", "name": "Zoë"})
        self.assertEqual(self.stored_meta(self.alice)["name"], "Zoë")
        advert = self.one(self.bob_link, "USER_ADVERTISE")
        self.assertEqual(advert["payload"]["user_id"], self.alice)
        self.assertEqual(advert["payload"]["meta"]["name"], "Zoë")
        self.assertEqual(advert["payload"]["meta"]["client"], "test/1")  # the rest of meta is kept
        self.assertEqual(self.presence.lookup(self.alice).meta["name"], "Zoë")

    def test_bad_names_are_refused_and_change_nothing(self) -> None:
        for name in ("two words", "x" * 33, "esc\x1b", "rtl\u202e", 42, ["a"], {"a": 1}):
            self.set_name(name)
            self.assertEqual(self.error(self.alice_link, "BAD_FIELD")["msg_ref"], "USER_SET_META")
        self.set_name("ok", colour="red")
        self.error(self.alice_link, "BAD_FIELD")
        self.send(self.alice_link, "USER_SET_META", {}, from_=self.alice)
        self.error(self.alice_link, "BAD_FIELD")
        self.assertNotIn("name", self.stored_meta(self.alice))
        self.assertEqual(self.take(self.bob_link), [])

    def test_null_or_empty_withdraws_the_name(self) -> None:
        self.set_name("alice")
        self.take(self.alice_link)
        self.take(self.bob_link)
        for empty in (None, ""):
            self.set_name(empty)
            self.assertEqual(self.one(self.alice_link, "ACK")["payload"]["name"], None)
            self.assertNotIn("name", self.one(self.bob_link, "USER_ADVERTISE")["payload"]["meta"])
            self.assertNotIn("name", self.stored_meta(self.alice))

    def test_the_name_survives_a_new_login(self) -> None:
        self.set_name("alice")
        self.take(self.alice_link)
        self.close_link(self.alice_link)
        self.take(self.bob_link)
        link = self.open_link()
        frames = self.hello(link, self.alice, alice_key())
        self.assertEqual(frames[0]["type"], "ACK")
        self.assertEqual(frames[0]["payload"]["name"], "alice")  # the client learns its own name
        self.assertEqual(self.one(self.bob_link, "USER_ADVERTISE")["payload"]["meta"]["name"], "alice")

    def test_no_name_no_name_in_the_hello_ack(self) -> None:
        self.close_link(self.bob_link)
        frames = self.hello(self.open_link(), self.bob, bob_key())
        self.assertNotIn("name", frames[0]["payload"])

    def test_needs_an_authenticated_link(self) -> None:
        link = self.open_link()
        self.send(link, "USER_SET_META", {"name": "mallory"}, from_=self.alice)
        self.assertIn(self.one(link, "ERROR")["payload"]["code"], ("BAD_FRAME", "UNKNOWN_TYPE"))
        self.assertNotIn("name", self.stored_meta(self.alice))

    def test_only_for_yourself(self) -> None:
        self.send(self.alice_link, "USER_SET_META", {"name": "bob"}, from_=self.bob)
        self.error(self.alice_link, "BAD_FROM")
        self.assertNotIn("name", self.stored_meta(self.bob))
