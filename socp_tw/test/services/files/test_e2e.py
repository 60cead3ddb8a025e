"""File transfer end to end: two real servers linked with --peer, real clients, real files.

Alice is on server A, Bob on server B (``--max-file-bytes 100000``), so every file crosses
the mesh.  Hostile frames are written straight onto a client's WebSocket (a sender
that does not follow our client's rules) or fed into a client as if its server had sent
them (a compromised path).
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from socp_tw import crypto, wire
from socp_tw.auth.scrypt import TEST_SCRYPT
from socp_tw.client.app import ClientApp
from socp_tw.client.files import CHUNK_BYTES
from socp_tw.content import file_end_preimage
from socp_tw.test.keys import test_key
from socp_tw.test.servers import MeshServer
from socp_tw.test.ui import PASSWORD, RecordingUI
from socp_tw.test.waiting import poll_until, until_listed, wait_until

ALICE_KEY, BOB_KEY = 1, 2
BOB_SERVER_MAX = 100_000


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class FileTransferE2E(TestCase):
    timeout = 180

    @inlineCallbacks
    def setUp(self):
        self.server_a = MeshServer(self, 0)
        self.server_b = MeshServer(
            self, 4, extra_args=["--peer", self.server_a.url, "--max-file-bytes", str(BOB_SERVER_MAX)]
        )
        self.alice, self.alice_ui, self.alice_id, self.alice_dir = yield self.client(self.server_a, ALICE_KEY)
        self.bob, self.bob_ui, self.bob_id, self.bob_dir = yield self.client(self.server_b, BOB_KEY)
        yield until_listed(self.alice.session, self.bob_id)
        yield until_listed(self.bob.session, self.alice_id)

    @inlineCallbacks
    def client(self, server, key_index: int, stall_timeout: float = 60.0):
        ui = RecordingUI([PASSWORD, PASSWORD])
        download = Path(self.mktemp())
        download.mkdir(parents=True)
        app = ClientApp(
            server.url,
            self.mktemp(),
            ui,
            reactor,
            scrypt_params=TEST_SCRYPT,
            key_factory=lambda: test_key(key_index),
            retry_policy=lambda attempt: 0.1,
            download_dir=str(download),
            file_stall_timeout=stall_timeout,
        )
        app.startService()
        self.addCleanup(app.quit)
        yield app.connection.when_open()
        yield app.session.register()
        user_id = ui.find(r"^\[LOGIN SUCCESS\] ").split()[-1]
        return app, ui, user_id, download

    def make_file(self, name: str, size: int) -> Path:
        folder = Path(self.mktemp())
        folder.mkdir(parents=True)
        path = folder / name
        path.write_bytes(os.urandom(size))
        return path

    @inlineCallbacks
    def received(self, name: str, path: Path, what: str):
        """Wait for Bob's exact success line for ``path``; return the received file's path."""
        pattern = (
            rf"^\[FILE\] received {re.escape(name)} from {self.alice_id} -> (.+/received_[0-9a-f-]+) "
            rf"\({path.stat().st_size} bytes, sha256 ok\)$"
        )
        line = yield wait_until(lambda: self.bob_ui.find(pattern), what=what, timeout=120)
        return Path(re.match(pattern, line).group(1))

    # ------------------------------------------------------------------ honest transfers

    @inlineCallbacks
    def test_sizes_arrive_byte_identical_across_two_servers(self):
        """0, 1, 446, 447 bytes and 20 chunks with a short last one (more than the sender's window):
        byte-identical, exact lines on both sides, no leftovers.  Large files are for
        bench/file_throughput.py (1 MiB), not the suite."""
        for size in (0, 1, CHUNK_BYTES, CHUNK_BYTES + 1, 20 * CHUNK_BYTES - 200):
            name = f"f{size}.bin"
            path = self.make_file(name, size)
            yield self.alice.session.send_file(self.bob_id, str(path))
            self.assertIn(f"[FILE] sent {name} to {self.bob_id} ({size} bytes)", self.alice_ui.lines)
            got = yield self.received(name, path, f"the {size}-byte file")
            self.assertEqual(got.parent, self.bob_dir)
            self.assertEqual(got.read_bytes(), path.read_bytes())
            self.assertEqual(got.stat().st_mode & 0o777, 0o600)
        self.assertEqual(sorted(p.name for p in self.bob_dir.iterdir() if p.name.startswith(".")), [])
        self.assertIsNone(self.bob_ui.find(r"failed"), self.bob_ui.lines)
        self.assertIsNone(self.alice_ui.find(r"failed|\[ERROR\]"), self.alice_ui.lines)
        relay = self.server_a.service.getServiceNamed("files")
        self.assertEqual(len(relay), 0)
        self.assertEqual(relay.counters["ended"], 5)

    @inlineCallbacks
    def test_oversize_file_is_refused_with_a_clear_error(self):
        """Bob's server relays at most 100000 bytes: Bob's 100001-byte file is refused, nothing arrives."""
        path = self.make_file("big.bin", BOB_SERVER_MAX + 1)
        yield self.bob.session.send_file(self.alice_id, str(path))
        self.assertIsNotNone(
            self.bob_ui.find(
                rf"^\[FILE\] sending big\.bin failed: FILE_TOO_LARGE: file is {BOB_SERVER_MAX + 1} bytes; "
                rf"this server relays files of at most {BOB_SERVER_MAX} bytes$"
            ),
            self.bob_ui.lines,
        )
        self.assertIsNone(self.bob_ui.find(r"^\[FILE\] sent "))
        # One line only: the chunks already on their way are refused quietly.
        self.assertEqual(len([line for line in self.bob_ui.lines if "big.bin" in line]), 1, self.bob_ui.lines)
        self.assertIsNone(self.alice_ui.find(r"\[FILE\]"), self.alice_ui.lines)
        self.assertEqual(list(self.alice_dir.iterdir()), [])
        # The limit is the sender's server's: at exactly the limit it goes through.
        ok = self.make_file("ok.bin", BOB_SERVER_MAX)
        yield self.bob.session.send_file(self.alice_id, str(ok))
        line = yield wait_until(
            lambda: self.alice_ui.find(rf"^\[FILE\] received ok\.bin from {self.bob_id} -> "),
            what="the file at the limit",
        )
        self.assertIn(f"({BOB_SERVER_MAX} bytes, sha256 ok)", line)

    # ------------------------------------------------------------------ hostile senders and paths

    def raw_frames(self, file_id: str, name: str, data: bytes, *, key_index: int = ALICE_KEY):
        """Alice's FILE_START, FILE_CHUNKs and FILE_END for ``data``, built by hand."""
        key, me, to = test_key(key_index), self.alice_id, self.bob_id
        ts = wire.now_ms()
        digest = hashlib.sha256(data).hexdigest()
        start = {
            "file_id": file_id,
            "name": name,
            "size": len(data),
            "sha256": digest,
            "mode": "dm",
            "content_sig": crypto.sign_content(
                key, crypto.file_start_preimage(file_id, name, len(data), digest, me, to, ts)
            ),
        }
        frames = [wire.encode_frame("FILE_START", me, to, ts, start, crypto.sign_payload(key, start))]
        pieces = [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
        for index, piece in enumerate(pieces):
            ciphertext = crypto.oaep_encrypt(test_key(BOB_KEY).public_key(), piece)
            chunk = {
                "file_id": file_id,
                "index": index,
                "ciphertext": ciphertext,
                "content_sig": crypto.sign_content(
                    key, crypto.file_chunk_preimage(ciphertext, file_id, index, me, to, ts)
                ),
            }
            frames.append(wire.encode_frame("FILE_CHUNK", me, to, ts, chunk, ""))
        end = {
            "file_id": file_id,
            "chunks": len(pieces),
            "content_sig": crypto.sign_content(key, file_end_preimage(file_id, len(pieces), me, to, ts)),
        }
        frames.append(wire.encode_frame("FILE_END", me, to, ts, end, crypto.sign_payload(key, end)))
        return frames

    @inlineCallbacks
    def test_hostile_name_is_only_displayed(self):
        """A name like ../../x (with an escape sequence) is shown escaped; the file lands as received_<id>."""
        file_id = wire.new_uuid4()
        name = "../../x\x1b[2J"
        data = b"not where you think" * 30
        for frame in self.raw_frames(file_id, name, data):
            self.alice.connection.protocol.send(frame)
        line = yield wait_until(lambda: self.bob_ui.find(r"^\[FILE\] received "), what="the hostile name")
        target = self.bob_dir / f"received_{file_id}"
        self.assertEqual(
            line,
            f"[FILE] received ../../x\\x1b[2J from {self.alice_id} -> {target} "
            f"({len(data)} bytes, sha256 ok)",
        )
        self.assertEqual(target.read_bytes(), data)
        self.assertEqual(sorted(p.name for p in self.bob_dir.iterdir()), [target.name])
        self.assertFalse((self.bob_dir.parent.parent / "x").exists())
        self.assertFalse(any("\x1b" in line for line in self.bob_ui.lines))

    @inlineCallbacks
    def test_tampered_chunk_fails_the_transfer(self):
        """A chunk altered after signing is refused by the sender's server, and one altered on the
        path (signed by Bob's own server) is rejected by Bob: both transfers fail, nothing is kept."""
        # 1. On the way in: the ciphertext of chunk 1 replaced after signing.
        file_id = wire.new_uuid4()
        frames = self.raw_frames(file_id, "doc.txt", os.urandom(3 * CHUNK_BYTES))
        chunk = wire.parse_envelope(frames[2])
        tampered = dict(
            chunk.payload, ciphertext=crypto.oaep_encrypt(test_key(BOB_KEY).public_key(), b"evil")
        )
        frames[2] = wire.encode_frame("FILE_CHUNK", chunk.from_, chunk.to, chunk.ts, tampered, "")
        for frame in frames:
            self.alice.connection.protocol.send(frame)
        yield wait_until(
            lambda: self.alice_ui.find(r"^\[ERROR\] INVALID_SIG: "), what="the server's INVALID_SIG"
        )
        line = yield wait_until(
            lambda: self.bob_ui.find(rf"^\[FILE\] transfer {file_id} "), what="bob's failure"
        )
        self.assertEqual(
            line,
            f"[FILE] transfer {file_id} (doc.txt) from {self.alice_id} failed: "
            "incomplete: 2 of 3 chunks arrived",
        )
        # 2. On the path: a chunk that Bob's server "delivers" (signed with its key) but Alice never signed.
        file_id = wire.new_uuid4()
        frames = self.raw_frames(file_id, "doc2.txt", os.urandom(2 * CHUNK_BYTES))
        self.alice.connection.protocol.send(frames[0])
        yield wait_until(lambda: self.bob_ui.find(r"^\[FILE\] receiving doc2\.txt "), what="the second start")
        chunk = wire.parse_envelope(frames[1])
        forged = dict(
            chunk.payload,
            ciphertext=crypto.oaep_encrypt(test_key(BOB_KEY).public_key(), b"x" * CHUNK_BYTES),
            sender=self.alice_id,
            sender_pub=crypto.encode_public_key(test_key(ALICE_KEY)),
        )
        self.bob.connection.protocol.onMessage(
            wire.encode_frame(
                "FILE_CHUNK",
                self.server_b.server_id,
                self.bob_id,
                chunk.ts,
                forged,
                crypto.sign_payload(test_key(4), forged),
            ),
            False,
        )
        line = yield wait_until(
            lambda: self.bob_ui.find(rf"^\[FILE\] transfer {file_id} "), what="the rejection"
        )
        self.assertEqual(
            line,
            f"[FILE] transfer {file_id} (doc2.txt) from {self.alice_id} failed: "
            "chunk 0 rejected: invalid signature",
        )
        # The genuine rest of that transfer is ignored; nothing is left behind.
        for frame in frames[1:]:
            self.alice.connection.protocol.send(frame)
        yield self.alice.session.send_file(self.bob_id, str(self.make_file("after.txt", 10)))
        yield wait_until(lambda: self.bob_ui.find(r"^\[FILE\] received after\.txt "), what="a later file")
        self.assertEqual([p.name.startswith("received_") for p in self.bob_dir.iterdir()], [True])
        self.assertEqual(len([line for line in self.bob_ui.lines if "failed" in line]), 2, self.bob_ui.lines)

    @inlineCallbacks
    def test_stalled_transfer_times_out_on_both_sides(self):
        """A sender that stops after one chunk: Bob's client gives up and deletes the partial file;
        Alice's server drops the transfer and tells Alice with ERROR TIMEOUT."""
        self.bob.session.files.stall_timeout = 1.0
        relay = self.server_a.service.getServiceNamed("files")
        relay.idle_timeout = 1.5
        file_id = wire.new_uuid4()
        frames = self.raw_frames(file_id, "slow.bin", os.urandom(2 * CHUNK_BYTES))
        for frame in frames[:2]:
            self.alice.connection.protocol.send(frame)
        yield poll_until(lambda: (self.bob_dir / f".partial_{file_id}").exists(), "the partial file")
        line = yield wait_until(
            lambda: self.bob_ui.find(rf"^\[FILE\] transfer {file_id} "), what="bob's timeout"
        )
        self.assertEqual(
            line,
            f"[FILE] transfer {file_id} (slow.bin) from {self.alice_id} failed: timed out: nothing arrived "
            f"for 1 s (1 of 2 chunks received)",
        )
        self.assertEqual(list(self.bob_dir.iterdir()), [])
        line = yield wait_until(lambda: self.alice_ui.find(r"^\[ERROR\] TIMEOUT: "), what="alice's timeout")
        self.assertIn(f"file transfer {file_id} to {self.bob_id} stalled", line)
        self.assertEqual(len(relay), 0)
        # The late rest is refused by the server (the transfer is gone), and Bob ignores nothing new.
        self.alice.connection.protocol.send(frames[2])
        yield wait_until(
            lambda: self.alice_ui.find(r"^\[ERROR\] FILE_UNKNOWN: "), what="the late chunk refused"
        )
