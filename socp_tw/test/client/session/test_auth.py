"""ClientSession: /register, /login, the server key, logging in again after a reconnect."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred

from socp_tw import crypto, wire
from socp_tw.auth.scrypt import TEST_SCRYPT
from socp_tw.auth.sealing import open_private_key, seal_private_key
from socp_tw.client.pins import PinStore
from socp_tw.client.session import (
    MAX_RELOGIN_FAILURES,
    RequestFailed,
)
from socp_tw.test.client.session.fakes import PASSWORD, URL, FakeUI, SessionTestBase
from socp_tw.test.keys import test_key


class RegisterTests(SessionTestBase):
    def test_register_prints_id_asks_twice_and_logs_in(self) -> None:
        session, ui = self.make_session(FakeUI([PASSWORD, PASSWORD]))
        link = self.server.connect(session)
        self.successResultOf(session.register())
        [announce] = ui.matching(r"^Your new user id: ")
        user_id = announce.split()[4]
        self.assertTrue(wire.is_uuid4(user_id))
        self.assertEqual(ui.prompts, ["Password: ", "Repeat password: "])
        self.assertIn(f"[REGISTER SUCCESS] {user_id}", ui.lines)
        self.assertIn(f"[LOGIN SUCCESS] {user_id}", ui.lines)
        self.assertEqual(link.types_sent(), ["USER_REGISTER", "USER_HELLO_CHALLENGE", "USER_HELLO"])
        register = link.sent[0]
        self.assertEqual(register["from"], user_id)
        self.assertEqual(register["payload"]["user_id"], user_id)
        # The register frame is signed by the new key (proof of possession) and carries no clear key.
        self.assertTrue(crypto.verify_payload(test_key(1), register["payload"], register["sig"]))
        self.assertNotIn("PRIVATE", json.dumps(register))
        opened = open_private_key(register["payload"]["privkey_store"], PASSWORD)
        self.assertEqual(crypto.encode_public_key(opened), crypto.encode_public_key(test_key(1)))
        self.assertTrue(session.logged_in)
        self.assertEqual(session.pins.server(URL), (self.server.server_id, self.server.pub))
        self.assertIn("first use", ui.text())

    def test_password_mismatch(self) -> None:
        session, ui = self.make_session(FakeUI([PASSWORD, PASSWORD + "x"]))
        link = self.server.connect(session)
        self.successResultOf(session.register())
        self.assertIn("[REGISTER FAILED] the passwords do not match", ui.lines)
        self.assertEqual(link.sent, [])
        self.assertFalse(session.logged_in)

    def test_short_password(self) -> None:
        session, ui = self.make_session(FakeUI(["short", "short"]))
        link = self.server.connect(session)
        self.successResultOf(session.register())
        self.assertEqual(ui.lines[-1], "[REGISTER FAILED] the password must have at least 8 characters")
        self.assertEqual(ui.prompts, ["Password: "])  # refused before the repeat prompt
        self.assertEqual(link.sent, [])

    def test_short_password_in_a_script_drops_the_repeat_line(self) -> None:
        """The script's repeat line is dropped, never run as a command (Console.passwords_not_asked)."""
        from twisted.internet.testing import StringTransport

        from socp_tw.client.console import Console

        console = Console(interactive=False)
        session, _ = self.make_session(console)
        console.commands = session
        self.server.connect(session)
        transport = StringTransport()
        console.makeConnection(transport)
        console.dataReceived(b"/register\nshort\nshort\n/help\n")
        out = transport.value().decode()
        self.assertIn("Password: \n[REGISTER FAILED] the password must have at least 8 characters\n", out)
        self.assertNotIn("Repeat password", out)
        self.assertNotIn("Unknown command", out)
        self.assertNotIn("Commands start with /", out)
        self.assertIn("Commands:", out)

    def test_server_refuses(self) -> None:
        session, ui = self.make_session(FakeUI([PASSWORD, PASSWORD]))
        self.server.connect(session)
        self.patch(wire, "new_uuid4", lambda: "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f")
        self.server.accounts["6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"] = {}
        self.successResultOf(session.register())
        self.assertIn("[REGISTER FAILED] NAME_IN_USE: taken", ui.lines)
        self.assertFalse(session.logged_in)

    def test_not_connected(self) -> None:
        session, ui = self.make_session(FakeUI([PASSWORD, PASSWORD]))
        d = session.register()
        self.assertNoResult(d)
        self.clock.advance(31)
        self.successResultOf(d)
        self.assertTrue(ui.matching(r"^\[REGISTER FAILED\] not connected"))
        self.assertEqual(ui.prompts, [])

    def test_waits_for_the_connection(self) -> None:
        """A piped /register that runs before the WebSocket is open waits for it."""
        session, ui = self.make_session(FakeUI([PASSWORD, PASSWORD]))
        d = session.register()
        self.clock.advance(5)
        self.assertNoResult(d)
        self.server.connect(session)
        self.successResultOf(d)
        self.assertTrue(ui.matching(r"^\[LOGIN SUCCESS\] "))

    def test_password_file(self) -> None:
        session, ui = self.make_session(FakeUI(), password=PASSWORD)
        self.server.connect(session)
        self.successResultOf(session.register())
        self.assertEqual(ui.prompts, [])
        self.assertTrue(ui.matching(r"^\[LOGIN SUCCESS\] "))

    def test_console_stays_free_while_waiting(self) -> None:
        """The command's Deferred stays pending while the password is awaited; nothing is sent."""
        session, ui = self.make_session(FakeUI())
        link = self.server.connect(session)
        d = session.register()
        self.assertNoResult(d)
        self.assertEqual(ui.prompts, ["Password: "])
        ui.pending.pop().callback(PASSWORD)
        self.assertEqual(ui.prompts, ["Password: ", "Repeat password: "])
        ui.pending.pop().callback(PASSWORD)
        self.successResultOf(d)
        self.assertEqual(link.types_sent()[0], "USER_REGISTER")


