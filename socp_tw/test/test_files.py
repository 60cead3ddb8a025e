"""File transfer, unit level: the user side's read pausing, FILE_END content checks, and the
client's sender and receiver (client/files.py).  The server's FileRelay is tested in
socp_tw/test/services/files/.

Client side: a real ClientSession whose link records frames and whose "server" is
test_key(0) signing frames by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import content, crypto, wire
from socp_tw.client import files as files_module
from socp_tw.client.files import CHUNK_BYTES, Progress, chunk_count, display_name
from socp_tw.client.pins import PinStore
from socp_tw.client.session import ClientSession
from socp_tw.content import file_end_preimage
from socp_tw.services import users as users_module
from socp_tw.test.file_frames import FakeTCP, chunk_payload, end_payload, pieces, start_payload
from socp_tw.test.keys import test_key, vector_key
from socp_tw.test.test_users import UserSideTestBase
from socp_tw.testing import SynchronousWorkers

# ================================================================== content.py


class FileEndContentTests(SynchronousTestCase):
    ALICE, BOB, TS = wire.new_uuid4(), wire.new_uuid4(), 1_700_000_000_000

    def test_optional_fields_relayed_only_when_present(self) -> None:
        self.assertEqual(content.extract_fields("FILE_END", {"file_id": "f"}), {"file_id": "f"})
        fields = content.extract_fields("FILE_END", {"file_id": "f", "chunks": 3, "content_sig": "s", "x": 1})
        self.assertEqual(fields, {"file_id": "f", "chunks": 3, "content_sig": "s"})
        with self.assertRaises(wire.BadFieldType):
            content.extract_fields("FILE_END", {"file_id": "f", "chunks": -1})

    def test_file_end_signature(self) -> None:
        key = vector_key("alice")
        pub = crypto.encode_public_key(key)
        fields = end_payload(key, "f1", 2, self.ALICE, self.BOB, self.TS)
        content.verify_user_content("FILE_END", fields, self.ALICE, self.BOB, self.TS, pub)
        content.verify_user_content(
            "FILE_END", {"file_id": "f1"}, self.ALICE, self.BOB, self.TS, pub
        )  # tolerant
        for bad in (
            dict(fields, chunks=3),
            dict(fields, file_id="f2"),
            {"file_id": "f1", "content_sig": fields["content_sig"]},
        ):
            with self.assertRaises(content.ContentError):
                content.verify_user_content("FILE_END", bad, self.ALICE, self.BOB, self.TS, pub)
        with self.assertRaises(content.ContentError):  # another sender, or another ts
            content.verify_user_content("FILE_END", fields, self.BOB, self.ALICE, self.TS, pub)
        self.assertEqual(
            file_end_preimage("f1", 2, self.ALICE, self.BOB, self.TS),
            f"SOCP-FILE-END|f1|2|{self.ALICE}|{self.BOB}|{self.TS}".encode(),
        )


class UserLinkPauseTests(UserSideTestBase):
    """users.py stops reading a link whose backlog is long, and reads again once it shrinks."""

    def test_pause_and_resume(self) -> None:
        user_id = wire.new_uuid4()
        link = self.online(user_id, vector_key("alice"), register=False)
        link.transport = tcp = FakeTCP()
        gate: list[Deferred] = []
        handled: list[int] = []

        def slow(link, user, envelope) -> Deferred:
            handled.append(envelope.payload["n"])
            gate.append(Deferred())
            return gate[-1]

        self.users.register_user_frame("SLOW_TEST", slow)
        for n in range(users_module.BACKLOG_PAUSE + 1):
            self.send(link, "SLOW_TEST", {"n": n}, from_=user_id)
        self.assertFalse(tcp.reading)
        self.assertEqual(handled, [0])
        while len(handled) < users_module.BACKLOG_PAUSE // 2 + 1:
            self.assertFalse(tcp.reading)
            gate[-1].callback(None)
        self.assertTrue(tcp.reading)
        self.assertEqual(tcp.pauses, 1)
        while len(handled) <= users_module.BACKLOG_PAUSE:
            gate[-1].callback(None)
        self.assertEqual(handled, list(range(users_module.BACKLOG_PAUSE + 1)))
        self.assertEqual(self.take(link), [])


# ================================================================== the client


class RecordingUI:
    def __init__(self, interactive: bool = False) -> None:
        self.lines: list[str] = []
        self.statuses: list[str] = []
        self.interactive = interactive

    def show(self, text: str) -> None:
        self.lines.extend(text.split("\n"))

    def status(self, text: str) -> None:
        self.statuses.append(text)

    def ask_password(self, prompt: str) -> Deferred:
        raise AssertionError("no password here")

    def find(self, pattern: str) -> list[str]:
        return [line for line in self.lines if re.search(pattern, line)]


class RecordingLink:
    """The session's WebSocket: records frames; ``on_send`` may react (e.g. fill the buffer)."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.transport = FakeTCP()
        self.on_send: Any = None

    def send(self, data: bytes) -> None:
        self.sent.append(json.loads(data))
        if self.on_send is not None:
            self.on_send(self.sent[-1])

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        pass

    def of_type(self, ftype: str) -> list[dict]:
        return [f for f in self.sent if f["type"] == ftype]


