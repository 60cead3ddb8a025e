"""Store-and-forward with real servers (docs/MESH.md "Held messages"): a DM held for an offline user
survives ``kill -9`` of the holding server and arrives at the next login, once; a first-use user
gets what was held for it when it says hello on another server."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from types import SimpleNamespace

from twisted.internet.defer import TimeoutError, inlineCallbacks
from twisted.trial.unittest import TestCase

import socp_tw
from socp_tw import crypto, wire
from socp_tw.identity import IDENTITY_FILE
from socp_tw.test.keys import test_key
from socp_tw.test.servers import MeshServer, connect_raw, prepare_data_dir, reactor, settled
from socp_tw.test.services.users.test_users_e2e import RawUser
from socp_tw.test.test_tap import PROCESS_TIMEOUT, _free_ports, _Twistd
from socp_tw.test.waiting import wait_until

ALICE_KEY, BOB_KEY = 6, 7


class HeldAcrossKillTests(TestCase):
    timeout = 4 * PROCESS_TIMEOUT

    def spawn(self, data_dir: Path, port: int):
        tree = str(Path(socp_tw.__file__).resolve().parent.parent)
        env = {"PYTHONPATH": tree, "PATH": "/usr/bin:/bin"}
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile", ""]
        argv += ["socp", "--bind", f"ws://127.0.0.1:{port}", "--data-dir", str(data_dir)]
        twistd = _Twistd(data_dir.name)
        transport = reactor.spawnProcess(twistd, sys.executable, argv, env=env, path=str(data_dir.parent))

        def kill():
            if not twistd.ended.called:
                transport.signalProcess("KILL")
            return twistd.ended

        self.addCleanup(kill)
        return twistd, transport

    @inlineCallbacks
    def user(self, server, key_index: int, user_id: str | None = None):
        factory = yield connect_raw(self, server.url)
        user = RawUser(self, server, factory, user_id or wire.new_uuid4(), test_key(key_index))
        user.send("USER_HELLO", user.hello_payload(None))
        self.assertEqual((yield user.receive("ACK"))["payload"]["msg_ref"], "USER_HELLO")
        return user

    @inlineCallbacks
    def next_of(self, user: RawUser, frame_type: str, timeout: float = 15):
        while True:
            frame = yield user.factory.messages.get().addTimeout(timeout, reactor)
            if frame["type"] == frame_type:
                return frame

    @inlineCallbacks
    def test_held_dm_survives_kill_9_and_arrives_at_the_next_login(self):
        data_dir = Path(prepare_data_dir(self, 0)).absolute()
        (port,) = _free_ports(1)
        identity = json.loads((data_dir / IDENTITY_FILE).read_text())
        server = SimpleNamespace(
            url=f"ws://127.0.0.1:{port}",
            server_id=identity["server_id"],
            public_key_text=crypto.encode_public_key(test_key(0)),
        )
        twistd, transport = self.spawn(data_dir, port)
        yield twistd.wait_for(rf"listening on ws://127\.0\.0\.1:{port}\b")
        alice = yield self.user(server, ALICE_KEY)
        bob = yield self.user(server, BOB_KEY)
        bob.factory.proto.sendClose(1000)
        yield bob.factory.closed
        yield self.next_of(alice, "USER_REMOVE")
        payload, ts = alice.dm(bob.user_id, b"left while you were away", bob.key)
        queued = yield self.next_of(alice, "ACK")
        self.assertEqual((queued["payload"]["status"], queued["payload"]["ts"]), ("queued", ts))
        # kill -9: no shutdown, no flush; the DM was written before "queued" was said.
        transport.signalProcess("KILL")
        ended = yield twistd.ended
        self.assertEqual(ended.signal, signal.SIGKILL)
        twistd, transport = self.spawn(data_dir, port)
        yield twistd.wait_for(rf"listening on ws://127\.0\.0\.1:{port}\b")
        bob = yield self.user(server, BOB_KEY, user_id=bob.user_id)
        deliver = yield self.next_of(bob, "USER_DELIVER")
        self.assertEqual((deliver["ts"], deliver["payload"]["held"]), (ts, True))
        self.assertEqual(deliver["payload"]["content_sig"], payload["content_sig"])
        self.assertEqual(
            crypto.oaep_decrypt(bob.key, deliver["payload"]["ciphertext"]), b"left while you were away"
        )
        # Exactly once: a second login gets nothing more.
        bob.factory.proto.sendClose(1000)
        yield bob.factory.closed
        again = yield self.user(server, BOB_KEY, user_id=bob.user_id)
        with self.assertRaises(TimeoutError):
            yield self.next_of(again, "USER_DELIVER", timeout=2)


class HeldAcrossServersTests(TestCase):
    timeout = 60

    @inlineCallbacks
    def test_first_use_user_gets_its_dms_when_it_says_hello_elsewhere(self):
        a = MeshServer(self, 0)
        b = MeshServer(self, 1, ["--peer", a.url])
        yield wait_until(lambda: settled([a, b]), [a, b], what="A and B linked")
        factory = yield connect_raw(self, a.url)
        alice = RawUser(self, a, factory, wire.new_uuid4(), test_key(ALICE_KEY))
        alice.send("USER_HELLO", alice.hello_payload(None))
        yield alice.receive("ACK")
        # Bob said hello once on A (so A knows his key), then left.
        factory = yield connect_raw(self, a.url)
        bob = RawUser(self, a, factory, wire.new_uuid4(), test_key(BOB_KEY))
        bob.send("USER_HELLO", bob.hello_payload(None))
        yield bob.receive("ACK")
        bob.factory.proto.sendClose(1000)
        yield wait_until(lambda: a.presence.lookup(bob.user_id) is None, [a], what="bob gone")
        sent = [alice.dm(bob.user_id, b"first", bob.key), alice.dm(bob.user_id, b"second", bob.key)]
        # Bob comes back on B, with a proof of his key (his id is pinned from A's gossip there).
        factory = yield connect_raw(self, b.url)
        bob = RawUser(self, b, factory, bob.user_id, test_key(BOB_KEY))
        answer, _ = yield bob.hello()
        self.assertEqual(answer["type"], "ACK")
        texts = []
        for _ in sent:
            deliver = None
            while deliver is None:
                frame = yield bob.factory.messages.get().addTimeout(15, reactor)
                if frame["type"] == "USER_DELIVER":
                    deliver = frame
            self.assertIs(deliver["payload"]["held"], True)
            texts.append(crypto.oaep_decrypt(bob.key, deliver["payload"]["ciphertext"]))
        self.assertEqual(texts, [b"first", b"second"])  # in the order sent
        holding = a.service.getServiceNamed("holding")
        yield wait_until(lambda: holding.total == 0, [a], what="A forgets them once B confirms")
