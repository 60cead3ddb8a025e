"""ClientSession: /nick, /name, names in the lines, presence lines for people you talk to."""

from __future__ import annotations

from socp_tw import crypto, wire
from socp_tw.test.client.session.fakes import SessionTestBase
from socp_tw.test.keys import test_key


class NamesTestBase(SessionTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.alice, self.alice_ui, self.alice_link, self.alice_id = self.online_user(1)
        self.bob, self.bob_ui, self.bob_link, self.bob_id = self.online_user(2)
        self.server.names = {}
        self.server.on_USER_SET_META = self._on_set_meta

    def _on_set_meta(self, link, env: wire.Envelope) -> None:
        name = env.payload["name"]
        self.server.names[env.from_] = name
        self.server.push(link, "ACK", {"msg_ref": "USER_SET_META", "name": name})
        self.advertise(env.from_, name)

    def advertise(self, user_id: str, name: object = None, to=None) -> None:
        key = crypto.encode_public_key(self.server.online[user_id].session._key)
        meta = {"pubkey": key} if name is None else {"pubkey": key, "name": name}
        payload = {"user_id": user_id, "server_id": self.server.server_id, "pubkey": key, "meta": meta}
        for link in to or [other for u, other in self.server.online.items() if u != user_id]:
            self.server.push(link, "USER_ADVERTISE", payload)

    def remove(self, user_id: str, link) -> None:
        self.server.push(link, "USER_REMOVE", {"user_id": user_id, "server_id": self.server.server_id})


class NickTests(NamesTestBase):
    def test_nick_is_sent_acked_and_seen_by_others(self) -> None:
        self.successResultOf(self.bob.nick("bob"))
        [frame] = [e for e in self.server.received if e.type == "USER_SET_META"]
        self.assertEqual(frame.payload, {"name": "bob"})
        self.assertEqual(frame.from_, self.bob_id)
        self.assertEqual(self.bob_ui.lines[-1], f"Others now see you as {self.bob_id} (bob).")
        self.assertEqual(self.alice.names.label(self.bob_id), "bob")
        self.bob_ui.lines.clear()
        self.successResultOf(self.bob.list_users())
        self.assertIn(f"* {self.bob_id} (bob)  [{crypto.fingerprint(test_key(2))}] (you)", self.bob_ui.lines)
        self.alice_ui.lines.clear()
        self.successResultOf(self.alice.list_users())
        self.assertIn(f"  {self.bob_id} (bob)  [{crypto.fingerprint(test_key(2))}]", self.alice_ui.lines)

    def test_server_without_the_extension(self) -> None:
        self.server.on_USER_SET_META = lambda link, env: self.server.error(
            link, "UNKNOWN_TYPE", "no", "USER_SET_META"
        )
        self.successResultOf(self.bob.nick("bob"))
        self.assertEqual(self.bob_ui.lines[-1], "[ERROR] this server does not keep names (no USER_SET_META)")
        self.assertIsNone(self.bob.my_name)

    def test_refused_name(self) -> None:
        self.server.on_USER_SET_META = lambda link, env: self.server.error(
            link, "BAD_FIELD", "a name has at most 32 characters", "USER_SET_META"
        )
        self.successResultOf(self.bob.nick("bob"))
        self.assertEqual(self.bob_ui.lines[-1], "[ERROR] BAD_FIELD: a name has at most 32 characters")

    def test_not_logged_in(self) -> None:
        session, ui = self.make_session()
        self.server.connect(session)
        self.successResultOf(session.nick("x"))
        self.assertEqual(ui.lines[-1], "[ERROR] not logged in: use /register or /login <user_uuid>")


class MessageLineTests(NamesTestBase):
    def test_no_name_keeps_the_guides_lines(self) -> None:
        self.deliver(self.alice_link, self.bob_id, self.alice_id, test_key(2), b"hello")
        self.assertEqual(self.alice_ui.lines[-1], f"DM from {self.bob_id}: hello")

    def test_claimed_name_goes_after_the_id(self) -> None:
        self.advertise(self.bob_id, "bob", to=[self.alice_link])
        self.deliver(self.alice_link, self.bob_id, self.alice_id, test_key(2), b"hello")
        self.assertEqual(self.alice_ui.lines[-1], f"DM from {self.bob_id} (bob): hello")
        self.successResultOf(self.alice.tell(self.bob_id, "hi"))
        self.assertEqual(self.alice_ui.lines[-1], f"DM to {self.bob_id} (bob): hi")

    def test_a_hostile_name_is_not_shown(self) -> None:
        self.advertise(self.bob_id, "\x1b[2Jevil", to=[self.alice_link])
        self.deliver(self.alice_link, self.bob_id, self.alice_id, test_key(2), b"hello")
        self.assertEqual(self.alice_ui.lines[-1], f"DM from {self.bob_id}: hello")

    def test_petname_wins_and_persists(self) -> None:
        self.advertise(self.bob_id, "alice", to=[self.alice_link])
        self.alice.set_petname(self.bob_id, "bobby")
        self.assertEqual(
            self.alice_ui.lines[-1], f"{self.bob_id} is bobby to you (they call themselves alice)."
        )
        self.deliver(self.alice_link, self.bob_id, self.alice_id, test_key(2), b"hello")
        self.assertEqual(self.alice_ui.lines[-1], f"DM from {self.bob_id} (bobby): hello")
        self.assertEqual(self.alice.pins.__class__(self.alice.pins.path).petname(self.bob_id), "bobby")
        self.alice.set_petname(self.bob_id, None)
        self.assertEqual(self.alice_ui.lines[-1], f"Forgot your name for {self.bob_id}.")
        self.assertEqual(self.alice.names.label(self.bob_id), "alice")

    def test_the_message_time_reaches_the_ui(self) -> None:
        stamps = []
        self.alice_ui.show_message = lambda text, ts: stamps.append((text, ts))
        self.deliver(self.alice_link, self.bob_id, self.alice_id, test_key(2), b"hello")
        self.assertEqual(stamps, [(f"DM from {self.bob_id}: hello", int(self.clock.seconds() * 1000))])


class PresenceLineTests(NamesTestBase):
    def test_only_for_users_you_talked_to(self) -> None:
        self.remove(self.bob_id, self.alice_link)
        self.advertise(self.bob_id, to=[self.alice_link])
        self.assertFalse(self.alice_ui.matching(r"^\* "))
        self.successResultOf(self.alice.tell(self.bob_id, "hi"))
        self.remove(self.bob_id, self.alice_link)
        self.assertEqual(self.alice_ui.lines[-1], f"* {self.bob_id} is offline")
        self.advertise(self.bob_id, "bob", to=[self.alice_link])
        self.assertEqual(self.alice_ui.lines[-1], f"* bob ({self.bob_id[:8]}) is online")
        self.advertise(self.bob_id, "bob", to=[self.alice_link])  # a repeat says nothing
        self.remove(self.bob_id, self.alice_link)
        self.assertEqual(self.alice_ui.lines[-1], f"* bob ({self.bob_id[:8]}) is offline")
        self.assertEqual(len(self.alice_ui.matching(r"^\* ")), 3)

    def test_without_a_name_the_full_id(self) -> None:
        self.deliver(self.alice_link, self.bob_id, self.alice_id, test_key(2), b"hello")
        self.remove(self.bob_id, self.alice_link)
        self.assertEqual(self.alice_ui.lines[-1], f"* {self.bob_id} is offline")

    def test_named_users_too(self) -> None:
        self.alice.set_petname(self.bob_id, "bobby")
        self.remove(self.bob_id, self.alice_link)
        self.assertEqual(self.alice_ui.lines[-1], f"* bobby ({self.bob_id[:8]}) is offline")

    def test_a_new_name_is_announced(self) -> None:
        self.successResultOf(self.alice.tell(self.bob_id, "hi"))
        self.advertise(self.bob_id, "bob", to=[self.alice_link])
        self.assertEqual(self.alice_ui.lines[-1], f"* {self.bob_id} now calls themselves bob")
        self.advertise(self.bob_id, "robert", to=[self.alice_link])
        self.assertEqual(self.alice_ui.lines[-1], f"* bob ({self.bob_id[:8]}) now calls themselves robert")
        self.advertise(self.bob_id, to=[self.alice_link])  # withdrawn: nothing to say
        self.assertEqual(len(self.alice_ui.matching(r"^\* ")), 2)

    def test_a_reconnect_replays_adverts_silently(self) -> None:
        self.successResultOf(self.alice.tell(self.bob_id, "hi"))
        self.advertise(self.bob_id, to=[self.alice_link])
        count = len(self.alice_ui.matching(r"^\* "))
        self.alice.connection_lost("network down")
        self.advertise(self.bob_id, to=[self.alice_link])
        self.assertEqual(len(self.alice_ui.matching(r"^\* ")), count)
