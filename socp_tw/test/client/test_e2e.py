"""End to end: real servers on 127.0.0.1 (one, or two linked with --peer) and real clients.

Each client is a real :class:`ClientApp` (session, Autobahn connection with reconnects,
thread-pool workers); its user interface is a recorder, or the real :class:`Console`
over a StringTransport.  Keys come from test_key(n) and scrypt uses TEST_SCRYPT.
"""

from __future__ import annotations

import re

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from socp_tw import crypto, wire
from socp_tw.auth.scrypt import TEST_SCRYPT
from socp_tw.client.app import ClientApp
from socp_tw.client.console import Console
from socp_tw.test.keys import test_key
from socp_tw.test.servers import MeshServer, RunningServer
from socp_tw.test.ui import PASSWORD, RecordingUI, WatchedTransport
from socp_tw.test.waiting import poll_until, until_listed, wait_until


class ClientE2EBase(TestCase):
    timeout = 120

    def start_server(self, key_index: int = 0, extra_args: list[str] | None = None, data_dir=None):
        server = RunningServer(self, key_index, extra_args=extra_args, data_dir=data_dir)
        self.addCleanup(server.stop)
        return server

    @inlineCallbacks
    def start_client(self, server_url: str, key_index: int, ui=None, pins: str | None = None):
        ui = ui if ui is not None else RecordingUI()
        app = ClientApp(
            server_url,
            pins or self.mktemp(),
            ui,
            reactor,
            scrypt_params=TEST_SCRYPT,
            key_factory=lambda: test_key(key_index),
            retry_policy=lambda attempt: 0.1,
        )
        app.startService()
        self.addCleanup(app.quit)
        yield app.connection.when_open()
        return app, ui

    @inlineCallbacks
    def registered_client(self, server_url: str, key_index: int):
        """A client that ran /register (and so is logged in); returns (app, ui, user_id)."""
        app, ui = yield self.start_client(server_url, key_index)
        ui.passwords.extend([PASSWORD, PASSWORD])
        yield app.session.register()
        success = ui.find(r"^\[LOGIN SUCCESS\] ")
        self.assertIsNotNone(success, ui.lines)
        user_id = success.split()[-1]
        self.assertIn(f"[REGISTER SUCCESS] {user_id}", ui.lines)
        return app, ui, user_id


