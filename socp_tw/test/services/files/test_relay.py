"""The server's FileRelay, unit level: limits, content checks, pacing and timeouts.

The real UserSide, Presence, Router and signer with fake links, a fake mesh, synchronous
workers and a task.Clock.
"""

from __future__ import annotations

import os

from socp_tw import crypto, wire
from socp_tw.services.files import CHUNK_BYTES, FileRelay
from socp_tw.test.file_frames import FakeTCP, chunk_payload, end_payload, pieces, start_payload
from socp_tw.test.keys import vector_key
from socp_tw.test.services.users.test_users import UserSideTestBase
from socp_tw.transport.backlog import send_backlog


class RelayTestBase(UserSideTestBase):
    max_file_bytes = 10_000

    def setUp(self) -> None:
        super().setUp()
        self.relay = FileRelay(
            self.users,
            self.presence,
            self.router,
            self.workers,
            self.peers,
            clock=self.clock,
            max_file_bytes=self.max_file_bytes,
            frame_rate=1000.0,
            frame_burst=1000.0,
            idle_timeout=30.0,
        )
        self.alice_id, self.bob_id = wire.new_uuid4(), wire.new_uuid4()
        self.alice_key, self.bob_key = vector_key("alice"), vector_key("bob")
        self.alice = self.online(self.alice_id, self.alice_key, register=False)
        self.bob = self.online(self.bob_id, self.bob_key, register=False)
        self.take(self.alice), self.take(self.bob)

    def now(self) -> int:
        return int(self.clock.seconds() * 1000)

    def file_send(self, type_: str, payload: dict, to: str | None = None, link=None) -> None:
        self.send(link or self.alice, type_, payload, from_=self.alice_id, to=to or self.bob_id)

    def start(self, file_id: str, data: bytes, **extra) -> None:
        payload = start_payload(
            self.alice_key, file_id, "a.txt", data, self.alice_id, self.bob_id, self.now(), **extra
        )
        self.file_send("FILE_START", payload)

    def chunk(self, file_id: str, index: int, piece: bytes) -> None:
        payload = chunk_payload(
            self.alice_key,
            self.bob_key.public_key(),
            file_id,
            index,
            piece,
            self.alice_id,
            self.bob_id,
            self.now(),
        )
        self.file_send("FILE_CHUNK", payload)

    def end(self, file_id: str, chunks: int) -> None:
        self.file_send(
            "FILE_END", end_payload(self.alice_key, file_id, chunks, self.alice_id, self.bob_id, self.now())
        )

    def file_error(self, code: str, file_id: str | None) -> dict:
        payload = self.error(self.alice, code)
        self.assertEqual(payload.get("file_id"), file_id, payload)
        self.assertTrue(payload["msg_ref"].startswith("FILE_"), payload)
        return payload


