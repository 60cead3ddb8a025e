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
