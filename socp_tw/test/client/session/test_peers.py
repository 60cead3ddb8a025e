"""ClientSession: /list, presence and user keys."""

from __future__ import annotations

from socp_tw import crypto
from socp_tw.test.client.session.fakes import SessionTestBase
from socp_tw.test.keys import test_key


class ListTests(SessionTestBase):
    def test_list_sorted_with_fingerprints(self) -> None:
        alice, alice_ui, _, alice_id = self.online_user(1)
        _, _, _, bob_id = self.online_user(2)
        _, _, _, carol_id = self.online_user(3)
        alice_ui.lines.clear()
        self.successResultOf(alice.list_users())
        self.assertEqual(alice_ui.lines[0], "Online users (3):")
        body = alice_ui.lines[1:]
        ids = [line[2:38] for line in body]
        self.assertEqual(ids, sorted([alice_id, bob_id, carol_id]))
        self.assertIn(f"* {alice_id}  [{crypto.fingerprint(test_key(1))}] (you)", body)
        self.assertIn(f"  {bob_id}  [{crypto.fingerprint(test_key(2))}]", body)
        self.assertIn(f"  {carol_id}  [{crypto.fingerprint(test_key(3))}]", body)

    def test_list_requires_login(self) -> None:
        session, ui = self.make_session()
        self.server.connect(session)
        self.successResultOf(session.list_users())
        self.assertIn("[ERROR] not logged in: use /register or /login <user_uuid>", ui.lines)

    def test_list_response_with_bad_signature(self) -> None:
        alice, ui, _link, _ = self.online_user(1)
        self.server.on_LIST_REQUEST = lambda link, env: self.server.push(
            link, "LIST_RESPONSE", {"online_users": []}, key=test_key(4)
        )
        self.successResultOf(alice.list_users())
        self.assertTrue(ui.matching(r"^\[ERROR\] /list failed: the server's LIST_RESPONSE is not signed"))

    def test_list_marks_changed_keys(self) -> None:
        alice, ui, _, _ = self.online_user(1)
        _, _, _, bob_id = self.online_user(2)
        alice.pins.pin_user(bob_id, crypto.encode_public_key(test_key(5)))
        ui.lines.clear()
        self.successResultOf(alice.list_users())
        self.assertTrue(ui.matching(rf"^  {bob_id}  \[.*\] KEY CHANGED \(pinned \["))


class BatchedPresenceTests(SessionTestBase):
    """Our server's USER_LIST {users, removed} (docs/MESH.md "Presence to local users"): the
    client asks for it in its hello and applies it like the adverts it stands for."""

    def test_hello_asks_for_lists_and_a_list_is_applied(self) -> None:
        alice, ui, link, _ = self.online_user(1)
        bob, carol = "2c1a4f6e-0c1f-4c39-9d0a-6f0f1e9b8a77", "7c9e6679-7425-40de-944b-e07fc1f90ae7"
        bob_key = crypto.encode_public_key(test_key(2))
        alice.names.talked.add(bob)  # presence lines are printed for users one has talked to
        advert = {
            "user_id": bob,
            "server_id": "s1",
            "pubkey": bob_key,
            "meta": {"pubkey": bob_key, "name": "bob"},
        }
        self.server.push(
            link, "USER_LIST", {"users": [advert, {"user_id": carol, "server_id": "s2", "meta": {}}]}
        )
        self.assertEqual((alice.presence[bob], alice.presence[carol]), ("s1", "s2"))
        self.assertEqual(alice._known_key(bob), bob_key)
        self.assertTrue(ui.matching(r"^\* .*bob.* is online$"))
        self.server.push(link, "USER_LIST", {"users": [], "removed": [{"user_id": bob, "server_id": "s1"}]})
        self.assertNotIn(bob, alice.presence)
        self.assertTrue(ui.matching(r"^\* .*bob.* is offline$"))

    def test_the_answer_to_a_follow_prints_no_presence_line(self) -> None:
        """Right after a /tell, the server's answer to the follow says the partner is online:
        that is where they are, not news; their leaving afterwards is."""
        alice, ui, link, _ = self.online_user(1)
        bob = "2c1a4f6e-0c1f-4c39-9d0a-6f0f1e9b8a77"
        bob_key = crypto.encode_public_key(test_key(2))
        alice.names.talked.add(bob)
        advert = {"user_id": bob, "server_id": "s1", "pubkey": bob_key, "meta": {"pubkey": bob_key}}
        self.server.push(link, "USER_LIST", {"users": [advert], "removed": [], "follow": True})
        self.assertEqual(alice.presence[bob], "s1")
        self.assertFalse(ui.matching(r"is online"))
        self.server.push(link, "USER_REMOVE", {"user_id": bob, "server_id": "s1"})
        self.assertTrue(ui.matching(r"^\* .*2c1a4f6e.* is offline$"))

    def test_the_hello_says_presence_follow(self) -> None:
        seen = []
        original = self.server.on_USER_HELLO if hasattr(self.server, "on_USER_HELLO") else None
        self.assertIsNotNone(original)

        def hello(link, envelope):
            seen.append(envelope.payload.get("presence"))
            return original(link, envelope)

        self.server.on_USER_HELLO = hello
        self.online_user(1)
        self.assertEqual(seen, ["follow"])


