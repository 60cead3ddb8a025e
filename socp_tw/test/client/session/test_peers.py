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

    def test_the_hello_says_presence_lists(self) -> None:
        seen = []
        original = self.server.on_USER_HELLO if hasattr(self.server, "on_USER_HELLO") else None
        self.assertIsNotNone(original)

        def hello(link, envelope):
            seen.append(envelope.payload.get("presence"))
            return original(link, envelope)

        self.server.on_USER_HELLO = hello
        self.online_user(1)
        self.assertEqual(seen, ["lists"])
