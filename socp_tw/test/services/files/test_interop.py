"""Files from other clients (docs/INTEROP.md row 4): FILE_* frames with no content_sig.

The spec defines no content_sig for files; other clients send FILE_START {file_id, name, size,
sha256, mode}, FILE_CHUNK {file_id, index, ciphertext} and FILE_END {file_id}.
"""

from __future__ import annotations

import hashlib

from socp_tw import crypto
from socp_tw.services.files import CHUNK_BYTES
from socp_tw.test.file_frames import start_payload
from socp_tw.test.services.files.test_relay import RelayTestBase


class UnsignedFileTests(RelayTestBase):
    def unsigned_start(self, file_id: str, data: bytes) -> dict:
        digest = hashlib.sha256(data).hexdigest()
        return {"file_id": file_id, "name": "a.txt", "size": len(data), "sha256": digest, "mode": "dm"}

    def test_unsigned_file_frames_are_relayed(self) -> None:
        data = b"z" * (CHUNK_BYTES + 3)
        self.file_send("FILE_START", self.unsigned_start("u1", data))
        for index in range(2):
            piece = data[index * CHUNK_BYTES : (index + 1) * CHUNK_BYTES]
            ciphertext = crypto.oaep_encrypt(self.bob_key.public_key(), piece)
            self.file_send("FILE_CHUNK", {"file_id": "u1", "index": index, "ciphertext": ciphertext})
        self.file_send("FILE_END", {"file_id": "u1"})
        self.assertEqual(self.take(self.alice), [])  # no MISSING_FIELD
        frames = self.take(self.bob)
        self.assertEqual([f["type"] for f in frames], ["FILE_START", "FILE_CHUNK", "FILE_CHUNK", "FILE_END"])
        self.assertTrue(all("content_sig" not in f["payload"] for f in frames))
        self.assertEqual(frames[0]["payload"]["sender"], self.alice_id)  # the authenticated sender
        self.assertEqual(self.relay.counters["started_unsigned"], 1)
        self.assertEqual(self.relay.counters["ended"], 1)

    def test_a_signature_that_is_there_must_still_verify(self) -> None:
        forged = start_payload(self.bob_key, "f1", "a.txt", b"abc", self.alice_id, self.bob_id, self.now())
        self.file_send("FILE_START", forged)
        self.file_error("INVALID_SIG", "f1")
        self.assertEqual(self.take(self.bob), [])