class FollowModeTests(SessionTestBase):
    """In follow mode (our server) the client follows the users it talks to or names, asks the
    server who is online when a reference names nobody it knows, and subscribes to the channel
    when it needs the membership; against a server without the mode it says nothing about it."""

    def follows_sent(self, by: str) -> list[list[str]]:
        return [
            e.payload["user_ids"]
            for e in self.server.received
            if e.type == "PRESENCE_FOLLOW" and e.from_ == by
        ]

    def test_dm_partners_and_named_users_are_followed_once(self) -> None:
        alice, ui, _, alice_id = self.online_user(1)
        _, _, _, bob_id = self.online_user(2)
        _, _, _, carol_id = self.online_user(3)
        self.assertEqual(self.follows_sent(alice_id), [])  # nobody to follow yet
        self.successResultOf(alice.tell(bob_id, "hi"))
        self.successResultOf(alice.tell(bob_id, "again"))
        alice.set_petname(carol_id, "carol")
        self.assertEqual(self.follows_sent(alice_id), [[bob_id], [carol_id]])
        self.assertFalse(ui.matching(r"UNKNOWN_TYPE"))  # this server lacks the mode: not shown
        self.assertEqual(alice.counters["refused.PRESENCE_FOLLOW"], 2)

    def test_a_login_follows_the_session_s_partners_again(self) -> None:
        alice, _, link, alice_id = self.online_user(1)
        _, _, _, bob_id = self.online_user(2)
        self.successResultOf(alice.tell(bob_id, "hi"))
        self.server.received.clear()
        alice.connection_lost("test")
        self.server.disconnect(link)
        self.server.connect(alice)
        self.clock.advance(0)
        self.assertTrue(alice.logged_in)
        self.assertEqual(self.follows_sent(alice_id), [[bob_id]])

    def test_the_directory_comes_from_the_server(self) -> None:
        alice, _ui, _, _ = self.online_user(1)
        _, _, _, bob_id = self.online_user(2)
        alice.names.known.discard(bob_id)  # as if no advert had come (follow mode)
        alice.presence.clear()
        self.assertNotIn(bob_id, alice.names.ids())
        refreshed = self.successResultOf(alice.refresh_directory())
        self.assertIn(bob_id, refreshed)
        self.assertIn(bob_id, alice.names.ids())

    def test_the_list_response_names_are_learnt(self) -> None:
        alice, _, _, _ = self.online_user(1)
        _, _, _, bob_id = self.online_user(2)
        original = self.server.on_LIST_REQUEST

        def with_names(link, env):
            users = sorted(self.server.online)
            self.server.push(
                link, "LIST_RESPONSE", {"online_users": users, "users": users, "names": {bob_id: "bob"}}
            )

        self.server.on_LIST_REQUEST = with_names
        self.successResultOf(alice.list_users())
        self.assertEqual(alice.names.label(bob_id), "bob")
        self.server.on_LIST_REQUEST = original

    def test_junk_in_the_list_response_names_is_ignored(self) -> None:
        alice, ui, _, _ = self.online_user(1)
        _, _, _, bob_id = self.online_user(2)
        stranger = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
        for names in ("bob", [bob_id], {bob_id: 7}, {"not-a-uuid": "x", stranger: "eve"}):
            users = sorted(self.server.online)

            def with_junk(link, env, names=names, users=users):
                self.server.push(link, "LIST_RESPONSE", {"online_users": users, "names": names})

            self.server.on_LIST_REQUEST = with_junk
            ui.lines.clear()
            self.successResultOf(alice.list_users())
            self.assertTrue(ui.matching(r"^Online users \(2\):"), names)
        self.assertIsNone(alice.names.claims.get(bob_id))  # 7 is no name
        self.assertNotIn(stranger, alice.names.claims)  # not online: its name is not learnt

    def test_members_subscribes_when_the_membership_did_not_come(self) -> None:
        alice, ui, link, alice_id = self.online_user(1)
        self.assertIsNone(alice.public_version)
        d = alice.members()
        subscribes = [e for e in self.server.received if e.type == "PUBLIC_CHANNEL_SUBSCRIBE"]
        self.assertEqual(len(subscribes), 1)
        self.server.push(
            link,
            "PUBLIC_CHANNEL_UPDATED",
            {
                "version": 3,
                "wraps": [],
                "members": [{"user_id": alice_id, "pubkey": alice._pub}],
                "reset": True,
            },
        )
        self.successResultOf(d)
        self.assertTrue(ui.matching(r"^Public channel, version 3 \(1 members\):"))
        self.successResultOf(alice.members())  # known now: not asked again
        self.assertEqual(len([e for e in self.server.received if e.type == "PUBLIC_CHANNEL_SUBSCRIBE"]), 1)