class LoginTests(SessionTestBase):
    def test_login_success(self) -> None:
        session, ui, link, user_id = self.online_user(1, via_password=True)
        self.assertEqual(ui.prompts, ["Password: "])
        self.assertEqual(link.types_sent(), ["USER_LOGIN_START", "USER_LOGIN_PROOF", "USER_HELLO"])
        hello = link.sent[-1]["payload"]
        self.assertEqual(hello["pubkey"], crypto.encode_public_key(test_key(1)))
        self.assertEqual(link.sent[-1]["to"], self.server.server_id)
        for frame in link.sent:
            self.assertNotIn(PASSWORD, json.dumps(frame))
        self.assertEqual(session.user_id, user_id)

    def test_wrong_password(self) -> None:
        user_id = wire.new_uuid4()
        self.server.add_account(user_id, test_key(1))
        session, ui = self.make_session(FakeUI(["not the password"]))
        self.server.connect(session)
        self.successResultOf(session.login(user_id))
        self.assertIn("[LOGIN FAILED] LOGIN_FAILED: bad password proof", ui.lines)
        self.assertFalse(session.logged_in)

    def test_unknown_user(self) -> None:
        user_id = wire.new_uuid4()
        session, ui = self.make_session(FakeUI([PASSWORD]))
        self.server.connect(session)
        self.successResultOf(session.login(user_id))
        self.assertIn(f"[LOGIN FAILED] USER_NOT_FOUND: no user {user_id}", ui.lines)

    def test_bad_m2_means_impostor(self) -> None:
        user_id = wire.new_uuid4()
        self.server.add_account(user_id, test_key(1))
        self.server.tamper_login_ok = lambda payload: payload.update(M2=wire.b64u_encode(b"\0" * 32))
        session, ui = self.make_session(FakeUI([PASSWORD]))
        link = self.server.connect(session)
        self.successResultOf(session.login(user_id))
        self.assertTrue(ui.matching(r"^\[LOGIN FAILED\] the server could not prove"))
        self.assertIsNotNone(link.closed)
        self.assertNotIn("USER_HELLO", link.types_sent())

    def test_corrupt_keystore(self) -> None:
        user_id = wire.new_uuid4()
        self.server.add_account(user_id, test_key(1))
        self.server.tamper_login_ok = lambda payload: payload.update(privkey_store="socp-keystore-v1.AAAA")
        session, ui = self.make_session(FakeUI([PASSWORD]))
        self.server.connect(session)
        self.successResultOf(session.login(user_id))
        self.assertTrue(ui.matching(r"^\[LOGIN FAILED\] the server sent a corrupt key store"))

    def test_keystore_sealed_with_other_password(self) -> None:
        """The SRP verifier matches but the blob doesn't open: said clearly, no crash."""
        user_id = wire.new_uuid4()
        self.server.add_account(user_id, test_key(1))
        other = seal_private_key(test_key(1), "another password", params=TEST_SCRYPT)
        self.server.tamper_login_ok = lambda payload: payload.update(privkey_store=other)
        session, ui = self.make_session(FakeUI([PASSWORD]))
        self.server.connect(session)
        self.successResultOf(session.login(user_id))
        self.assertIn("[LOGIN FAILED] your key store does not open with this password", ui.lines)

    def test_timeout(self) -> None:
        user_id = wire.new_uuid4()
        self.server.add_account(user_id, test_key(1))
        self.server.silent = True
        session, ui = self.make_session(FakeUI([PASSWORD]))
        self.server.connect(session)
        d = session.login(user_id)
        self.assertNoResult(d)
        self.clock.advance(31)
        self.successResultOf(d)
        self.assertIn("[LOGIN FAILED] no answer to USER_LOGIN_START from the server", ui.lines)

    def test_connection_lost_during_login(self) -> None:
        user_id = wire.new_uuid4()
        self.server.add_account(user_id, test_key(1))
        self.server.silent = True
        session, ui = self.make_session(FakeUI([PASSWORD]))
        link = self.server.connect(session)
        d = session.login(user_id)
        link.close(1006, "gone")
        self.successResultOf(d)
        self.assertTrue(ui.matching(r"^\[LOGIN FAILED\] the connection to .* was lost \(gone\)"))
        self.assertFalse(session.logged_in)

    def test_server_key_changed_is_refused(self) -> None:
        pins = self.mktemp()
        PinStore(pins).pin_server(URL, self.server.server_id, crypto.encode_public_key(test_key(5)))
        user_id = wire.new_uuid4()
        self.server.add_account(user_id, test_key(1))
        session, ui = self.make_session(FakeUI([PASSWORD]), pins=pins)
        link = self.server.connect(session)
        self.successResultOf(session.login(user_id))
        self.assertTrue(ui.matching(r"NOT SIGNED BY THE KEY PINNED FOR SERVER ws://127.0.0.1:9999"))
        self.assertTrue(ui.matching(r"^\[LOGIN FAILED\] "))
        self.assertFalse(session.logged_in)
        self.assertNotIn("USER_LOGIN_PROOF", link.types_sent())
        # The pin is untouched.
        self.assertEqual(PinStore(pins).server(URL)[1], crypto.encode_public_key(test_key(5)))

    def test_hello_ack_with_changed_key(self) -> None:
        """An ACK naming (and signed by) a key other than the pinned one: loud, refused, link closed."""
        pins = self.mktemp()
        PinStore(pins).pin_server(URL, self.server.server_id, crypto.encode_public_key(test_key(5)))
        session, ui = self.make_session(pins=pins)
        link = self.server.connect(session)
        ack = self.server.envelope(
            "ACK",
            "*",
            {"msg_ref": "USER_HELLO", "server_id": self.server.server_id, "server_pub": self.server.pub},
        )
        self.assertRaises(RequestFailed, session._accept_server_key, ack)
        self.assertTrue(ui.matching(r"THE KEY OF SERVER ws://127.0.0.1:9999 HAS CHANGED"))
        self.assertIsNotNone(link.closed)
        # An ACK whose signature doesn't match the key it names is refused too.
        forged = self.server.envelope(
            "ACK",
            "*",
            {"msg_ref": "USER_HELLO", "server_id": self.server.server_id, "server_pub": self.server.pub},
            key=test_key(4),
        )
        self.assertRaises(RequestFailed, session._accept_server_key, forged)

    def test_already_logged_in_as_another_user(self) -> None:
        """An error, not a failed login; the script's password lines are not to be run."""
        session, ui, link, user_id = self.online_user(1)
        sent = len(link.sent)
        self.successResultOf(session.login(wire.new_uuid4()))
        self.assertEqual(
            ui.lines[-1],
            f"[ERROR] already logged in as {user_id}; /quit first to log in as another user",
        )
        self.assertEqual(ui.unasked, [1])
        self.successResultOf(session.register())
        self.assertIn(f"[REGISTER FAILED] already logged in as {user_id}; /quit first", ui.lines)
        self.assertEqual(ui.unasked, [1, 2])
        self.assertEqual(ui.prompts, [])
        self.assertEqual(len(link.sent), sent)
        self.assertEqual(session.user_id, user_id)

    def test_login_as_the_user_logged_in(self) -> None:
        """/register then /login <same id> (the integration guide): success, no password asked."""
        session, ui = self.make_session(FakeUI([PASSWORD, PASSWORD]))
        link = self.server.connect(session)
        self.successResultOf(session.register())
        user_id = session.user_id
        sent = len(link.sent)
        before = len(ui.lines)
        self.successResultOf(session.login(user_id))
        self.assertEqual(ui.lines[before:], [f"[LOGIN SUCCESS] {user_id}"])
        self.assertEqual(ui.prompts, ["Password: ", "Repeat password: "])
        self.assertEqual(ui.unasked, [1])
        self.assertEqual(len(link.sent), sent)
        self.assertTrue(session.logged_in)

    def test_login_as_the_user_logged_in_with_a_password_file(self) -> None:
        """No password lines in the script then: the ui is not told to skip any."""
        session, ui = self.make_session(FakeUI(), password=PASSWORD)
        self.server.connect(session)
        self.successResultOf(session.register())
        self.successResultOf(session.login(session.user_id))
        self.assertEqual(ui.lines[-1], f"[LOGIN SUCCESS] {session.user_id}")
        self.assertEqual(ui.unasked, [])

    def test_login_as_the_user_logged_in_while_reconnecting(self) -> None:
        """It waits for the automatic login after the reconnect, then reports it."""
        session, ui, link, user_id = self.online_user(1)
        link.close(1006, "network down")
        d = session.login(user_id)
        self.assertNoResult(d)
        self.server.connect(session)
        self.successResultOf(d)
        self.assertEqual(
            sorted(ui.lines[-2:]),
            [f"[LOGIN SUCCESS] {user_id}", f"[RECONNECTED] logged in again as {user_id}"],
        )
        self.assertEqual(ui.prompts, [])

    def test_login_as_the_user_logged_in_while_the_link_stays_down(self) -> None:
        session, ui, link, user_id = self.online_user(1)
        link.close(1006, "network down")
        d = session.login(user_id)
        self.clock.advance(31)
        self.successResultOf(d)
        self.assertEqual(
            ui.lines[-1],
            "[LOGIN FAILED] not connected to ws://127.0.0.1:9999 right now (reconnecting); try again shortly",
        )
        self.assertEqual(ui.unasked, [1])
        self.assertEqual(ui.prompts, [])

    def test_login_as_the_user_after_the_automatic_login_gave_up(self) -> None:
        """Then /login <same id> is an ordinary login again: it asks for the password."""
        session, ui, link, user_id = self.online_user(1)
        link.close(1006, "network down")
        session._want_online = False  # what giving up after MAX_RELOGIN_FAILURES leaves
        ui.passwords.append(PASSWORD)
        link2 = self.server.connect(session)
        self.successResultOf(session.login(user_id))
        self.assertEqual(ui.prompts, ["Password: "])
        self.assertEqual(link2.types_sent(), ["USER_LOGIN_START", "USER_LOGIN_PROOF", "USER_HELLO"])
        self.assertEqual(ui.lines[-1], f"[LOGIN SUCCESS] {user_id}")
        self.assertEqual(ui.unasked, [])

    def test_unknown_type_falls_back_to_plain_hello(self) -> None:
        """A server without our extensions: plain USER_HELLO without nonce (TOFU, EXTENSIONS §6.3)."""
        session, _ui = self.make_session(FakeUI())
        session._want_online = False
        self.server.on_USER_HELLO_CHALLENGE = lambda link, env: self.server.error(
            link, "UNKNOWN_TYPE", "no such type", "USER_HELLO_CHALLENGE"
        )
        link = self.server.connect(session)
        user_id = wire.new_uuid4()
        self.assertTrue(
            self.successResultOf(
                Deferred.fromCoroutine(session._login_with_key(user_id, test_key(1), None, None))
            )
        )
        hello = link.sent[-1]
        self.assertEqual(hello["type"], "USER_HELLO")
        self.assertNotIn("nonce", hello["payload"])