class RelayTests(RelayTestBase):
    def test_transfer_routed_in_order_then_forgotten(self) -> None:
        data = os.urandom(CHUNK_BYTES + 10)
        self.start("f1", data)
        for index, piece in enumerate(pieces(data)):
            self.chunk("f1", index, piece)
        self.assertEqual(len(self.relay), 1)
        self.end("f1", 2)
        frames = self.take(self.bob)
        self.assertEqual([f["type"] for f in frames], ["FILE_START", "FILE_CHUNK", "FILE_CHUNK", "FILE_END"])
        self.assertEqual([f["payload"].get("index") for f in frames], [None, 0, 1, None])
        for frame in frames:  # delivered as sent, plus who sent it
            self.assertEqual(frame["payload"]["sender"], self.alice_id)
            self.assertEqual(frame["payload"]["sender_pub"], crypto.encode_public_key(self.alice_key))
        self.assertEqual(frames[3]["payload"]["chunks"], 2)
        self.assertEqual(self.take(self.alice), [])
        self.assertEqual(len(self.relay), 0)
        self.assertEqual(self.relay.counters["ended"], 1)

    def test_empty_file_has_no_chunks(self) -> None:
        self.start("f0", b"")
        self.chunk("f0", 0, b"x")
        payload = self.file_error("BAD_FIELD", "f0")
        self.assertIn("an empty file has no chunks", payload["detail"])
        self.end("f0", 0)
        self.assertEqual([f["type"] for f in self.take(self.bob)], ["FILE_START", "FILE_END"])

    def test_oversize_refused_with_the_limit(self) -> None:
        self.start("big", b"x" * (self.max_file_bytes + 1))
        payload = self.file_error("FILE_TOO_LARGE", "big")
        self.assertEqual(
            payload["detail"], "file is 10001 bytes; this server relays files of at most 10000 bytes"
        )
        self.assertEqual(payload["msg_ref"], "FILE_START")
        self.chunk("big", 0, b"x")
        self.file_error("FILE_UNKNOWN", "big")
        self.assertEqual(self.take(self.bob), [])
        self.start("ok", b"x" * self.max_file_bytes)
        self.assertEqual(self.take(self.alice), [])

    def test_indexes_and_counts_bounded(self) -> None:
        data = b"y" * (2 * CHUNK_BYTES)
        self.start("f1", data)
        self.chunk("f1", 2, b"z")
        self.assertIn("out of range", self.file_error("BAD_FIELD", "f1")["detail"])
        self.chunk("f1", 0, data[:CHUNK_BYTES])
        self.chunk("f1", 0, data[:CHUNK_BYTES])  # a duplicate still counts
        self.chunk("f1", 1, data[CHUNK_BYTES:])
        self.assertIn("already had its 2 chunks", self.file_error("BAD_FIELD", "f1")["detail"])
        self.assertEqual(self.relay.counters["routed.FILE_CHUNK"], 2)

    def test_bad_frames(self) -> None:
        data = b"abc"
        self.start("f1", data, mode="public")
        self.assertIn("mode", self.file_error("BAD_FIELD", "f1")["detail"])
        self.start("f1", data, sender_pub=crypto.encode_public_key(self.bob_key))
        self.file_error("INVALID_SIG", "f1")
        forged = start_payload(self.bob_key, "f1", "a.txt", data, self.alice_id, self.bob_id, self.now())
        self.file_send("FILE_START", forged)
        self.file_error("INVALID_SIG", "f1")
        self.file_send("FILE_START", {"file_id": "f1", "name": "n"})
        self.file_error("MISSING_FIELD", "f1")
        self.file_send(
            "FILE_START",
            start_payload(self.alice_key, "f1", "n", data, self.alice_id, "*", self.now()),
            to="*",
        )
        self.file_error("BAD_UUID", "f1")
        self.assertEqual(self.take(self.bob), [])
        # A chunk whose content_sig fails is refused; the transfer stays open.
        self.start("f2", data)
        payload = chunk_payload(
            self.alice_key, self.bob_key.public_key(), "f2", 0, data, self.alice_id, self.bob_id, self.now()
        )
        payload["ciphertext"] = crypto.oaep_encrypt(self.bob_key.public_key(), b"other")
        self.file_send("FILE_CHUNK", payload)
        self.file_error("INVALID_SIG", "f2")
        self.chunk("f2", 0, data)
        # FILE_END: a bad content_sig is refused, a missing one accepted (other implementations).
        bad_end = end_payload(self.alice_key, "f2", 9, self.alice_id, self.bob_id, self.now())
        bad_end["chunks"] = 1
        self.file_send("FILE_END", bad_end)
        self.file_error("INVALID_SIG", "f2")
        self.file_send("FILE_END", {"file_id": "f2"})
        self.assertEqual([f["type"] for f in self.take(self.bob)], ["FILE_START", "FILE_CHUNK", "FILE_END"])
        # A chunk to someone else than the transfer's recipient.
        self.start("f3", data)
        self.file_send(
            "FILE_CHUNK",
            chunk_payload(
                self.alice_key, self.bob_key.public_key(), "f3", 0, data, self.alice_id, self.alice_id, 1
            ),
            to=self.alice_id,
        )
        self.assertIn("goes to", self.file_error("BAD_FIELD", "f3")["detail"])

    def test_duplicate_id_and_too_many_transfers(self) -> None:
        self.start("f1", b"a")
        self.start("f1", b"a")
        self.assertIn("already in progress", self.file_error("BAD_FIELD", "f1")["detail"])
        for n in range(2, self.relay.max_transfers_per_user + 1):
            self.start(f"f{n}", b"a")
        self.start("one-more", b"a")
        self.assertIn("at most 4 file transfers", self.file_error("RATE_LIMITED", "one-more")["detail"])
        self.end("f1", 0)  # frees a place (an incomplete end is relayed: the receiver reports it)
        self.start("one-more", b"a")
        self.assertEqual(self.take(self.alice), [])
        self.assertEqual(self.relay.counters["ended_incomplete"], 1)

    def test_stalled_transfer_times_out(self) -> None:
        self.start("f1", b"a" * 1000)
        self.chunk("f1", 0, b"a" * CHUNK_BYTES)
        self.clock.advance(29)
        self.chunk("f1", 1, b"a" * CHUNK_BYTES)  # activity restarts the timer
        self.clock.advance(29)
        self.assertEqual(len(self.relay), 1)
        self.clock.advance(1)
        payload = self.file_error("TIMEOUT", "f1")
        self.assertEqual(
            payload["detail"],
            f"file transfer f1 to {self.bob_id} stalled: nothing for 30 s after 2 of 3 chunks; dropped",
        )
        self.assertEqual(len(self.relay), 0)
        self.chunk("f1", 2, b"a" * 108)
        self.file_error("FILE_UNKNOWN", "f1")

    def test_sender_offline_drops_its_transfers(self) -> None:
        self.start("f1", b"a")
        self.close_link(self.alice)
        self.assertEqual(len(self.relay), 0)
        self.assertEqual(self.relay.counters["dropped.sender_offline"], 1)
        self.clock.advance(60)  # no timer left behind
        self.assertEqual(
            self.clock.getDelayedCalls(), [c for c in self.clock.getDelayedCalls() if c.active()]
        )

    def test_recipient_gone(self) -> None:
        self.start("f1", b"a" * 500)
        self.close_link(self.bob)
        self.assertEqual([f["type"] for f in self.take(self.alice)], ["USER_REMOVE"])
        self.chunk("f1", 0, b"a" * CHUNK_BYTES)
        self.assertIn("not online", self.file_error("USER_NOT_FOUND", "f1")["detail"])
        self.assertEqual(len(self.relay), 0)
        self.start("f2", b"a")
        self.file_error("USER_NOT_FOUND", "f2")

    def test_remote_recipient_gets_server_deliver(self) -> None:
        carol = wire.new_uuid4()
        self.presence.user_online_remote(
            carol, self.peers_server(), crypto.encode_public_key(self.bob_key), {}
        )
        payload = start_payload(self.alice_key, "f1", "a.txt", b"hi", self.alice_id, carol, self.now())
        self.file_send("FILE_START", payload, to=carol)
        ((_, frame),) = self.peers.sent_frames()
        self.assertEqual(frame["type"], "SERVER_DELIVER")
        self.assertEqual(frame["payload"]["type"], "FILE_START")
        self.assertEqual(frame["payload"]["file_id"], "f1")

    def peers_server(self) -> str:
        return self.peers.connected_servers()[0]


