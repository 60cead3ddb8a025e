"""The public channel end to end: real servers on 127.0.0.1 forming a mesh, real clients.

Clients are real :class:`ClientApp` objects (``/register``, ``/all``, ``/members``) with a
recording user interface; a few raw WebSocket users speak frames by hand where a test needs
frames no real client would send (forgeries, hellos all at once).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from socp_tw import crypto, wire
from socp_tw.auth.scrypt import TEST_SCRYPT
from socp_tw.client.app import ClientApp
from socp_tw.services.store import DB_FILE
from socp_tw.test.keys import test_key
from socp_tw.test.servers import MeshServer, connect_raw, full_mesh
from socp_tw.test.ui import PASSWORD, RecordingUI
from socp_tw.test.waiting import changed, poll_until, wait_until
from socp_tw.testing import verify_server_frame


def public(server: MeshServer):
    return server.service.getServiceNamed("public")


def converged(servers: list[MeshServer], members: int) -> bool:
    """Every server has the same membership state, of ``members`` members, and its key."""
    states = [public(s).state for s in servers]
    first = states[0]
    if len(first.members()) != members:
        return False
    for state in states[1:]:
        if (state.version, state.states, state.origins) != (first.version, first.states, first.origins):
            return False
    keys = [public(s).key for s in servers]
    return all(k is not None and k.version == first.version for k in keys)


class RawUser:
    """A raw WebSocket user: a plain first-use USER_HELLO, every frame it receives recorded."""

    def __init__(self, case: TestCase, server: MeshServer, key, user_id: str | None = None) -> None:
        self.case = case
        self.server = server
        self.key = key
        self.pub = crypto.encode_public_key(key)
        self.user_id = user_id or wire.new_uuid4()
        self.frames: list[dict] = []
        self.members: dict[str, str] = {}
        self.factory: Any = None

    @inlineCallbacks
    def connect(self):
        self.factory = yield connect_raw(self.case, self.server.url)
        self._next()
        return self

    def _next(self) -> None:
        self.factory.messages.get().addCallback(self._got)

    def _got(self, frame: dict) -> None:
        assert frame["from"] == self.server.server_id, frame
        assert verify_server_frame(frame, self.server.public_key_text), frame
        self.frames.append(frame)
        changed()
        if frame["type"] == "PUBLIC_CHANNEL_UPDATED":
            payload = frame["payload"]
            if payload["reset"]:
                self.members.clear()
            self.members.update({m["user_id"]: m["pubkey"] for m in payload["members"]})
            for gone in payload["removed"]:
                self.members.pop(gone, None)
        self._next()

    def send(self, frame_type: str, payload: dict, to: str = "*", ts: int | None = None, from_=None) -> None:
        self.factory.send(
            {
                "type": frame_type,
                "from": from_ or self.user_id,
                "to": to,
                "ts": wire.now_ms() if ts is None else ts,
                "payload": payload,
                "sig": "",
            }
        )

    def hello(self) -> None:
        self.send("USER_HELLO", {"client": "raw-e2e/1", "pubkey": self.pub, "enc_pubkey": self.pub})

    def of_type(self, frame_type: str) -> list[dict]:
        return [f for f in self.frames if f["type"] == frame_type]

    def errors(self) -> list[dict]:
        return [f["payload"] for f in self.of_type("ERROR")]

    def public_message(self, recipient: str, recipient_pub: str, text: bytes, **over) -> tuple[dict, int]:
        ts = over.pop("ts", wire.now_ms())
        ciphertext = crypto.oaep_encrypt(crypto.load_public_key(recipient_pub), text)
        payload = {
            "ciphertext": ciphertext,
            "sender_pub": self.pub,
            "content_sig": crypto.sign_content(
                self.key, crypto.public_preimage(ciphertext, self.user_id, ts)
            ),
        }
        payload.update(over)
        return payload, ts


class PublicChannelE2ETests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.log_lines: list[str] = []

        def observe(event: dict) -> None:
            self.log_lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    @inlineCallbacks
    def three_servers(self):
        a = MeshServer(self, 0)
        b = MeshServer(self, 1, ["--peer", a.url])
        c = MeshServer(self, 2, ["--peer", b.url])
        servers = [a, b, c]
        yield wait_until(lambda: full_mesh(servers), servers, what="a full mesh of 3")
        return servers

    @inlineCallbacks
    def client(self, server: MeshServer, key_index: int):
        """A real client that ran /register on ``server`` (and so is logged in): (app, ui, user_id)."""
        ui = RecordingUI()
        app = ClientApp(
            server.url,
            self.mktemp(),
            ui,
            reactor,
            scrypt_params=TEST_SCRYPT,
            key_factory=lambda: test_key(key_index),
            retry_policy=lambda attempt: 0.1,
        )
        app.startService()
        self.addCleanup(app.quit)
        yield app.connection.when_open()
        ui.passwords.extend([PASSWORD, PASSWORD])
        yield app.session.register()
        success = next((line for line in ui.lines if line.startswith("[LOGIN SUCCESS] ")), None)
        self.assertIsNotNone(success, ui.lines)
        yield app.session.members()  # subscribes: the membership and key shares come from now on
        return app, ui, success.split()[-1]

    # ------------------------------------------------------------------------------------------

    @inlineCallbacks
    def test_all_reaches_every_other_member_exactly_once(self):
        servers = yield self.three_servers()
        a, b, c = servers
        encoded: list[bytes] = []
        real_encode = wire.encode_frame

        def spy(*args, **kwargs) -> bytes:
            data = real_encode(*args, **kwargs)
            encoded.append(data)
            return data

        self.patch(wire, "encode_frame", spy)
        users = []
        for server, key_index in ((a, 3), (a, 4), (b, 5), (c, 6)):
            users.append((yield self.client(server, key_index)))
        ids = [user_id for _, _, user_id in users]
        yield wait_until(lambda: converged(servers, 4), servers, what="the servers agreeing on 4 members")
        yield poll_until(
            lambda: all(set(app.session.public_members) == set(ids) for app, _, _ in users),
            "every client knowing the 4 members",
        )
        version = public(a).state.version
        self.assertEqual(version, 4)
        yield poll_until(
            lambda: all(
                (app.session.public_key_share or {}).get("version") == version for app, _, _ in users
            ),
            "every client holding its share of the key of version 4",
        )
        for app, _, _ in users:
            self.assertEqual(app.session.public_version, version)
        # /members shows the view.
        users[0][0].session.members()
        self.assertIn(f"Public channel, version {version} (4 members):", users[0][1].lines)
        self.assertIn(
            f"Group key: version {version}, made by server {public(a).key.creator}", users[0][1].lines
        )

        short = "hello from one, to all"
        long = "a long public message " + "0123456789" * 100  # 1022 bytes: three parts
        yield users[0][0].session.send_all(short)
        yield users[2][0].session.send_all(long)
        self.assertIn(f"[public] sent to 3 members: {short}", users[0][1].lines)
        self.assertIn(f"[public] sent to 3 members, 3 parts each: {long}", users[2][1].lines)

        def got(index: int, sender: int, text: str) -> bool:
            return f"[public] {ids[sender]}: {text}" in users[index][1].lines

        yield wait_until(
            lambda: all(got(i, 0, short) for i in (1, 2, 3)) and all(got(i, 2, long) for i in (0, 1, 3)),
            what="both messages everywhere",
        )
        # A member who joins later receives later messages, not earlier ones.
        _, late_ui, late_id = yield self.client(b, 7)
        yield poll_until(lambda: late_id in users[1][0].session.public_members, "the late member known")
        yield users[1][0].session.send_all("after the late join")
        yield wait_until(
            lambda: f"[public] {ids[1]}: after the late join" in late_ui.lines,
            what="the late member's message",
        )
        # A last message everybody sees flushes anything still in flight: then count.
        yield users[3][0].session.send_all("marker")
        yield wait_until(
            lambda: (
                all(got(i, 3, "marker") for i in (0, 1, 2)) and f"[public] {ids[3]}: marker" in late_ui.lines
            ),
            what="the marker",
        )
        for index, (_, ui, user_id) in enumerate(users):
            public_lines = [line for line in ui.lines if line.startswith("[public] ") and ": " in line]
            self.assertEqual(len(public_lines), len(set(public_lines)), ui.lines)  # nothing twice
            self.assertFalse([line for line in public_lines if line.startswith(f"[public] {user_id}:")])
            self.assertEqual(
                sum(line.startswith("[public] ") and "sent to" not in line for line in public_lines),
                {0: 3, 1: 3, 2: 3, 3: 3}[index],
                ui.lines,
            )
            self.assertFalse(
                [line for line in ui.lines if "[WARNING]" in line or "[ERROR]" in line], ui.lines
            )
        self.assertNotIn(f"[public] {ids[0]}: {short}", late_ui.lines)
        self.assertNotIn(f"[public] {ids[2]}: {long}", late_ui.lines)
        # The servers only ever held ciphertext: not in any frame, log line or database.
        secrets = [short, "0123456789" * 10, "after the late join", "marker"]
        frames = b"\n".join(encoded)
        self.assertGreater(frames.count(b"MSG_PUBLIC_CHANNEL"), 3 * 3 + 3 * 3)
        for server in servers:
            stored = b"".join(p.read_bytes() for p in Path(server.data_dir).glob(DB_FILE + "*"))
            self.assertIn(ids[0].encode(), stored)  # the members are there...
            for text in secrets:
                self.assertNotIn(text.encode(), stored)  # ...but no message
        for text in secrets:
            self.assertNotIn(text.encode(), frames)
            self.assertFalse([line for line in self.log_lines if text in line])

    @inlineCallbacks
    def test_forged_and_misaddressed_public_messages_are_rejected(self):
        servers = yield self.three_servers()
        a, b, _ = servers
        _, carol_ui, carol = yield self.client(b, 3)
        mallory = yield RawUser(self, a, test_key(4)).connect()
        mallory.hello()
        yield wait_until(lambda: mallory.of_type("ACK"), what="mallory's hello")
        yield wait_until(lambda: carol in mallory.members, what="carol in mallory's view")
        carol_pub = mallory.members[carol]
        # 1. content_sig made over another ciphertext.
        payload, ts = mallory.public_message(carol, carol_pub, b"forged one")
        other, _ = mallory.public_message(carol, carol_pub, b"other")
        payload["content_sig"] = other["content_sig"]
        mallory.send("MSG_PUBLIC_CHANNEL", payload, to=carol, ts=ts)
        # 2. Somebody else's key as sender_pub.
        payload, ts = mallory.public_message(carol, carol_pub, b"forged two", sender_pub=carol_pub)
        mallory.send("MSG_PUBLIC_CHANNEL", payload, to=carol, ts=ts)
        # 3. Pretending to be Carol.
        payload, ts = mallory.public_message(carol, carol_pub, b"forged three")
        mallory.send("MSG_PUBLIC_CHANNEL", payload, to=carol, ts=ts, from_=carol)
        # 4. To a user who is not a member.  (One frame ``to: "public"`` is accepted: INTEROP.md row 5.)
        payload, ts = mallory.public_message(carol, carol_pub, b"forged five")
        mallory.send("MSG_PUBLIC_CHANNEL", payload, to=wire.new_uuid4(), ts=ts)
        yield wait_until(lambda: len(mallory.errors()) == 4, what="four errors")
        self.assertEqual(
            [e["code"] for e in mallory.errors()],
            ["INVALID_SIG", "INVALID_SIG", "BAD_FROM", "USER_NOT_FOUND"],
        )
        self.assertTrue(all(e["msg_ref"] == "MSG_PUBLIC_CHANNEL" for e in mallory.errors()))
        # A genuine one after them arrives, alone.
        payload, ts = mallory.public_message(carol, carol_pub, b"genuine")
        mallory.send("MSG_PUBLIC_CHANNEL", payload, to=carol, ts=ts)
        yield wait_until(
            lambda: f"[public] {mallory.user_id}: genuine" in carol_ui.lines, what="the genuine one"
        )
        self.assertFalse([line for line in carol_ui.lines if "forged" in line])
        self.assertEqual(public(a).counters["routed"], 1)

    @inlineCallbacks
    def test_concurrent_joins_on_two_servers_converge(self):
        servers = yield self.three_servers()
        a, b, _ = servers
        raw = [RawUser(self, server, test_key(3 + i)) for i, server in enumerate((a, a, b, b))]
        yield DeferredList([user.connect() for user in raw], fireOnOneErrback=True)
        for user in raw:  # all four hellos at once, two servers
            user.hello()
        yield wait_until(lambda: converged(servers, 4), servers, what="convergence on 4 members")
        states = [public(s).state for s in servers]
        self.assertEqual({s.version for s in states}, {4})
        self.assertEqual(set(states[2].members()), {u.user_id for u in raw})
        self.assertEqual(set(states[0].origins), {a.server_id, b.server_id})
        yield wait_until(
            lambda: all(
                len(u.members) == 4
                and [f["payload"]["version"] for f in u.of_type("PUBLIC_CHANNEL_KEY_SHARE")][-1:] == [4]
                for u in raw
            ),
            what="every user told the members and given its key share",
        )
        for user in raw:
            shares = user.of_type("PUBLIC_CHANNEL_KEY_SHARE")
            last = shares[-1]["payload"]
            self.assertEqual(last["version"], 4)
            preimage = crypto.keyshare_preimage(last["shares"], last["creator_pub"])
            creator_key = crypto.load_public_key(last["creator_pub"])
            self.assertTrue(crypto.verify_content_sig(creator_key, preimage, last["content_sig"]))
            [mine] = [s for s in last["shares"] if s["member"] == user.user_id]
            self.assertEqual(len(crypto.oaep_decrypt(user.key, mine["wrapped_public_channel_key"])), 32)
        self.assertEqual(len({public(s).key.creator for s in servers}), 1)

    @inlineCallbacks
    def test_version_persisted_across_restart_and_bumped_on_join_and_leave(self):
        a = MeshServer(self, 0)
        b = MeshServer(self, 1, ["--peer", a.url])
        yield wait_until(lambda: full_mesh([a, b]), [a, b], what="A and B linked")
        alice_app, _, alice = yield self.client(a, 3)
        bob_app, _, bob = yield self.client(b, 4)
        carol_app, _, carol = yield self.client(b, 5)
        yield wait_until(lambda: converged([a, b], 3), [a, b], what="three members")
        self.assertEqual(public(a).state.version, 3)
        yield carol_app.quit()  # a leave
        yield wait_until(
            lambda: converged([a, b], 2) and public(a).state.version == 4, [a, b], what="carol's leave"
        )
        yield poll_until(lambda: alice_app.session.public_version == 4, "alice told of the leave")
        self.assertEqual(set(alice_app.session.public_members), {alice, bob})
        # B stops while Bob is connected: Bob leaves with it, and B remembers.
        yield b.stop()
        yield wait_until(lambda: public(a).state.version == 5, [a], what="bob's leave reaching A")
        yield bob_app.quit()  # no reconnection to B's next incarnation (port 0 might be reused)
        self.assertEqual(set(public(a).state.members()), {alice})
        b2 = MeshServer(self, 1, ["--peer", a.url], data_dir=b.data_dir)
        yield wait_until(lambda: public(b2).ready, [b2], what="B's state loaded")
        self.assertGreaterEqual(public(b2).state.version, 5)  # never reset, never lower
        self.assertEqual(public(b2).state.states[carol].present, False)
        yield wait_until(lambda: full_mesh([a, b2]), [a, b2], what="B back in the mesh")
        yield wait_until(lambda: converged([a, b2], 1), [a, b2], what="A and B agreeing again")
        self.assertEqual(public(b2).state.version, 5)
        _, _, dave = yield self.client(b2, 6)
        yield wait_until(
            lambda: converged([a, b2], 2) and public(a).state.version == 6, [a, b2], what="dave's join"
        )
        yield poll_until(lambda: dave in alice_app.session.public_members, "alice told of dave")
        self.assertEqual(alice_app.session.public_version, 6)
        lines = "\n".join(self.log_lines)
        self.assertRegex(lines, rf"Public channel: {re.escape(carol)} left \(version 4\)")
        self.assertRegex(lines, r"Public channel loaded: version 5, 1 current member\(s\)")
