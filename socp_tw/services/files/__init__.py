"""The server's side of file transfer (PROTOCOL.md §6, docs/FILES.md): policy and pacing.

Modules: :mod:`.transfers` (open transfers, their limits and idle timers), :mod:`.pacing`
(the per-user rate and the next hop's backlog), :mod:`.relay` (the :class:`FileRelay`
service, which reaches the user side through ``IUserFrames``).

:class:`FileRelay` handles ``FILE_START`` / ``FILE_CHUNK`` / ``FILE_END`` on authenticated
user links (through ``IUserFrames.register_user_frame``), on the *sender's* server, where a
transfer enters the network.  It never decrypts; it checks, paces and routes:

- **limits**: ``size`` at most ``max_file_bytes`` (``FILE_TOO_LARGE``); at most
  ``max_transfers_per_user`` open transfers per user (``RATE_LIMITED``); chunk indexes below
  the file's chunk count and no more chunks than that (``BAD_FIELD``); a chunk or end for no
  open transfer gets ``FILE_UNKNOWN``.  Every ERROR names the ``file_id``.
- **content**: each frame's ``content_sig`` is checked (``INVALID_SIG``) before it is routed.
- **rate**: a token bucket per user (``frame_rate`` frames/s, ``frame_burst``).  A user going
  faster is slowed down, not refused: its frame waits, the link's later frames wait behind
  it, and the user side stops reading the connection (TCP pushes back on the client).
- **bounded frames per transfer**: a link's frames are handled one at a time, in order.  A
  file frame is verified on the worker pool, which is FIFO, so its check runs only once the
  previous frame's signing job (queued by the router) has started: at most ``workers.size + 1``
  frames of a transfer wait for a signature.  Before routing, the relay waits while the next
  hop (the recipient's link, or the link to its server) has more than ``max_send_buffer``
  bytes not yet taken by the kernel.  So a slow path slows the sender down instead of
  filling the server's memory.
- **timeouts**: a transfer with no frame for ``idle_timeout`` seconds is dropped and its
  sender gets ``ERROR TIMEOUT``; a sender that goes offline loses its open transfers.

The recipient's server needs no state: the router checks and delivers each frame as it
comes from the mesh, in order.
"""

from socp_tw.services.files.relay import FileRelay
from socp_tw.services.files.transfers import CHUNK_BYTES, FILE_FRAMES, Transfer, chunk_count

__all__ = [
    "CHUNK_BYTES",
    "FILE_FRAMES",
    "FileRelay",
    "Transfer",
    "chunk_count",
]