class SingleServerTests(ClientE2EBase):
    @inlineCallbacks
    def test_register_login_wrong_password_through_the_console(self):
        """The real console: /register, then /login with a wrong and a right password on a new client."""
        server = self.start_server(0)
        transport = WatchedTransport()
        console = Console(interactive=False)
        app, _ = yield self.start_client(server.url, 1, ui=console)
        console.commands = app.session
        console.makeConnection(transport)
        console.dataReceived(b"/register\n")
        yield wait_until(lambda: transport.value().endswith(b"Password: "), what="the first prompt")
        console.dataReceived(f"{PASSWORD}\n".encode())
        yield wait_until(lambda: transport.value().endswith(b"Repeat password: "), what="the second prompt")
        console.dataReceived(f"{PASSWORD}\n".encode())
        output = yield wait_until(
            lambda: re.search(rb"\[LOGIN SUCCESS\] (\S+)\n", transport.value()),
            what="the login after /register",
        )
        user_id = output.group(1).decode()
        self.assertIn(f"Your new user id: {user_id}".encode(), transport.value())
        self.assertIn(f"[REGISTER SUCCESS] {user_id}\n".encode(), transport.value())
        self.assertNotIn(PASSWORD.encode(), transport.value())
        console.dataReceived(b"/list\n")
        yield wait_until(lambda: f"* {user_id}  [".encode() in transport.value(), what="/list output")
        # The integration guide's "/register then /login": no prompt, and the script's password
        # line after it is not run as a command.
        transport.clear()
        console.dataReceived(f"/login {user_id}\n{PASSWORD}\n/list\n".encode())
        yield wait_until(lambda: f"* {user_id}  [".encode() in transport.value(), what="the second /list")
        self.assertTrue(transport.value().startswith(f"[LOGIN SUCCESS] {user_id}\nOnline users (".encode()))
        self.assertNotIn(b"Password: ", transport.value())
        self.assertNotIn(b"Commands start with /", transport.value())
        yield app.quit()

        # A second device: only the user id and the password.
        transport2 = WatchedTransport()
        console2 = Console(interactive=False)
        app2, _ = yield self.start_client(server.url, 2, ui=console2)
        console2.commands = app2.session
        console2.makeConnection(transport2)
        console2.dataReceived(f"/login {user_id}\nwrong password\n".encode())
        yield wait_until(lambda: b"[LOGIN FAILED] " in transport2.value(), what="the failed login")
        self.assertIn(b"[LOGIN FAILED] LOGIN_FAILED: ", transport2.value())
        console2.dataReceived(f"/login {user_id}\n{PASSWORD}\n".encode())
        yield wait_until(
            lambda: f"[LOGIN SUCCESS] {user_id}\n".encode() in transport2.value(), what="the login"
        )
        self.assertEqual(app2.session.user_id, user_id)
        # The key came from the server's key store, opened locally: it is the registered key
        # (the one the server saw it prove in its hello).
        users = server.service.getServiceNamed("users")
        self.assertEqual(users.authenticated_key(user_id), crypto.encode_public_key(test_key(1)))
        unknown = wire.new_uuid4()
        app3, ui3 = yield self.start_client(server.url, 3)
        ui3.passwords.append(PASSWORD)
        yield app3.session.login(unknown)
        self.assertIsNotNone(ui3.find(rf"^\[LOGIN FAILED\] USER_NOT_FOUND: .*{unknown}"), ui3.lines)

    @inlineCallbacks
    def test_forged_content_sig_rejected(self):
        """Refused by the server from a user; rejected by the client from a (compromised) server."""
        server = self.start_server(0)
        alice, alice_ui, alice_id = yield self.registered_client(server.url, 1)
        bob, bob_ui, bob_id = yield self.registered_client(server.url, 2)

        # 1. The client's own frame, with a content_sig by another key: the server refuses it.
        ts = wire.now_ms()
        ciphertext = crypto.oaep_encrypt(test_key(2).public_key(), b"forged text")
        payload = {
            "ciphertext": ciphertext,
            "sender_pub": crypto.encode_public_key(test_key(1)),
            "content_sig": crypto.sign_content(
                test_key(3), crypto.dm_preimage(ciphertext, alice_id, bob_id, ts)
            ),
        }
        frame = wire.encode_frame(
            "MSG_DIRECT", alice_id, bob_id, ts, payload, crypto.sign_payload(test_key(1), payload)
        )
        alice.connection.protocol.send(frame)
        yield wait_until(lambda: alice_ui.find(r"^\[ERROR\] INVALID_SIG: "), what="the server's INVALID_SIG")

        # 2. A USER_DELIVER signed by the real server key but with a forged content_sig:
        # the real client protocol gets the bytes and rejects the DM.
        deliver = {
            "ciphertext": ciphertext,
            "sender": alice_id,
            "sender_pub": crypto.encode_public_key(test_key(1)),
            "content_sig": payload["content_sig"],
        }
        forged = wire.encode_frame(
            "USER_DELIVER", server.server_id, bob_id, ts, deliver, crypto.sign_payload(test_key(0), deliver)
        )
        bob.connection.protocol.onMessage(forged, False)
        yield wait_until(
            lambda: bob_ui.find(
                rf"^\[WARNING\] rejected DM claiming to be from {alice_id}: invalid signature"
            ),
            what="the rejection",
        )
        # 3. The same with a valid content_sig but not signed by the server.
        deliver["content_sig"] = crypto.sign_content(
            test_key(1), crypto.dm_preimage(ciphertext, alice_id, bob_id, ts)
        )
        bob.connection.protocol.onMessage(
            wire.encode_frame(
                "USER_DELIVER",
                server.server_id,
                bob_id,
                ts,
                deliver,
                crypto.sign_payload(test_key(3), deliver),
            ),
            False,
        )
        yield wait_until(
            lambda: bob_ui.find(rf"rejected DM claiming to be from {alice_id}: invalid server signature"),
            what="the second rejection",
        )
        # A genuine DM still goes through, and the forged text was never shown.
        yield alice.session.tell(bob_id, "the real one")
        yield wait_until(lambda: bob_ui.find(rf"^DM from {alice_id}: the real one$"), what="the genuine DM")
        self.assertIsNone(bob_ui.find("forged text"))

    @inlineCallbacks
    def test_dm_for_an_offline_user_is_held_and_delivered_at_next_login(self):
        """Bob quits; Alice's DM is queued; Bob logs in again and gets it, marked with when it was
        sent; Alice hears it was handed over.  Over a bound, the sender is told which DM failed."""
        server = self.start_server(0)
        alice, alice_ui, _ = yield self.registered_client(server.url, 1)
        bob, bob_ui, bob_id = yield self.registered_client(server.url, 2)
        yield alice.session.tell(bob_id, "are you there?")  # alice now knows bob's key
        yield wait_until(lambda: bob_ui.find(r"^DM from .*: are you there\?$"), what="the first DM")
        yield bob.quit()
        yield poll_until(lambda: bob_id not in alice.session.presence, "bob's departure")
        yield alice.session.tell(bob_id, "hello? " * 10)
        queued = rf"^DM to {bob_id} queued: {bob_id} is offline; it will be delivered when they come online$"
        yield wait_until(lambda: alice_ui.find(queued), what="the queued line")
        # Over a bound: the server says so at once, naming the DM (preview and time sent).
        server.service.getServiceNamed("holding").max_per_recipient = 1
        yield alice.session.tell(bob_id, "one too many")
        pattern = (
            rf'^\[FAILED\] DM to {bob_id} \("one too many", sent \d\d:\d\d:\d\d\) '
            r"was not delivered: QUEUE_FULL: "
        )
        yield wait_until(lambda: alice_ui.find(pattern), what="the [FAILED] line")
        # Bob comes back on a new client: the held DM arrives once, marked with its sending time.
        again, again_ui = yield self.start_client(server.url, 2)
        again_ui.passwords.append(PASSWORD)
        yield again.session.login(bob_id)
        held = r"^\[sent \d{4}-\d\d-\d\d \d\d:\d\d\] DM from .*: (hello\? ){9}hello\?"
        yield wait_until(lambda: again_ui.find(held), what="the held DM")
        yield wait_until(
            lambda: alice_ui.find(rf"^\[DELIVERED\] queued DM to {bob_id} \(\"hello"), what="delivered"
        )
        self.assertEqual(len([line for line in again_ui.lines if "DM from" in line]), 1)

    @inlineCallbacks
    def test_reconnect_after_server_restart(self):
        """The server goes away: reported; it comes back on the same port: logged in again by itself."""
        server = self.start_server(0)
        alice, ui, alice_id = yield self.registered_client(server.url, 1)
        port = server.port
        yield server.stop()
        yield wait_until(
            lambda: ui.find(r"^\[DISCONNECTED\] lost the connection to "), what="the disconnect report"
        )
        mark = len(ui.lines)
        self.start_server(0, extra_args=["--bind", f"ws://127.0.0.1:{port}"], data_dir=server.data_dir)
        yield wait_until(
            lambda: ui.find(rf"^\[RECONNECTED\] logged in again as {alice_id}$", mark),
            what="the automatic login",
        )
        self.assertTrue(alice.session.logged_in)
        self.assertEqual(ui.prompts, ["Password: ", "Repeat password: "])  # no password asked again
        yield alice.session.list_users()
        self.assertIsNotNone(ui.find(rf"^\* {alice_id}  \[.*\] \(you\)$", mark))


