"""Build the frames this server sends, each carrying its transport signature."""

from __future__ import annotations

import json
from collections.abc import Callable

from twisted.internet.defer import Deferred
from zope.interface import implementer

from socp_tw import crypto, wire
from socp_tw.identity import ServerIdentity
from socp_tw.interfaces import ISigner, IWorkers


@implementer(ISigner)
class FrameSigner:
    """Sign and encode server frames; the RSA work runs on ``workers``."""

    def __init__(
        self,
        identity: ServerIdentity,
        workers: IWorkers,
        now_ms: Callable[[], int] = wire.now_ms,
    ) -> None:
        self._identity = identity
        self._workers = IWorkers(workers)
        self._now_ms = now_ms
        self.server_id = identity.server_id
        self.public_key_text = identity.public_key_text
        self.private_key = identity.private_key

    def frame_now(self, type: str, to: str, payload: dict, ts: int | None = None) -> bytes:
        """Sign and encode synchronously (cold paths and tests).

        The payload is serialised once: its canonical form is what the signature covers and
        also what goes on the wire (valid JSON, the same value once decoded).
        """
        body = wire.canonical(payload)
        sig = crypto.pss_sign(self._identity.private_key, body)
        return encode_signed_frame(type, self.server_id, to, self._now_ms() if ts is None else ts, body, sig)

    def sign_content_now(self, preimage: bytes) -> str:
        """This server's content_sig over ``preimage``, synchronously (call it on the workers)."""
        return crypto.sign_content(self._identity.private_key, preimage)

    def frame(self, type: str, to: str, payload: dict, ts: int | None = None) -> Deferred[bytes]:
        """Sign on the worker pool; fire with the encoded frame."""
        stamp = self._now_ms() if ts is None else ts
        return self._workers.run(self.frame_now, type, to, payload, stamp)


def encode_signed_frame(type: str, from_: str, to: str, ts: int, payload_json: bytes, sig: str) -> bytes:
    """A frame whose payload is already serialised (``canonical(payload)``): no second ``json.dumps``.

    Equivalent to :func:`wire.encode_frame` once decoded; strict in the same way (``ts``
    an int).  The envelope's strings are ASCII-escaped like the canonical payload.
    """
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise TypeError(f"ts must be int milliseconds, not {ts!r}")
    head = json.dumps({"type": type, "from": from_, "to": to, "ts": ts}, separators=(",", ":"))
    tail = json.dumps(sig).encode("ascii")
    return b"".join((head[:-1].encode("ascii"), b',"payload":', payload_json, b',"sig":', tail, b"}"))
