"""Sending a file (/file): frames, back-pressure, failures."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from twisted.internet.defer import Deferred

from socp_tw import crypto, wire
from socp_tw.client.files import CHUNK_BYTES, chunk_count
from socp_tw.content import file_end_preimage
from socp_tw.test.client.files.fakes import ClientFilesBase
from socp_tw.test.keys import test_key


class SenderTests(ClientFilesBase):
    def send_file(self, data: bytes, name: str = "data.bin") -> Deferred:
        return self.session.send_file(self.peer, str(self.make_file(data, name)))

    def reassemble(self) -> bytes:
        start = self.link.of_type("FILE_START")[-1]
        chunks = [
            f
            for f in self.link.of_type("FILE_CHUNK")
            if f["payload"]["file_id"] == start["payload"]["file_id"]
        ]
        return b"".join(crypto.oaep_decrypt(self.peer_key, c["payload"]["ciphertext"]) for c in chunks)

    def test_frames_for_boundary_sizes(self) -> None:
        for size in (0, 1, CHUNK_BYTES, CHUNK_BYTES + 1, 5 * CHUNK_BYTES - 3):
            self.link.sent.clear()
            data = os.urandom(size)
            self.successResultOf(self.send_file(data))
            start, *chunks, end = self.link.sent
            self.assertEqual([start["type"], end["type"]], ["FILE_START", "FILE_END"])
            p = start["payload"]
            self.assertEqual(
                (p["name"], p["size"], p["sha256"], p["mode"]),
                ("data.bin", size, hashlib.sha256(data).hexdigest(), "dm"),
            )
            self.assertTrue(crypto.verify_payload(self.my_key.public_key(), p, start["sig"]))
            preimage = crypto.file_start_preimage(
                p["file_id"], "data.bin", size, p["sha256"], self.me, self.peer, start["ts"]
            )
            self.assertTrue(crypto.verify_content_sig(self.my_key.public_key(), preimage, p["content_sig"]))
            self.assertEqual(len(chunks), chunk_count(size))
            for index, chunk in enumerate(chunks):
                c = chunk["payload"]
                self.assertEqual(
                    (chunk["to"], c["index"], c["file_id"], chunk["sig"]),
                    (self.peer, index, p["file_id"], ""),
                )
                pre = crypto.file_chunk_preimage(
                    c["ciphertext"], c["file_id"], index, self.me, self.peer, chunk["ts"]
                )
                self.assertTrue(crypto.verify_content_sig(self.my_key.public_key(), pre, c["content_sig"]))
            self.assertEqual(self.reassemble(), data)
            e = end["payload"]
            self.assertEqual(e["chunks"], len(chunks))
            pre = file_end_preimage(e["file_id"], e["chunks"], self.me, self.peer, end["ts"])
            self.assertTrue(crypto.verify_content_sig(self.my_key.public_key(), pre, e["content_sig"]))
            self.assertEqual(self.ui.lines[-1], f"[FILE] sent data.bin to {self.peer} ({size} bytes)")
        self.assertEqual(self.ui.statuses, [])  # not a terminal: no progress line
        self.assertIsNone(self.link.transport.producer)

    def test_backpressure_and_stall(self) -> None:
        """A full transport buffer stops the sender; it resumes when drained, gives up after a stall."""
        data = os.urandom(20 * CHUNK_BYTES)
        tcp = self.link.transport

        def fill(frame: dict) -> None:
            if frame["type"] == "FILE_CHUNK" and frame["payload"]["index"] == 4:
                tcp.producer.pauseProducing()

        self.link.on_send = fill
        done = self.send_file(data)
        self.assertNoResult(done)
        sent = len(self.link.of_type("FILE_CHUNK"))
        self.assertLessEqual(sent, 5 + self.session.files.window)
        self.clock.advance(30)
        self.assertEqual(len(self.link.of_type("FILE_CHUNK")), sent)
        self.link.on_send = None
        tcp.producer.resumeProducing()
        self.successResultOf(done)
        self.assertEqual(self.reassemble(), data)
        self.assertIsNone(tcp.producer)
        # Never drained: the transfer fails after the stall timeout, and FILE_END tells how far it got.
        self.link.sent.clear()
        self.link.on_send = fill
        done = self.send_file(data, "stuck.bin")
        self.clock.advance(60)
        self.successResultOf(done)
        self.assertEqual(
            self.ui.lines[-1],
            "[FILE] sending stuck.bin failed: stalled: the connection accepted nothing for 60 s",
        )
        self.assertEqual(self.link.sent[-1]["payload"]["chunks"], len(self.link.of_type("FILE_CHUNK")))
        self.assertIsNone(tcp.producer)

    def test_server_error_fails_the_transfer_once(self) -> None:
        data = os.urandom(10 * CHUNK_BYTES)
        tcp = self.link.transport
        file_ids: list[str] = []

        def refuse(frame: dict) -> None:
            if frame["type"] == "FILE_START":
                file_ids.append(frame["payload"]["file_id"])
            if frame["type"] == "FILE_CHUNK" and frame["payload"]["index"] == 2:
                tcp.producer.pauseProducing()
                for _ in range(3):
                    payload = {
                        "code": "FILE_TOO_LARGE",
                        "detail": "too big",
                        "msg_ref": "FILE_START",
                        "file_id": file_ids[0],
                    }
                    self.push("ERROR", payload)
                tcp.producer.resumeProducing()

        self.link.on_send = refuse
        self.successResultOf(self.send_file(data, "x.bin"))
        self.assertEqual(self.ui.find("x.bin"), ["[FILE] sending x.bin failed: FILE_TOO_LARGE: too big"])
        self.assertLess(len(self.link.of_type("FILE_CHUNK")), 10)
        # Echoes after the end are swallowed; an error about an unknown file is shown plainly.
        self.push(
            "ERROR", {"code": "FILE_UNKNOWN", "detail": "d", "msg_ref": "FILE_CHUNK", "file_id": file_ids[0]}
        )
        self.push(
            "ERROR", {"code": "FILE_UNKNOWN", "detail": "d", "msg_ref": "FILE_CHUNK", "file_id": "other"}
        )
        self.assertEqual(self.ui.lines[-1], "[ERROR] FILE_UNKNOWN: d")
        self.assertEqual(len(self.ui.find("x.bin")), 1)
        # A remote server's report names the recipient only: it fails (or reports) the transfer to them.
        self.link.on_send = None
        self.successResultOf(self.send_file(b"hello", "y.bin"))
        self.push(
            "ERROR", {"code": "INVALID_SIG", "detail": "nope", "msg_ref": "FILE_CHUNK", "user_id": self.peer}
        )
        self.assertEqual(self.ui.lines[-1], f"[FILE] sending y.bin to {self.peer} failed: INVALID_SIG: nope")

    def test_local_failures(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        self.successResultOf(self.session.send_file(self.peer, str(folder / "missing.bin")))
        self.assertEqual(
            self.ui.lines[-1], "[FILE] sending missing.bin failed: cannot open it (No such file or directory)"
        )
        self.successResultOf(self.session.send_file(self.peer, str(folder)))
        self.assertRegex(self.ui.lines[-1], r"^\[FILE\] sending .* failed: not a regular file$")
        stranger = wire.new_uuid4()
        self.session.pins.pin_user(stranger, crypto.encode_public_key(test_key(3)))
        self.session._seen_keys[stranger] = crypto.encode_public_key(test_key(4))
        self.successResultOf(self.session.send_file(stranger, str(self.make_file(b"a"))))
        self.assertEqual(self.ui.lines[-1], f"[FILE] sending data.bin failed: the key of {stranger} changed")
        self.session.logged_in = self.session._want_online = False
        self.successResultOf(self.session.send_file(self.peer, str(self.make_file(b"a"))))
        self.assertEqual(self.ui.lines[-1], "[ERROR] not logged in: use /register or /login <user_uuid>")
        self.assertEqual(self.link.sent, [])

    def test_file_changing_during_the_transfer(self) -> None:
        path = self.make_file(os.urandom(6 * CHUNK_BYTES), "moving.bin")
        tcp = self.link.transport
        self.link.on_send = lambda f: (
            f["type"] == "FILE_CHUNK" and f["payload"]["index"] == 1 and tcp.producer.pauseProducing()
        )
        done = self.session.send_file(self.peer, str(path))
        path.write_bytes(b"short")
        self.link.on_send = None
        tcp.producer.resumeProducing()
        self.successResultOf(done)
        self.assertRegex(
            self.ui.lines[-1], r"^\[FILE\] sending moving\.bin failed: cannot read it \(the file is shorter"
        )
        # Same size, other bytes: the second-pass hash catches it.
        path = self.make_file(b"a" * (3 * CHUNK_BYTES), "swapped.bin")
        self.link.on_send = lambda f: f["type"] == "FILE_START" and path.write_bytes(b"b" * (3 * CHUNK_BYTES))
        self.successResultOf(self.session.send_file(self.peer, str(path)))
        self.assertEqual(
            self.ui.lines[-1], "[FILE] sending swapped.bin failed: the file changed while it was being sent"
        )

    def test_connection_lost(self) -> None:
        tcp = self.link.transport
        self.link.on_send = lambda f: f["type"] == "FILE_CHUNK" and tcp.producer.pauseProducing()
        done = self.send_file(os.urandom(4 * CHUNK_BYTES))
        self.session.connection_lost("boom")
        self.successResultOf(done)
        self.assertEqual(
            self.ui.lines[-1], "[FILE] sending data.bin failed: the connection to the server was lost (boom)"
        )
