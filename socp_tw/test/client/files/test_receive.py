"""Receiving a file: checks, reassembly, completion, failures, flow control."""

from __future__ import annotations

import os

from socp_tw import crypto, wire
from socp_tw.client.files import CHUNK_BYTES, MAX_INCOMING_PER_SENDER
from socp_tw.client.files import chunks as chunks_module
from socp_tw.test.client.files.fakes import ClientFilesBase, ManualWorkers
from socp_tw.test.file_frames import chunk_payload, end_payload, pieces, start_payload
from socp_tw.test.keys import test_key
from socp_tw.testing import SynchronousWorkers


class ReceiverTests(ClientFilesBase):
    def incoming(
        self, data: bytes, file_id: str | None = None, name: str = "in.bin", **extra
    ) -> tuple[str, list]:
        """Push FILE_START; return (file_id, chunk payloads ready to push)."""
        file_id = file_id or wire.new_uuid4()
        ts = 1_700_000_000_000
        self.push(
            "FILE_START",
            self.relayed(start_payload(self.peer_key, file_id, name, data, self.peer, self.me, ts, **extra)),
            ts,
        )
        chunks = [
            self.relayed(
                chunk_payload(
                    self.peer_key, self.my_key.public_key(), file_id, i, piece, self.peer, self.me, ts
                )
            )
            for i, piece in enumerate(pieces(data))
        ]
        return file_id, chunks

    def end(self, file_id: str, count: int, **changes) -> None:
        ts = 1_700_000_000_000
        self.push(
            "FILE_END",
            self.relayed(dict(end_payload(self.peer_key, file_id, count, self.peer, self.me, ts), **changes)),
            ts,
        )

    def partials(self) -> list[str]:
        return sorted(p.name for p in self.download.iterdir() if p.name.startswith(".partial_"))

    def test_out_of_order_and_duplicates(self) -> None:
        data = os.urandom(3 * CHUNK_BYTES + 5)
        file_id, chunks = self.incoming(data, name="report.pdf")
        self.assertEqual(
            self.ui.lines[-1], f"[FILE] receiving report.pdf ({len(data)} bytes) from {self.peer}"
        )
        self.assertEqual(self.partials(), [f".partial_{file_id}"])
        self.assertEqual((self.download / f".partial_{file_id}").stat().st_mode & 0o777, 0o600)
        for index in (3, 1, 1, 0, 2, 0):
            self.push("FILE_CHUNK", chunks[index])
        self.end(file_id, 4)
        target = self.download / f"received_{file_id}"
        self.assertEqual(
            self.ui.lines[-1],
            f"[FILE] received report.pdf from {self.peer} -> {target} ({len(data)} bytes, sha256 ok)",
        )
        self.assertEqual(target.read_bytes(), data)
        self.assertEqual(self.partials(), [])
        self.assertEqual(self.session.files.counters["duplicate_chunks"], 2)
        self.assertEqual(self.session.pins.user_key(self.peer), crypto.encode_public_key(self.peer_key))
        # The same transfer again (a replay) is ignored; the file is not touched.
        self.incoming(data, file_id=file_id)
        self.assertEqual(self.ui.lines[-1].split(" -> ")[0], f"[FILE] received report.pdf from {self.peer}")

    def test_empty_file_and_end_without_signature(self) -> None:
        file_id, _ = self.incoming(b"")
        self.push("FILE_END", self.relayed({"file_id": file_id}))
        self.assertEqual((self.download / f"received_{file_id}").read_bytes(), b"")
        self.assertRegex(self.ui.lines[-1], r"\(0 bytes, sha256 ok\)$")

    def assert_failed(self, file_id: str, reason: str, name: str = "in.bin") -> None:
        self.assertEqual(
            self.ui.lines[-1], f"[FILE] transfer {file_id} ({name}) from {self.peer} failed: {reason}"
        )
        self.assertEqual(self.partials(), [])
        self.assertFalse((self.download / f"received_{file_id}").exists())

    def test_refused_starts(self) -> None:
        data = b"abc"
        ts = 1_700_000_000_000
        good = self.relayed(start_payload(self.peer_key, "f-1", "in.bin", data, self.peer, self.me, ts))
        cases = [
            (dict(good), {"key": test_key(3)}, "invalid server signature"),
            (dict(good), {"to": wire.new_uuid4()}, "not addressed to you"),
            (dict(good, content_sig=good["content_sig"][:-4] + "AAAA"), {}, "invalid signature"),
            (
                self.relayed(start_payload(self.peer_key, "../x", "n", data, self.peer, self.me, ts)),
                {},
                "file_id must be",
            ),
            (dict(good, sha256="xyz"), {}, "malformed (sha256 must be 64 hex digits)"),
            (dict(good, mode="public"), {}, "mode public is not supported (only dm)"),
            (dict(good, size=-1), {}, "malformed (size)"),
            (dict(good, sender_pub=crypto.encode_public_key(test_key(3))), {}, "invalid signature"),
        ]
        for payload, options, reason in cases:
            self.push("FILE_START", payload, ts, **options)
            self.assertIn(reason, self.ui.lines[-1])
            self.assertTrue(self.ui.lines[-1].startswith("[FILE] transfer "), self.ui.lines[-1])
        self.assertEqual(list(self.download.iterdir()), [])
        # A key that differs from the pin.
        self.session.pins.pin_user(self.peer, crypto.encode_public_key(test_key(3)))
        self.push("FILE_START", good, ts)
        self.assertIn("signed by a key different from the one pinned", self.ui.lines[-1])
        self.assertTrue(self.ui.find(rf"THE KEY OF {self.peer} HAS CHANGED"))
        # A final file of that id already there.
        self.session.pins.pin_user(self.peer, crypto.encode_public_key(self.peer_key))
        (self.download / "received_f-2").write_bytes(b"keep me")
        self.push(
            "FILE_START",
            dict(self.relayed(start_payload(self.peer_key, "f-2", "in.bin", data, self.peer, self.me, ts))),
            ts,
        )
        self.assertIn("already exists", self.ui.lines[-1])
        self.assertEqual((self.download / "received_f-2").read_bytes(), b"keep me")

    def test_tampered_chunk_fails(self) -> None:
        data = os.urandom(2 * CHUNK_BYTES)
        file_id, chunks = self.incoming(data)
        self.push("FILE_CHUNK", chunks[0])
        forged = dict(chunks[1], ciphertext=crypto.oaep_encrypt(self.my_key.public_key(), b"x" * CHUNK_BYTES))
        self.push("FILE_CHUNK", forged)
        self.assert_failed(file_id, "chunk 1 rejected: invalid signature")
        self.push("FILE_CHUNK", chunks[1])  # the rest is ignored
        self.end(file_id, 2)
        self.assertEqual(len(self.ui.find("failed")), 1)

    def test_chunk_failures(self) -> None:
        data = os.urandom(CHUNK_BYTES + 10)
        # signed by another server key
        file_id, chunks = self.incoming(data)
        self.push("FILE_CHUNK", chunks[0], key=test_key(3))
        self.assert_failed(file_id, "chunk 0 rejected: invalid server signature")
        # index out of range
        file_id, chunks = self.incoming(data)
        self.push("FILE_CHUNK", dict(chunks[1], index=2))
        self.assert_failed(file_id, "chunk index 2 is out of range")
        # a chunk of the wrong length (a short piece where a full one belongs)
        file_id, _ = self.incoming(data)
        ts = 1_700_000_000_000
        short = self.relayed(
            chunk_payload(self.peer_key, self.my_key.public_key(), file_id, 0, b"abc", self.peer, self.me, ts)
        )
        self.push("FILE_CHUNK", short)
        self.assert_failed(file_id, f"chunk 0 rejected: it carries 3 bytes where {CHUNK_BYTES} were expected")
        # encrypted to someone else
        file_id, _ = self.incoming(data)
        other = self.relayed(
            chunk_payload(
                self.peer_key,
                test_key(3).public_key(),
                file_id,
                0,
                data[:CHUNK_BYTES],
                self.peer,
                self.me,
                ts,
            )
        )
        self.push("FILE_CHUNK", other)
        self.assert_failed(file_id, "chunk 0 rejected: it does not decrypt with your key")

    def test_end_checks(self) -> None:
        data = os.urandom(2 * CHUNK_BYTES)
        file_id, chunks = self.incoming(data)
        self.push("FILE_CHUNK", chunks[0])
        self.end(file_id, 1)
        self.assert_failed(file_id, "incomplete: 1 of 2 chunks arrived (the sender stopped after 1)")
        file_id, chunks = self.incoming(data)
        self.push("FILE_CHUNK", chunks[0])
        self.push("FILE_CHUNK", chunks[1])
        self.end(file_id, 2, chunks=3)
        self.assert_failed(file_id, "FILE_END has an invalid signature")
        # A START that lies about the hash: all chunks arrive, the check at the end fails.
        file_id, chunks = self.incoming(data, digest="0" * 64)
        self.push("FILE_CHUNK", chunks[0])
        self.push("FILE_CHUNK", chunks[1])
        self.end(file_id, 2)
        self.assert_failed(file_id, "sha256 mismatch: the assembled file is not the file announced")

    def test_stall_timeout(self) -> None:
        data = os.urandom(2 * CHUNK_BYTES)
        file_id, chunks = self.incoming(data)
        self.push("FILE_CHUNK", chunks[0])
        self.clock.advance(59)
        self.assertEqual(self.partials(), [f".partial_{file_id}"])
        self.clock.advance(1)
        self.assert_failed(file_id, "timed out: nothing arrived for 60 s (1 of 2 chunks received)")
        self.push("FILE_CHUNK", chunks[1])
        self.end(file_id, 2)
        self.assertEqual(len(self.ui.find("failed")), 1)

    def test_connection_lost_and_limits(self) -> None:
        file_id, _ = self.incoming(b"abc")
        self.session.connection_lost("gone")
        self.assert_failed(file_id, "the connection to the server was lost")
        self.session.connection_made(self.link)
        self.session.logged_in = True
        ids = [self.incoming(b"abc")[0] for _ in range(MAX_INCOMING_PER_SENDER)]
        extra, _ = self.incoming(b"abc")
        self.assertEqual(
            self.ui.lines[-1],
            f"[FILE] transfer {extra} (in.bin) from {self.peer} failed: too many incoming transfers at once",
        )
        self.assertEqual(len(self.partials()), len(ids))
        self.session.shutdown()
        self.assertEqual(self.partials(), [])


