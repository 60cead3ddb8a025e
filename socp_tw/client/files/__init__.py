"""File transfer in ``socp-client``: ``/file <uuid> <path>`` and incoming files (docs/FILES.md).

Sending streams the file: a first pass hashes it (SHA-256, on the worker pool), then each
chunk of at most 446 bytes is read at its offset (``os.pread``), RSA-OAEP encrypted to the
recipient and content-signed on the worker pool, with a bounded window of chunks in
flight.  The WebSocket's transport tells us when its send buffer is full (we register as its
streaming producer): no new chunk is made until it drains, so the client never buffers more
than the transport's 64 KiB plus the window.  On a terminal one progress line updates in
place.

Receiving checks every frame (server signature, addressed to us, content_sig by the key
pinned for the sender), decrypts on the worker pool and writes each chunk at its offset in
``.partial_<file_id>`` (created ``O_EXCL``, mode 0600, in the download directory).  Chunks
may arrive in any order; duplicates are ignored.  At ``FILE_END`` the count, size and
SHA-256 are checked, and only then is the file linked to ``received_<file_id>``.  A failed or
stalled transfer deletes its partial file and is reported.  The sender's file name is only
ever displayed (escaped), never used as a path.

The package, one concern a module: ``base`` (shared state), ``send`` (/file), ``receive``
(FILE_START checks), ``chunks`` (chunks, FILE_END, completion and failure), ``jobs`` (the
worker-pool functions: file I/O and crypto), ``progress`` (what the user sees).
"""

from __future__ import annotations

from socp_tw.client.files.base import MAX_RECENT, STALL_TIMEOUT
from socp_tw.client.files.chunks import MAX_DECRYPTS_IN_FLIGHT, Assembling
from socp_tw.client.files.jobs import CHUNK_BYTES, ChunkRejected, FileChanged, chunk_count
from socp_tw.client.files.progress import Progress, display_name
from socp_tw.client.files.receive import (
    MAX_INCOMING,
    MAX_INCOMING_PER_SENDER,
    MAX_NAME_CHARS,
    MAX_RECEIVE_BYTES,
    Receiving,
)
from socp_tw.client.files.send import Sending


class FileTransfers(Sending, Receiving, Assembling):
    """The file side of one :class:`ClientSession`: ``/file`` and incoming FILE_* frames."""


__all__ = [
    "CHUNK_BYTES",
    "MAX_DECRYPTS_IN_FLIGHT",
    "MAX_INCOMING",
    "MAX_INCOMING_PER_SENDER",
    "MAX_NAME_CHARS",
    "MAX_RECEIVE_BYTES",
    "MAX_RECENT",
    "STALL_TIMEOUT",
    "ChunkRejected",
    "FileChanged",
    "FileTransfers",
    "Progress",
    "chunk_count",
    "display_name",
]