class ReconnectTests(SessionTestBase):
    def test_idle_link_before_login_is_redialled_quietly(self) -> None:
        """A server closing an unidentified link is no news to a user who hasn't logged in."""
        session, ui = self.make_session()
        link = self.server.connect(session)
        link.close(1008, "no identifying frame within 30 s")
        before = list(ui.lines)
        session.reconnect_scheduled(1.0, "no identifying frame within 30 s", True)
        self.assertEqual(ui.lines, before)
        session.reconnect_scheduled(2.0, "Connection was refused", False)
        self.assertIn(
            "[DISCONNECTED] cannot connect to ws://127.0.0.1:9999 (Connection was refused); "
            "retrying in 2.0 s",
            ui.lines,
        )

    def test_relogin_after_reconnect_without_password(self) -> None:
        session, ui, link, user_id = self.online_user(1, via_password=True)
        link.close(1006, "network down")
        self.assertFalse(session.logged_in)
        session.reconnect_scheduled(1.5, "network down", True)
        self.assertIn(
            "[DISCONNECTED] lost the connection to ws://127.0.0.1:9999 (network down); reconnecting in 1.5 s",
            ui.lines,
        )
        link2 = self.server.connect(session)
        self.assertEqual(link2.types_sent(), ["USER_HELLO_CHALLENGE", "USER_HELLO"])
        self.assertIn(f"[RECONNECTED] logged in again as {user_id}", ui.lines)
        self.assertTrue(session.logged_in)
        self.assertEqual(ui.prompts, ["Password: "])  # only the first login asked

    def test_one_line_per_outage_and_one_when_back(self) -> None:
        session, ui, link, user_id = self.online_user(1)
        mark = len(ui.lines)
        link.close(1006, "network down")
        session.reconnect_scheduled(1.0, "network down", True)
        for delay in (2.0, 4.0, 8.0):
            session.reconnect_scheduled(delay, "Connection was refused", False)
        link2 = self.server.connect(session)
        self.assertEqual(
            ui.lines[mark:],
            [
                "[DISCONNECTED] lost the connection to ws://127.0.0.1:9999 (network down); "
                "reconnecting in 1.0 s",
                f"[RECONNECTED] logged in again as {user_id}",
            ],
        )
        # The next outage is reported again.
        link2.close(1006, "down again")
        session.reconnect_scheduled(1.0, "down again", True)
        self.assertTrue(ui.lines[-1].startswith("[DISCONNECTED] lost the connection"))

    def test_one_line_while_the_server_is_not_up_yet(self) -> None:
        session, ui = self.make_session()
        for delay in (1.0, 2.0, 4.0):
            session.reconnect_scheduled(delay, "Connection was refused", False)
        self.server.connect(session)
        self.assertEqual(
            ui.lines,
            [
                "[DISCONNECTED] cannot connect to ws://127.0.0.1:9999 (Connection was refused); "
                "retrying in 1.0 s",
                "[CONNECTED] ws://127.0.0.1:9999",
            ],
        )

    def test_link_changes_while_signing_the_proof(self) -> None:
        """The hello proof is being signed when the link drops and another opens: the stale
        nonce is never sent; the login is redone on the new link."""
        session, ui, link, user_id = self.online_user(1)
        held: list[tuple[Deferred, Any]] = []
        workers = session._workers

        class HoldingWorkers:
            def run(self, f, *args):
                if f is crypto.pss_sign:
                    d: Deferred = Deferred()
                    held.append((d, lambda: f(*args)))
                    return d
                return workers.run(f, *args)

        session._workers = HoldingWorkers()
        link.close(1006, "drop")
        link2 = self.server.connect(session)
        self.assertEqual(link2.types_sent(), ["USER_HELLO_CHALLENGE"])
        link2.close(1006, "drop again")
        link3 = self.server.connect(session)
        self.assertEqual(link3.sent, [])  # busy with the old attempt
        d, sign = held.pop()
        d.callback(sign())
        d, sign = held.pop()  # the new attempt, on link3
        d.callback(sign())
        self.assertEqual(link2.types_sent(), ["USER_HELLO_CHALLENGE"])
        self.assertEqual(link3.types_sent(), ["USER_HELLO_CHALLENGE", "USER_HELLO"])
        self.assertTrue(session.logged_in)
        self.assertEqual(ui.lines[-1], f"[RECONNECTED] logged in again as {user_id}")

    def test_list_waits_for_the_relogin(self) -> None:
        session, ui, link, user_id = self.online_user(1)
        link.close(1006, "network down")
        d = session.list_users()
        self.assertNoResult(d)
        self.server.connect(session)
        self.successResultOf(d)
        self.assertIn(f"* {user_id}  [{crypto.fingerprint(test_key(1))}] (you)", ui.lines)

    def test_tell_while_disconnected_times_out(self) -> None:
        session, ui, link, _ = self.online_user(1)
        link.close(1006, "network down")
        d = session.tell(wire.new_uuid4(), "hi")
        self.clock.advance(31)
        self.successResultOf(d)
        self.assertTrue(ui.matching(r"^\[ERROR\] not connected to ws://127.0.0.1:9999 right now"))

    def test_relogin_failure_retries_then_gives_up(self) -> None:
        session, ui, link, _user_id = self.online_user(1)
        link.close(1006, "network down")
        self.server.on_USER_HELLO = lambda link, env: self.server.error(
            link, "NAME_IN_USE", "busy", "USER_HELLO"
        )
        for _ in range(MAX_RELOGIN_FAILURES - 1):
            link = self.server.connect(session)
            self.assertIsNotNone(link.closed)  # closed to retry on a fresh connection
            self.assertTrue(ui.lines[-1].endswith("(NAME_IN_USE: busy); will retry"))
        link = self.server.connect(session)
        self.assertIsNone(link.closed)
        self.assertTrue(ui.lines[-1].endswith(f"giving up: use /login {session.user_id}"))
        self.assertFalse(session.logged_in)
        link = self.server.connect(session)
        self.assertEqual(link.sent, [])

    def test_cannot_connect_report(self) -> None:
        session, ui = self.make_session()
        session.reconnect_scheduled(2.25, "Connection was refused", False)
        self.assertIn(
            "[DISCONNECTED] cannot connect to ws://127.0.0.1:9999 (Connection was refused); "
            "retrying in 2.2 s",
            ui.lines,
        )
