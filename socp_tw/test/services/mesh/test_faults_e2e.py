"""Faults with real servers on 127.0.0.1: a peer dying mid-transfer, a restart, a netsplit and its heal.

What must hold (docs/SECURITY.md, "Faults"): presence converges once links are back, and a
sender whose frame cannot be delivered gets an ERROR naming it — never silence.  Users
are raw WebSocket connections speaking frames by hand (exact control over what is sent
and when), except in the restart test, which uses the real client for its reconnects.
"""

from __future__ import annotations

import hashlib
from typing import Any

from twisted.internet.defer import fail, inlineCallbacks
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectError
from twisted.trial.unittest import TestCase

from socp_tw import crypto, wire
from socp_tw.services.files import CHUNK_BYTES
from socp_tw.test.client.test_e2e import ClientE2EBase
from socp_tw.test.keys import test_key
from socp_tw.test.servers import MeshServer, connect_raw, reactor, settled
from socp_tw.test.services.users.test_users_e2e import RawUser
from socp_tw.test.waiting import poll_until, until_listed, wait_until

ALICE_KEY, BOB_KEY = 6, 7


class _SplittableEndpoint:
    """A TCP endpoint whose dials fail while ``case.split`` is set (the network is cut).

    Checked at each dial: a ClientService keeps its endpoint across reconnects.
    """

    def __init__(self, case: FaultTests, host: str, port: int) -> None:
        self._case = case
        self._endpoint = clientFromString(reactor, f"tcp:host={host}:port={port}:timeout=5")

    def connect(self, factory: Any):
        if self._case.split:
            return fail(ConnectError(string="netsplit (test)"))
        return self._endpoint.connect(factory)


