"""The worker-pool side of file transfer: read, hash, encrypt and sign a sender's chunks;
verify, decrypt and write a receiver's, and check and name the finished file."""

from __future__ import annotations

import errno
import hashlib
import os
from typing import Any

from socp_tw import crypto, wire
from socp_tw.content import file_end_preimage

CHUNK_BYTES = crypto.OAEP_MAX_PLAINTEXT
HASH_BLOCK = 1024 * 1024


def chunk_count(size: int) -> int:
    """How many chunks carry ``size`` bytes (0 for an empty file)."""
    return -(-size // CHUNK_BYTES)


class FileChanged(Exception):
    """The file being sent changed size or content during the transfer."""


class ChunkRejected(Exception):
    """An incoming chunk failed a check; ``str`` says which."""


def hash_file(fd: int, size: int) -> str:
    """SHA-256 (hex) of the first ``size`` bytes of ``fd``, streamed; FileChanged if it is shorter."""
    digest = hashlib.sha256()
    offset = 0
    while offset < size:
        block = os.pread(fd, min(HASH_BLOCK, size - offset), offset)
        if not block:
            raise FileChanged(f"the file is shorter than {size} bytes")
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()


def _signed(key: Any, ftype: str, from_: str, to: str, ts: int, payload: dict[str, Any]) -> bytes:
    return wire.encode_frame(ftype, from_, to, ts, payload, crypto.sign_payload(key, payload))


def start_frame(
    key: Any, file_id: str, name: str, size: int, sha256: str, from_: str, to: str, ts: int
) -> bytes:
    content_sig = crypto.sign_content(
        key, crypto.file_start_preimage(file_id, name, size, sha256, from_, to, ts)
    )
    payload = {
        "file_id": file_id,
        "name": name,
        "size": size,
        "sha256": sha256,
        "mode": "dm",
        "content_sig": content_sig,
    }
    return _signed(key, "FILE_START", from_, to, ts, payload)


def chunk_frame(
    key: Any, recipient_key: Any, fd: int, size: int, index: int, file_id: str, from_: str, to: str, ts: int
) -> tuple[bytes, bytes]:
    """Read, encrypt and content-sign chunk ``index``; return (frame, plaintext).

    No transport signature: the content_sig covers every field of the payload, and a user
    frame on an authenticated link may carry ``sig: ""`` (PROTOCOL.md §1), which halves the
    sender's RSA work.
    """
    offset = index * CHUNK_BYTES
    want = min(CHUNK_BYTES, size - offset)
    plain = os.pread(fd, want, offset)
    if len(plain) != want:
        raise FileChanged(f"the file is shorter than {size} bytes")
    ciphertext = crypto.oaep_encrypt(recipient_key, plain)
    content_sig = crypto.sign_content(
        key, crypto.file_chunk_preimage(ciphertext, file_id, index, from_, to, ts)
    )
    payload = {"file_id": file_id, "index": index, "ciphertext": ciphertext, "content_sig": content_sig}
    return wire.encode_frame("FILE_CHUNK", from_, to, ts, payload, ""), plain


def end_frame(key: Any, file_id: str, chunks: int, from_: str, to: str, ts: int) -> bytes:
    content_sig = crypto.sign_content(key, file_end_preimage(file_id, chunks, from_, to, ts))
    return _signed(
        key, "FILE_END", from_, to, ts, {"file_id": file_id, "chunks": chunks, "content_sig": content_sig}
    )


def receive_chunk(
    server_key: Any,
    payload: dict[str, Any],
    sig: str,
    sender_key: Any,
    own_key: Any,
    sender: str,
    recipient: str,
    ts: int,
    fd: int,
    index: int,
    expected: int,
) -> int:
    """Verify (server sig, content_sig), decrypt and write chunk ``index``; return its length."""
    if not crypto.verify_payload(server_key, payload, sig):
        raise ChunkRejected("invalid server signature")
    ciphertext, file_id = payload["ciphertext"], payload["file_id"]
    preimage = crypto.file_chunk_preimage(ciphertext, file_id, index, sender, recipient, ts)
    sig = payload.get("content_sig")  # absent only in an unsigned file (checked by the caller)
    if sig is not None and not crypto.verify_content_sig(sender_key, preimage, sig):
        raise ChunkRejected("invalid signature")
    try:
        plain = crypto.oaep_decrypt(own_key, ciphertext)
    except crypto.DecryptError:
        raise ChunkRejected("it does not decrypt with your key") from None
    if len(plain) != expected:
        raise ChunkRejected(f"it carries {len(plain)} bytes where {expected} were expected")
    os.pwrite(fd, plain, index * CHUNK_BYTES)
    return len(plain)


def complete_file(fd: int, temp_path: str, final_path: str, size: int, sha256: str) -> None:
    """Check the assembled file's size and SHA-256, then give it its final name (never overwriting)."""
    os.fsync(fd)
    if os.fstat(fd).st_size != size:
        raise ChunkRejected(f"the assembled file has {os.fstat(fd).st_size} bytes, not {size}")
    if hash_file(fd, size) != sha256.lower():
        raise ChunkRejected("sha256 mismatch: the assembled file is not the file announced")
    try:
        os.link(temp_path, final_path)
    except FileExistsError:
        raise ChunkRejected(f"{final_path} already exists") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(final_path):  # no hard links here: check, then rename
            raise ChunkRejected(f"{final_path} already exists") from None
        os.rename(temp_path, final_path)
        return
    os.unlink(temp_path)


def discard_partial(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