class RelayPacingTests(RelayTestBase):
    def test_rate_slows_the_sender_down(self) -> None:
        self.relay.pacer.rate.rate, self.relay.pacer.rate.burst = 10.0, 2.0
        self.relay.pacer.rate.forget(self.alice_id)
        data = b"q" * (3 * CHUNK_BYTES)
        self.start("f1", data)
        self.chunk("f1", 0, data[:CHUNK_BYTES])
        self.chunk("f1", 1, data[CHUNK_BYTES : 2 * CHUNK_BYTES])  # waits for a token
        self.chunk("f1", 2, data[2 * CHUNK_BYTES :])  # waits behind it, in order
        self.assertEqual([f["type"] for f in self.take(self.bob)], ["FILE_START", "FILE_CHUNK"])
        self.clock.advance(0.15)
        self.assertEqual([f["payload"]["index"] for f in self.take(self.bob)], [1])
        self.clock.advance(0.1)
        self.assertEqual([f["payload"]["index"] for f in self.take(self.bob)], [2])
        self.assertEqual(self.take(self.alice), [])  # slowed, never refused
        self.assertGreaterEqual(self.relay.counters["throttled"], 2)

    def test_waits_while_the_next_hop_is_full(self) -> None:
        self.bob.transport = tcp = FakeTCP()
        tcp.dataBuffer = b"x" * (self.relay.max_send_buffer + 1)
        self.assertEqual(send_backlog(self.bob), self.relay.max_send_buffer + 1)
        self.start("f1", b"a")
        self.assertEqual(self.take(self.bob), [])
        self.clock.advance(1)
        self.assertEqual(self.take(self.bob), [])
        tcp.dataBuffer = b""
        self.clock.advance(0.05)
        self.assertEqual([f["type"] for f in self.take(self.bob)], ["FILE_START"])
        # A FILE_START waits at most the idle timeout, then gives up with TIMEOUT (meanwhile f1,
        # whose sender sent nothing more, timed out too).
        tcp.dataBuffer = b"x" * (self.relay.max_send_buffer + 1)
        self.start("f2", b"a")
        self.clock.pump([0.5] * 70)
        errors = [f["payload"] for f in self.take(self.alice)]
        codes = sorted((e["code"], e["file_id"]) for e in errors)
        self.assertEqual(codes, [("TIMEOUT", "f1"), ("TIMEOUT", "f2")])
        self.assertIn("not draining", next(e["detail"] for e in errors if e["file_id"] == "f2"))
        # A chunk waiting on a full hop ends with its transfer's idle timer.
        tcp.dataBuffer = b""
        self.start("f3", b"a")
        tcp.dataBuffer = b"x" * (self.relay.max_send_buffer + 1)
        self.chunk("f3", 0, b"a")
        self.clock.pump([1] * 31)
        self.assertIn("stalled", self.file_error("TIMEOUT", "f3")["detail"])
        self.assertEqual(len(self.relay), 0)
        self.assertEqual([f["type"] for f in self.take(self.bob)], ["FILE_START"])

    def test_send_backlog_reads_tls_wrappers_and_unknowns(self) -> None:
        class TLS:
            _appSendBuffer = [b"abc", b"de"]
            transport = FakeTCP()

        class Link:
            transport = TLS()

        Link.transport.transport._tempDataLen = 7
        self.assertEqual(send_backlog(Link()), 12)
        self.assertEqual(send_backlog(None), 0)
        self.assertEqual(send_backlog(object()), 0)