class TwoServerTests(ClientE2EBase):
    @inlineCallbacks
    def test_list_and_dms_across_two_servers(self):
        server_a = MeshServer(self, 0)
        server_b = MeshServer(self, 4, extra_args=["--peer", server_a.url])
        alice, alice_ui, alice_id = yield self.registered_client(server_a.url, 1)
        bob, bob_ui, bob_id = yield self.registered_client(server_b.url, 2)
        # Presence crosses the mesh: each server lists the other's user.
        yield until_listed(alice.session, bob_id)
        yield until_listed(bob.session, alice_id)

        mark = len(alice_ui.lines)
        yield alice.session.list_users()
        listing = alice_ui.lines[mark:]
        self.assertEqual(listing[0], "Online users (2):")
        expected = {
            alice_id: f"* {alice_id}  [{crypto.fingerprint(test_key(1))}] (you)",
            bob_id: f"  {bob_id}  [{crypto.fingerprint(test_key(2))}]",
        }
        self.assertEqual(listing[1:3], [expected[u] for u in sorted(expected)])

        self.assertNotIn(bob_id, alice.session.presence)  # follow mode: no advert of bob yet
        yield alice.session.tell(bob_id, "hello bob, from server A")
        yield wait_until(
            lambda: bob_ui.find(rf"^DM from {alice_id}: hello bob, from server A$"), what="DM A→B"
        )
        # Each now follows the other: the answer to the follow says where they are.
        yield wait_until(
            lambda: alice.session.presence.get(bob_id) == server_b.server_id, what="bob followed"
        )
        yield wait_until(
            lambda: bob.session.presence.get(alice_id) == server_a.server_id, what="alice followed"
        )
        yield bob.session.tell(alice_id, "hi alice ✓, from server B")
        yield wait_until(
            lambda: alice_ui.find(rf"^DM from {bob_id}: hi alice ✓, from server B$"), what="DM B→A"
        )

        # Longer than one RSA block: several MSG_DIRECTs, shown as one message.
        long_text = " ".join(f"word{i}-é" for i in range(400))
        self.assertGreater(len(long_text.encode()), 3 * crypto.OAEP_MAX_PLAINTEXT)
        yield alice.session.tell(bob_id, long_text)
        yield wait_until(lambda: bob_ui.find(rf"^DM from {alice_id}: word0-é"), what="the long DM")
        shown = [line for line in bob_ui.lines if line.startswith(f"DM from {alice_id}: ")]
        self.assertEqual(shown[-1], f"DM from {alice_id}: {long_text}")
        self.assertEqual(len(shown), 2)
        self.assertIsNone(bob_ui.find(r"SOCP-PART"))
        # Keys were pinned on first contact, on both sides.
        self.assertEqual(alice.pins.user_key(bob_id), crypto.encode_public_key(test_key(2)))
        self.assertEqual(bob.pins.user_key(alice_id), crypto.encode_public_key(test_key(1)))
        # Followed: bob's leaving reaches alice across the mesh as a presence line.
        yield bob.quit()
        yield wait_until(lambda: alice_ui.find(rf"^\* {bob_id} is offline$"), what="bob offline at alice")

    @inlineCallbacks
    def test_nick_crosses_the_mesh(self):
        """/nick on server A: a user on server B sees the name beside the id (EXTENSIONS §13)."""
        server_a = MeshServer(self, 0)
        server_b = MeshServer(self, 4, extra_args=["--peer", server_a.url])
        alice, alice_ui, alice_id = yield self.registered_client(server_a.url, 1)
        bob, bob_ui, bob_id = yield self.registered_client(server_b.url, 2)
        yield until_listed(bob.session, alice_id)
        yield bob.session.tell(alice_id, "hello")  # bob now follows alice: her adverts reach him
        yield wait_until(lambda: alice_id in bob.session.presence, what="alice's advertise at bob")
        yield alice.session.nick("alice")
        self.assertEqual(alice_ui.lines[-1], f"Others now see you as {alice_id} (alice).")
        yield wait_until(lambda: bob.session.names.label(alice_id) == "alice", what="the name at bob")
        yield alice.session.tell(bob_id, "hi")
        yield wait_until(lambda: bob_ui.find(rf"^DM from {alice_id} \(alice\): hi$"), what="the named DM")
        # Another client of alice's learns its own name from the hello.
        yield alice.quit()
        again, _ui = yield self.start_client(server_a.url, 1)
        yield Deferred.fromCoroutine(again.session._login_with_key(alice_id, test_key(1), None, None))
        self.assertEqual(again.session.my_name, "alice")
