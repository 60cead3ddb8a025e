"""Builders of FILE_* payloads as a conforming client signs them, and a fake TCP transport.

Shared by the server's relay tests (test/services/files/), the user side's
(test/services/users/test_files) and the client's (test/client/files/).
"""

from __future__ import annotations

import hashlib
from typing import Any

from socp_tw import crypto
from socp_tw.client.files import CHUNK_BYTES
from socp_tw.content import file_end_preimage


def start_payload(
    key,
    file_id: str,
    name: str,
    data: bytes,
    sender: str,
    to: str,
    ts: int,
    digest: str | None = None,
    **extra,
) -> dict:
    digest = digest or hashlib.sha256(data).hexdigest()
    payload = {
        "file_id": file_id,
        "name": name,
        "size": len(data),
        "sha256": digest,
        "mode": "dm",
        "content_sig": crypto.sign_content(
            key, crypto.file_start_preimage(file_id, name, len(data), digest, sender, to, ts)
        ),
    }
    payload.update(extra)
    return payload


def chunk_payload(
    key, recipient_key, file_id: str, index: int, piece: bytes, sender: str, to: str, ts: int
) -> dict:
    ciphertext = crypto.oaep_encrypt(recipient_key, piece)
    return {
        "file_id": file_id,
        "index": index,
        "ciphertext": ciphertext,
        "content_sig": crypto.sign_content(
            key, crypto.file_chunk_preimage(ciphertext, file_id, index, sender, to, ts)
        ),
    }


def end_payload(key, file_id: str, chunks: int, sender: str, to: str, ts: int) -> dict:
    return {
        "file_id": file_id,
        "chunks": chunks,
        "content_sig": crypto.sign_content(key, file_end_preimage(file_id, chunks, sender, to, ts)),
    }


def pieces(data: bytes) -> list[bytes]:
    return [data[i : i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]


class FakeTCP:
    """The bits of a Twisted TCP transport the server and client look at."""

    def __init__(self) -> None:
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0
        self.reading = True
        self.producer: Any = None
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.reading = False
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.reading = True

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError("already")
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None