class ReceiverFlowControlTests(ClientFilesBase):
    def test_reading_paused_while_many_chunks_wait(self) -> None:
        self.patch(chunks_module, "MAX_DECRYPTS_IN_FLIGHT", 4)  # where the receiver reads it
        workers = ManualWorkers()
        data = os.urandom(6 * CHUNK_BYTES)
        ts = 1_700_000_000_000
        file_id = wire.new_uuid4()
        self.push(
            "FILE_START",
            self.relayed(start_payload(self.peer_key, file_id, "f.bin", data, self.peer, self.me, ts)),
            ts,
        )
        self.session._workers = workers
        for index, piece in enumerate(pieces(data)):
            self.push(
                "FILE_CHUNK",
                self.relayed(
                    chunk_payload(
                        self.peer_key, self.my_key.public_key(), file_id, index, piece, self.peer, self.me, ts
                    )
                ),
            )
        tcp = self.link.transport
        self.assertFalse(tcp.reading)
        self.assertEqual(len(workers.jobs), 6)
        workers.run_all()
        self.assertTrue(tcp.reading)
        self.session._workers = SynchronousWorkers()
        self.push(
            "FILE_END", self.relayed(end_payload(self.peer_key, file_id, 6, self.peer, self.me, ts)), ts
        )
        self.assertEqual((self.download / f"received_{file_id}").read_bytes(), data)


