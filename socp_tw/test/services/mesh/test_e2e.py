"""Real servers on 127.0.0.1 port 0 forming a mesh (PROTOCOL.md §4), with short test intervals.

Users are simulated on a server's presence table with a FakeLink (the user side is
tested elsewhere); "fake servers" are raw WebSocket clients that speak the server
frames with their own test keys, to send what a well-behaved server never would.
"""

from __future__ import annotations

import json
from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from socp_tw import crypto, wire
from socp_tw.services.mesh import PEERS_FILE
from socp_tw.test.keys import test_key, vector_id, vector_key
from socp_tw.test.servers import MeshServer, connect_raw, full_mesh, reactor, settled
from socp_tw.test.waiting import poll_until, wait_until
from socp_tw.testing import FakeLink, verify_server_frame

USER_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
OTHER_USER = "2c1a4f6e-0c1f-4c39-9d0a-6f0f1e9b8a77"
FAKE_ID = "9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d"
FAKE_KEY = 3
WRONG_KEY = 4
USER_KEY = 7


class FakeServer:
    """A raw WebSocket client that identifies as server FAKE_ID and signs with test_key(key_index)."""

    def __init__(self, client, server_id: str = FAKE_ID, key_index: int = FAKE_KEY) -> None:
        self.client = client
        self.server_id = server_id
        self.key_index = key_index

    def send(
        self, type: str, payload: dict, *, to: str = "*", signer: int | None = None, sig: str | None = None
    ):
        if sig is None:
            sig = crypto.sign_payload(test_key(self.key_index if signer is None else signer), payload)
        frame = wire.encode_frame(type, self.server_id, to, wire.now_ms(), payload, sig)
        self.client.send(frame)
        return frame

    def hello(self, key_index: int | None = None) -> None:
        key = test_key(self.key_index if key_index is None else key_index)
        payload = {"host": "127.0.0.1", "port": 1, "pubkey": crypto.encode_public_key(key)}
        self.send("SERVER_HELLO_LINK", payload, signer=key_index)

    def advertise(self, user_id: str = USER_ID, **kwargs):
        pubkey = crypto.encode_public_key(test_key(USER_KEY))
        payload = {
            "user_id": user_id,
            "server_id": self.server_id,
            "pubkey": pubkey,
            "meta": {"pubkey": pubkey},
        }
        return self.send("USER_ADVERTISE", payload, **kwargs)

    @inlineCallbacks
    def next_frame(self, type: str):
        """The next frame of ``type`` the server sent us (heartbeats and others skipped)."""
        while True:
            frame = yield self.client.messages.get().addTimeout(15, reactor)
            if frame.get("type") == type:
                return frame