class ClientFilesBase(SynchronousTestCase):
    interactive = False

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.ui = RecordingUI(self.interactive)
        self.download = Path(self.mktemp())
        self.download.mkdir(parents=True)
        self.me, self.peer, self.server_id = wire.new_uuid4(), wire.new_uuid4(), wire.new_uuid4()
        self.my_key, self.peer_key, self.server_key = vector_key("bob"), vector_key("alice"), test_key(0)
        self.session = ClientSession(
            self.ui,
            PinStore(self.mktemp()),
            "ws://127.0.0.1:9",
            workers=SynchronousWorkers(),
            clock=self.clock,
            download_dir=str(self.download),
            file_stall_timeout=60.0,
        )
        self.link = RecordingLink()
        self.session.connection_made(self.link)
        s = self.session
        s.user_id, s._key, s._pub = self.me, self.my_key, crypto.encode_public_key(self.my_key)
        s.server_id, s._server_key = self.server_id, self.server_key.public_key()
        s.logged_in = s._want_online = True
        s._seen_keys[self.peer] = crypto.encode_public_key(self.peer_key)
        self.addCleanup(self.session.shutdown)

    def make_file(self, data: bytes, name: str = "data.bin") -> Path:
        folder = Path(self.mktemp())
        folder.mkdir(parents=True)
        (folder / name).write_bytes(data)
        return folder / name

    # frames "from the server"
    def push(
        self, ftype: str, payload: dict, ts: int = 1_700_000_000_000, key=None, to: str | None = None
    ) -> None:
        sig = crypto.sign_payload(key or self.server_key, payload)
        self.session.frame_received(wire.Envelope(ftype, self.server_id, to or self.me, ts, payload, sig))

    def relayed(self, payload: dict) -> dict:
        return dict(payload, sender=self.peer, sender_pub=crypto.encode_public_key(self.peer_key))


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