class FaultTests(TestCase):
    timeout = 60

    def mesh_pair(self, blockable: bool = False):
        """Two linked servers A and B; with ``blockable``, ``self.split = True`` stops every dial."""
        self.split = False

        def tune(server: MeshServer) -> None:
            server.outgoing._endpoint_for = lambda host, port: _SplittableEndpoint(self, host, port)

        a = MeshServer(self, 0, tune=tune if blockable else None)
        b = MeshServer(self, 1, ["--peer", a.url], tune=tune if blockable else None)
        return a, b

    @inlineCallbacks
    def user(self, server: MeshServer, key_index: int):
        """A raw user that said a first-use hello on ``server``."""
        factory = yield connect_raw(self, server.url)
        user = RawUser(self, server, factory, wire.new_uuid4(), test_key(key_index))
        user.send("USER_HELLO", user.hello_payload(None))
        yield self.next_of(user, "ACK")
        return user

    @inlineCallbacks
    def next_of(self, user: RawUser, *types: str, about: str | None = None):
        """The next frame of one of ``types`` (about user ``about``, if given); others are skipped."""
        while True:
            frame = yield user.factory.messages.get().addTimeout(15, reactor)
            if frame["type"] not in types:
                continue
            if about is not None and about not in (frame["payload"].get("user_id"), frame.get("to")):
                continue
            self.assertEqual(frame["from"], user.server.server_id)
            return frame

    def dm(self, sender: RawUser, recipient: RawUser, text: bytes) -> dict:
        payload, _ = sender.dm(recipient.user_id, text, recipient.key)
        return payload

    @inlineCallbacks
    def linked_users(self, a: MeshServer, b: MeshServer):
        yield wait_until(lambda: settled([a, b]), [a, b], what="A and B linked")
        alice = yield self.user(a, ALICE_KEY)
        bob = yield self.user(b, BOB_KEY)
        yield self.next_of(alice, "USER_ADVERTISE", about=bob.user_id)
        return alice, bob

    # -- a peer dies mid-transfer ------------------------------------------------------------------

    @inlineCallbacks
    def test_peer_dies_mid_transfer_sender_gets_errors(self):
        a, b = self.mesh_pair()
        alice, bob = yield self.linked_users(a, b)
        data = bytes(range(256)) * 7  # 1792 bytes: 5 chunks
        file_id = wire.new_uuid4()
        sha = hashlib.sha256(data).hexdigest()
        ts = wire.now_ms()
        preimage = crypto.file_start_preimage(
            file_id, "f.bin", len(data), sha, alice.user_id, bob.user_id, ts
        )
        start = {
            "file_id": file_id,
            "name": "f.bin",
            "size": len(data),
            "sha256": sha,
            "mode": "dm",
            "content_sig": crypto.sign_content(alice.key, preimage),
        }
        alice.send("FILE_START", start, to=bob.user_id, sign=True, ts=ts)
        self.assertEqual((yield self.next_of(bob, "FILE_START"))["payload"]["file_id"], file_id)

        def chunk(index: int) -> None:
            ts = wire.now_ms() + index
            piece = data[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES]
            ciphertext = crypto.oaep_encrypt(bob.key.public_key(), piece)
            sig = crypto.sign_content(
                alice.key,
                crypto.file_chunk_preimage(ciphertext, file_id, index, alice.user_id, bob.user_id, ts),
            )
            payload = {"file_id": file_id, "index": index, "ciphertext": ciphertext, "content_sig": sig}
            alice.send("FILE_CHUNK", payload, to=bob.user_id, ts=ts)

        chunk(0)
        chunk(1)
        self.assertEqual((yield self.next_of(bob, "FILE_CHUNK"))["payload"]["index"], 0)
        self.assertEqual((yield self.next_of(bob, "FILE_CHUNK"))["payload"]["index"], 1)
        yield b.crash()
        # The next chunk has nowhere to go: the transfer is dropped and Alice is told so.
        chunk(2)
        error = yield self.next_of(alice, "ERROR")
        self.assertEqual(
            (error["payload"]["code"], error["payload"]["msg_ref"], error["payload"]["file_id"]),
            ("USER_NOT_FOUND", "FILE_CHUNK", file_id),
        )
        self.assertIn("the transfer was dropped", error["payload"]["detail"])
        chunk(3)  # later chunks name a transfer that no longer exists
        error = yield self.next_of(alice, "ERROR")
        self.assertEqual((error["payload"]["code"], error["payload"]["file_id"]), ("FILE_UNKNOWN", file_id))
        # A direct message to the vanished user is held for it, and Alice is told so.
        self.dm(alice, bob, b"still there?")
        queued = yield self.next_of(alice, "ACK")
        self.assertEqual((queued["payload"]["status"], queued["payload"]["user_id"]), ("queued", bob.user_id))
        yield wait_until(lambda: a.presence.lookup(bob.user_id) is None, [a], what="bob withdrawn on A")

    @inlineCallbacks
    def test_failure_on_the_far_server_is_reported_to_the_sender(self):
        a, b = self.mesh_pair()
        alice, bob = yield self.linked_users(a, b)
        # A believes a user is on B; B has no such user (it left in between, say).
        ghost = wire.new_uuid4()
        a.presence.user_online_remote(ghost, b.server_id, crypto.encode_public_key(test_key(5)), {})
        alice.dm(ghost, b"hello?", test_key(5))
        error = yield self.next_of(alice, "ERROR")
        self.assertEqual(error["payload"]["code"], "USER_NOT_FOUND")
        self.assertEqual(error["payload"]["user_id"], ghost)
        self.assertEqual(error["payload"]["msg_ref"], "MSG_DIRECT")
        self.assertIn(f"delivery to {ghost} failed", error["payload"]["detail"])
        # The real user on B still gets messages.
        self.dm(alice, bob, b"hi bob")
        deliver = yield self.next_of(bob, "USER_DELIVER")
        self.assertEqual(deliver["payload"]["sender"], alice.user_id)

    # -- a netsplit, and its heal -----------------------------------------------------------------------

    @inlineCallbacks
    def test_netsplit_and_heal(self):
        a, b = self.mesh_pair(blockable=True)
        alice, bob = yield self.linked_users(a, b)
        yield self.next_of(bob, "USER_ADVERTISE", about=alice.user_id)
        # Cut the network between A and B: the link dies and neither can dial the other.
        self.split = True
        for link in (a.mesh.link_to(b.server_id), b.mesh.link_to(a.server_id)):
            link.transport.abortConnection()
        yield wait_until(
            lambda: a.presence.lookup(bob.user_id) is None and b.presence.lookup(alice.user_id) is None,
            [a, b],
            what="each side withdraws the other's users",
        )
        removed = yield self.next_of(alice, "USER_REMOVE", about=bob.user_id)
        self.assertEqual(removed["payload"]["server_id"], b.server_id)
        yield self.next_of(bob, "USER_REMOVE", about=alice.user_id)
        # Every DM sent during the split is held by Alice's server (docs/MESH.md "Held messages").
        held = [self.dm(alice, bob, b"across the split %d" % n) for n in range(3)]
        for _ in held:
            queued = yield self.next_of(alice, "ACK")
            self.assertEqual(
                (queued["payload"]["status"], queued["payload"]["user_id"]), ("queued", bob.user_id)
            )
        alice.send("LIST_REQUEST", {})
        self.assertEqual(
            (yield self.next_of(alice, "LIST_RESPONSE"))["payload"]["online_users"], [alice.user_id]
        )
        # Heal: the dialers get through again, and presence converges without anyone reconnecting.
        self.split = False
        yield wait_until(lambda: settled([a, b]), [a, b], what="the link back after the heal")
        yield self.next_of(alice, "USER_ADVERTISE", about=bob.user_id)
        yield self.next_of(bob, "USER_ADVERTISE", about=alice.user_id)
        alice.send("LIST_REQUEST", {})
        listing = yield self.next_of(alice, "LIST_RESPONSE")
        self.assertEqual(listing["payload"]["online_users"], sorted([alice.user_id, bob.user_id]))
        # The held DMs arrive once each, in the order sent, with their original ts and signature.
        for n, sent in enumerate(held):
            deliver = yield self.next_of(bob, "USER_DELIVER")
            self.assertIs(deliver["payload"]["held"], True)
            self.assertEqual(deliver["payload"]["content_sig"], sent["content_sig"])
            self.assertEqual(
                crypto.oaep_decrypt(bob.key, deliver["payload"]["ciphertext"]), b"across the split %d" % n
            )
        for _ in held:
            delivered = yield self.next_of(alice, "ACK")
            self.assertEqual(delivered["payload"]["status"], "delivered")
        payload = self.dm(alice, bob, b"healed")
        deliver = yield self.next_of(bob, "USER_DELIVER")
        self.assertEqual(deliver["payload"]["ciphertext"], payload["ciphertext"])
        self.assertEqual(crypto.oaep_decrypt(bob.key, deliver["payload"]["ciphertext"]), b"healed")