class MeshE2ETests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def add_user(self, server: MeshServer, user_id: str = USER_ID, key=None) -> FakeLink:
        """Simulate a user completing USER_HELLO on ``server``."""
        pubkey = crypto.encode_public_key(key or test_key(USER_KEY))
        link = FakeLink(f"user-{user_id[:8]}", role="user", identity=user_id)
        server.presence.user_online_local(user_id, pubkey, {"name": "alice"}, link)
        return link

    def knows(self, server: MeshServer, user_id: str, where: str | None) -> bool:
        entry = server.presence.lookup(user_id)
        return entry is None if where is None else entry is not None and entry.server_id == where

    @inlineCallbacks
    def chain(self):
        a = MeshServer(self, 0)
        b = MeshServer(self, 1, ["--peer", a.url])
        c = MeshServer(self, 2, ["--peer", b.url])
        servers = [a, b, c]
        yield wait_until(lambda: settled(servers), servers, what="a full mesh of 3")
        return a, b, c

    @inlineCallbacks
    def fake_server(self, server: MeshServer) -> FakeServer:
        client = yield connect_raw(self, server.url)
        fake = FakeServer(client)
        fake.hello()
        yield wait_until(
            lambda: FAKE_ID in server.mesh.connected_servers(), [server], what="the fake server linked"
        )
        return fake

    # -- forming the mesh -----------------------------------------------------------------------

    @inlineCallbacks
    def test_chain_forms_full_mesh(self):
        a, b, c = yield self.chain()
        for x, y in ((a, b), (b, c), (a, c)):
            # Exactly one live link per pair, and both ends agree on which connection it is.
            lx, ly = x.mesh.link_to(y.server_id), y.mesh.link_to(x.server_id)
            self.assertNotEqual(lx.outgoing, ly.outgoing)
        yield wait_until(
            lambda: all(s.mesh.open_links() == 2 for s in (a, b, c)), [a, b, c], what="no spare link"
        )
        lines = self.lines()
        self.assertIn(f"Connected to peer {a.url}", lines)
        self.assertIn(f"Connected to peer {b.url}", lines)
        joining = lines.index(f"Server joining {b.server_id}")
        announced = lines.index(f"Server announced: {b.server_id}")
        self.assertLess(joining, announced)
        self.assertIn(f"Server joining {c.server_id}", lines)
        status = [line for line in lines if line.startswith("Status: Known servers:")]
        self.assertTrue(any(b.server_id in line and c.server_id in line for line in status), status)
        # The pins are persisted, private to the server (written on a worker thread: wait for it).
        pins_file = Path(a.data_dir) / PEERS_FILE

        def stored() -> dict:
            try:
                return json.loads(pins_file.read_text())["servers"]
            except (OSError, ValueError):
                return {}

        yield poll_until(lambda: set(stored()) == {b.server_id, c.server_id}, "peers.json on A lists B and C")
        self.assertEqual(stored()[b.server_id]["pubkey"], b.public_key_text)

    @inlineCallbacks
    def test_user_on_c_known_on_a(self):
        a, b, c = yield self.chain()
        self.add_user(c)
        yield wait_until(lambda: self.knows(a, USER_ID, c.server_id), [a], what="the user on A")
        entry = a.presence.lookup(USER_ID)
        self.assertEqual(entry.meta["pubkey"], entry.pubkey)
        c.presence.user_offline_local(USER_ID)
        yield wait_until(lambda: self.knows(a, USER_ID, None) and self.knows(b, USER_ID, None), [a, b])

    @inlineCallbacks
    def test_simultaneous_dial_leaves_one_link(self):
        a = MeshServer(self, 0)
        b = MeshServer(self, 1)
        a.mesh.join("127.0.0.1", b.port)
        b.mesh.join("127.0.0.1", a.port)
        pair = [a, b]
        # The spare link closes quietly (no mesh or presence event): look for it.
        yield poll_until(lambda: settled(pair), what="one link between A and B")
        link_a, link_b = a.mesh.link_to(b.server_id), b.mesh.link_to(a.server_id)
        self.assertNotEqual(link_a.outgoing, link_b.outgoing)
        # The survivor is the one dialled by the lower UUID.
        self.assertEqual(link_a.outgoing, a.server_id < b.server_id)

    @inlineCallbacks
    def test_bootstrap_file_pins_the_introducer(self):
        a = MeshServer(self, 0)
        good = Path(self.mktemp())
        good.write_text(f"- host: 127.0.0.1\n  port: {a.port}\n  pubkey: {a.public_key_text}\n")
        b = MeshServer(self, 1, ["--bootstrap", str(good)])
        yield wait_until(lambda: settled([a, b]), [a, b], what="B joined through its bootstrap entry")
        bad = Path(self.mktemp())
        wrong = crypto.encode_public_key(test_key(WRONG_KEY))
        bad.write_text(json.dumps([{"host": "127.0.0.1", "port": a.port, "pubkey": wrong}]))
        c = MeshServer(self, 2, ["--bootstrap", str(bad)])
        yield wait_until(
            lambda: any(f"Refused SERVER_WELCOME from {a.url}" in line for line in self.lines()), [c]
        )
        self.assertEqual(c.mesh.connected_servers(), [])
        self.assertGreaterEqual(c.mesh.counters["key_refused"], 1)

    # -- failures and restarts -----------------------------------------------------------------------

    @inlineCallbacks
    def test_crashed_server_is_detected_and_its_users_withdrawn(self):
        a, b, c = yield self.chain()
        self.add_user(c)
        yield wait_until(
            lambda: self.knows(a, USER_ID, c.server_id) and self.knows(b, USER_ID, c.server_id), [a, b]
        )
        yield c.crash()
        yield wait_until(
            lambda: self.knows(a, USER_ID, None) and self.knows(b, USER_ID, None),
            [a, b],
            what="C's user withdrawn",
        )
        self.assertEqual(a.mesh.connected_servers(), [b.server_id])
        self.assertEqual(b.mesh.connected_servers(), [a.server_id])
        self.assertIn(f"Withdrew 1 users of server {c.server_id} (no link for 0.3 s)", self.lines())

    @inlineCallbacks
    def test_restart_relinks_and_resyncs(self):
        a, b, c = yield self.chain()
        self.add_user(c)
        yield wait_until(lambda: self.knows(b, USER_ID, c.server_id), [b])
        port, data_dir = b.port, b.data_dir
        yield b.stop()
        yield wait_until(lambda: b.server_id not in a.mesh.connected_servers(), [a])
        # Same data dir and port, no --peer: B relinks from the peers it persisted.
        b2 = MeshServer(self, 1, data_dir=data_dir, bind=f"ws://127.0.0.1:{port}")
        self.assertEqual(b2.server_id, b.server_id)
        servers = [a, b2, c]
        yield wait_until(lambda: full_mesh(servers), servers, what="the mesh after B's restart")
        # Resync: the fresh B learns C's user again when their link opens.
        yield wait_until(lambda: self.knows(b2, USER_ID, c.server_id), [b2], what="C's user known on B again")
        self.add_user(b2, OTHER_USER)
        yield wait_until(lambda: self.knows(a, OTHER_USER, b.server_id), [a])
        yield wait_until(lambda: settled(servers), servers, what="no spare link left")

    @inlineCallbacks
    def test_silent_server_is_declared_dead(self):
        a = MeshServer(self, 0, heartbeat_interval=0.2, dead_after=1.0)
        fake = yield self.fake_server(a)
        fake.advertise()
        yield wait_until(lambda: self.knows(a, USER_ID, FAKE_ID), [a])
        # The fake server now says nothing more: no heartbeats.
        code, _ = yield fake.client.closed
        self.assertEqual(code, 1001)
        yield wait_until(lambda: self.knows(a, USER_ID, None), [a], what="the silent server's user withdrawn")
        self.assertTrue(any("declared dead" in line for line in self.lines()))

    # -- hostile peers ----------------------------------------------------------------------------------

    @inlineCallbacks
    def test_forged_and_unsigned_frames_rejected_then_cut_off(self):
        a = MeshServer(self, 0)
        fake = yield self.fake_server(a)
        fake.advertise(signer=WRONG_KEY)
        fake.advertise(OTHER_USER, sig="")
        fake.advertise("0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d")
        yield wait_until(lambda: self.knows(a, "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d", FAKE_ID), [a])
        self.assertTrue(self.knows(a, USER_ID, None))
        self.assertTrue(self.knows(a, OTHER_USER, None))
        self.assertEqual(a.mesh.counters["verify_failed"], 2)
        for i in range(a.mesh.forged_limit):
            fake.send("HEARTBEAT", {"n": i}, signer=WRONG_KEY)
        code, _ = yield fake.client.closed
        self.assertEqual(code, 1008)
        self.assertEqual(a.mesh.counters["cut_off"], 1)

    @inlineCallbacks
    def test_changed_key_is_refused(self):
        a = MeshServer(self, 0)
        yield self.fake_server(a)
        impostor = FakeServer((yield connect_raw(self, a.url)), key_index=WRONG_KEY)
        impostor.hello()
        error = yield impostor.next_frame("ERROR")
        self.assertEqual(error["payload"]["code"], "BAD_KEY")
        self.assertTrue(verify_server_frame(error, a.public_key_text))
        code, _ = yield impostor.client.closed
        self.assertEqual(code, 1008)
        self.assertTrue(any(f"REFUSED changed key for server {FAKE_ID}" in line for line in self.lines()))
        self.assertEqual(a.mesh.connected_servers(), [FAKE_ID])

    @inlineCallbacks
    def test_looping_and_duplicate_gossip_is_dropped_never_echoed(self):
        a, b, c = yield self.chain()
        fake = yield self.fake_server(a)
        sent = fake.advertise()
        servers = [a, b, c]
        yield wait_until(lambda: all(self.knows(s, USER_ID, FAKE_ID) for s in servers), servers)
        # In a triangle the advertise reaches B and C twice: each processes it once.
        yield poll_until(
            lambda: b.mesh.counters["dropped.duplicate"] + c.mesh.counters["dropped.duplicate"] >= 1,
            "a duplicate dropped on B or C",
        )
        for server in servers:
            self.assertEqual(server.mesh.counters["gossip.advertise"], 1)
        fake.client.send(sent)  # a replay
        fake.send("HEARTBEAT", {}, to=a.server_id)
        yield poll_until(lambda: a.mesh.counters["dropped.duplicate"] >= 1, "the echo dropped on A")
        self.assertEqual(a.mesh.counters["gossip.advertise"], 1)
        # Nothing the fake server sent came back to it.
        while fake.client.messages.pending:
            frame = yield fake.client.messages.get()
            self.assertNotEqual(frame["from"], FAKE_ID)

    # -- routing ------------------------------------------------------------------------------------------

    @inlineCallbacks
    def test_server_deliver_is_forwarded_or_answered(self):
        a = MeshServer(self, 0)
        c = MeshServer(self, 2, ["--peer", a.url])
        yield wait_until(lambda: settled([a, c]), [a, c])
        bob, alice = vector_id("bob"), vector_id("alice")
        bob_link = self.add_user(c, bob, vector_key("bob"))
        fake = yield self.fake_server(a)
        yield wait_until(
            lambda: self.knows(a, bob, c.server_id) and c.mesh.server_key(FAKE_ID) is not None, [a, c]
        )
        ts = wire.now_ms() - 5000
        ciphertext = wire.b64u_encode(b"\x05" * 512)
        sig = crypto.sign_content(vector_key("alice"), crypto.dm_preimage(ciphertext, alice, bob, ts))
        payload = {
            "user_id": bob,
            "ciphertext": ciphertext,
            "sender": alice,
            "sender_pub": crypto.encode_public_key(vector_key("alice")),
            "content_sig": sig,
        }
        # Sent to A, which does not host Bob: A forwards it unchanged to C, which delivers it.
        fake.client.send(
            wire.encode_frame(
                "SERVER_DELIVER",
                FAKE_ID,
                a.server_id,
                ts,
                payload,
                crypto.sign_payload(test_key(FAKE_KEY), payload),
            )
        )
        yield poll_until(lambda: any(f["type"] == "USER_DELIVER" for f in bob_link.frames()), "delivery")
        [delivered] = [f for f in bob_link.frames() if f["type"] == "USER_DELIVER"]
        self.assertEqual(
            (delivered["ts"], delivered["from"], delivered["payload"]["sender"]), (ts, c.server_id, alice)
        )
        # Nobody hosts this one: USER_NOT_FOUND back to the origin.
        lost = {**payload, "user_id": OTHER_USER}
        fake.send("SERVER_DELIVER", lost, to=a.server_id)
        error = yield fake.next_frame("ERROR")
        self.assertEqual((error["payload"]["code"], error["to"]), ("USER_NOT_FOUND", FAKE_ID))
        self.assertTrue(verify_server_frame(error, a.public_key_text))