class UnsignedFileTests(ClientFilesBase):
    """docs/INTEROP.md row 4: a file from a client that signs no file frames."""

    def test_unsigned_file_is_received_and_labelled(self) -> None:
        import hashlib

        data = os.urandom(CHUNK_BYTES + 7)
        file_id = wire.new_uuid4()
        start = {"file_id": file_id, "name": "in.bin", "size": len(data), "mode": "dm"}
        start["sha256"] = hashlib.sha256(data).hexdigest()
        self.push("FILE_START", self.relayed(start))
        self.assertEqual(
            self.ui.lines[-1],
            f"[FILE] receiving in.bin ({len(data)} bytes) from {self.peer} (unsigned: sender not verified)",
        )
        for index in range(2):
            piece = data[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES]
            ciphertext = crypto.oaep_encrypt(self.my_key.public_key(), piece)
            self.push(
                "FILE_CHUNK", self.relayed({"file_id": file_id, "index": index, "ciphertext": ciphertext})
            )
        self.push("FILE_END", self.relayed({"file_id": file_id}))
        target = self.download / f"received_{file_id}"
        self.assertEqual(target.read_bytes(), data)
        self.assertTrue(
            self.ui.lines[-1].endswith("sha256 ok, unsigned: sender not verified)"), self.ui.lines
        )
        self.assertIsNone(self.session.pins.user_key(self.peer))  # an unproven key is not pinned

    def test_signed_file_still_needs_signed_chunks(self) -> None:
        data = b"abc"
        file_id = wire.new_uuid4()
        ts = 1_700_000_000_000
        self.push(
            "FILE_START",
            self.relayed(start_payload(self.peer_key, file_id, "in.bin", data, self.peer, self.me, ts)),
            ts,
        )
        ciphertext = crypto.oaep_encrypt(self.my_key.public_key(), data)
        self.push("FILE_CHUNK", self.relayed({"file_id": file_id, "index": 0, "ciphertext": ciphertext}), ts)
        self.assertIn("chunk 0 is malformed (content_sig)", self.ui.lines[-1])