class RestartTests(ClientE2EBase):
    @inlineCallbacks
    def test_server_restart_clients_reconnect_and_presence_converges(self):
        a = MeshServer(self, 0)
        b = MeshServer(self, 1, ["--peer", a.url])
        yield wait_until(lambda: settled([a, b]), [a, b], what="A and B linked")
        alice, alice_ui, alice_id = yield self.registered_client(a.url, 2)
        bob, bob_ui, bob_id = yield self.registered_client(b.url, 3)
        yield until_listed(alice.session, bob_id)
        yield until_listed(bob.session, alice_id)
        # A DM each way: each follows the other, so presence comes (again after a new login).
        yield alice.session.tell(bob_id, "hi")
        yield wait_until(lambda: bob_ui.find(rf"^DM from {alice_id}: hi$"), what="the first DM")
        yield poll_until(lambda: bob_id in alice.session.presence, "bob seen by alice")
        port, data_dir = b.port, b.data_dir
        yield b.stop()
        yield poll_until(lambda: bob_id not in alice.session.presence, "bob gone for alice")
        yield wait_until(lambda: bob_ui.find(r"^\[DISCONNECTED\] "), what="bob's client noticing")
        mark = len(bob_ui.lines)
        # B comes back on the same port with its data: it relinks to A and bob's client logs in again.
        b2 = MeshServer(self, 1, data_dir=data_dir, bind=f"ws://127.0.0.1:{port}")
        yield wait_until(
            lambda: bob_ui.find(rf"^\[RECONNECTED\] logged in again as {bob_id}$", mark), what="relogin"
        )
        yield wait_until(lambda: settled([a, b2]), [a, b2], what="A and B linked again")
        yield poll_until(lambda: bob_id in alice.session.presence, "bob back for alice")
        yield poll_until(lambda: alice_id in bob.session.presence, "alice known to bob again")
        yield alice.session.tell(bob_id, "welcome back")
        yield wait_until(
            lambda: bob_ui.find(rf"^DM from {alice_id}: welcome back$"), what="the DM after the restart"
        )
        yield bob.session.tell(alice_id, "thanks")
        yield wait_until(lambda: alice_ui.find(rf"^DM from {bob_id}: thanks$"), what="the reply")