class ProgressTests(ClientFilesBase):
    interactive = True

    def test_progress_line_on_a_terminal(self) -> None:
        progress = Progress(self.ui, self.clock, "[FILE] sending a.bin", 10 * 1024)
        progress.update(0, force=True)
        self.clock.advance(2)
        progress.update(5 * 1024)
        progress.update(6 * 1024)  # too soon: skipped
        self.clock.advance(0.25)
        progress.update(6 * 1024)
        self.assertEqual(
            self.ui.statuses,
            [
                "[FILE] sending a.bin: 0% 0.0 KiB/s ETA ?",
                "[FILE] sending a.bin: 50% 2.5 KiB/s ETA 2s",
                "[FILE] sending a.bin: 60% 2.7 KiB/s ETA 2s",
            ],
        )

    def test_send_shows_progress_then_the_final_line(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        (folder / "p.bin").write_bytes(os.urandom(3 * CHUNK_BYTES))
        self.successResultOf(self.session.send_file(self.peer, str(folder / "p.bin")))
        self.assertTrue(self.ui.statuses)
        self.assertTrue(all(s.startswith("[FILE] sending p.bin: ") for s in self.ui.statuses))
        self.assertEqual(self.ui.lines[-1], f"[FILE] sent p.bin to {self.peer} ({3 * CHUNK_BYTES} bytes)")

    def test_display_name_escapes(self) -> None:
        self.assertEqual(display_name("../../x\x1b[2J\nz\u202e"), "../../x\\x1b[2J\\nz\\u202e")
        self.assertEqual(len(display_name("a" * 500)), 200)


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
        ids = [self.incoming(b"abc")[0] for _ in range(files_module.MAX_INCOMING_PER_SENDER)]
        extra, _ = self.incoming(b"abc")
        self.assertEqual(
            self.ui.lines[-1],
            f"[FILE] transfer {extra} (in.bin) from {self.peer} failed: too many incoming transfers at once",
        )
        self.assertEqual(len(self.partials()), len(ids))
        self.session.shutdown()
        self.assertEqual(self.partials(), [])


class ManualWorkers:
    """Workers whose jobs run only when the test says so."""

    size = 1

    def __init__(self) -> None:
        self.jobs: list[tuple[Deferred, Any, tuple]] = []

    def run(self, f, *args, **kwargs) -> Deferred:
        d: Deferred = Deferred()
        self.jobs.append((d, f, args))
        return d

    def run_all(self) -> None:
        while self.jobs:
            d, f, args = self.jobs.pop(0)
            try:
                d.callback(f(*args))
            except Exception as e:
                d.errback(e)


class ReceiverFlowControlTests(ClientFilesBase):
    def test_reading_paused_while_many_chunks_wait(self) -> None:
        self.patch(files_module, "MAX_DECRYPTS_IN_FLIGHT", 4)
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


class ConsoleFileCommandTests(SynchronousTestCase):
    def console(self, interactive: bool = False):
        from twisted.internet.testing import StringTransport

        from socp_tw.client.console import Console

        class Commands:
            def __init__(self) -> None:
                self.calls: list[tuple[str, str]] = []

            def send_file(self, user_id: str, path: str) -> None:
                self.calls.append((user_id, path))

        commands = Commands()
        console = Console(commands, interactive=interactive)
        transport = StringTransport()
        console.makeConnection(transport)
        return console, commands, transport

    def test_file_command(self) -> None:
        console, commands, transport = self.console()
        uid = wire.new_uuid4()
        console.dataReceived(
            f"/file {uid.upper()} my dir/a file.txt \n/file {uid}\n/file nope x\n/help\n".encode()
        )
        self.assertEqual(commands.calls, [(uid, "my dir/a file.txt")])
        out = transport.value().decode()
        self.assertEqual(out.count("Usage: /file <user_uuid> <path>\n"), 2)
        self.assertIn("  /file <user_uuid> <path>   send a file", out)

    def test_status_line_only_on_a_terminal(self) -> None:
        console, _, transport = self.console(interactive=True)
        transport.clear()
        console.status("[FILE] sending a: 1% 2.0 KiB/s ETA 3s")
        self.assertEqual(transport.value(), b"\r\x1b[K[FILE] sending a: 1% 2.0 KiB/s ETA 3s")
        console.show("done")
        self.assertTrue(transport.value().endswith(b"\r\x1b[Kdone\n> "))
        console, _, transport = self.console(interactive=False)
        transport.clear()
        console.status("x")
        self.assertEqual(transport.value(), b"")
