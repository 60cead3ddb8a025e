"""Build the frames this server sends, each carrying its transport signature."""

from __future__ import annotations

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
        """Sign and encode synchronously (cold paths and tests)."""
        sig = crypto.sign_payload(self._identity.private_key, payload)
        return wire.encode_frame(type, self.server_id, to, self._now_ms() if ts is None else ts, payload, sig)

    def frame(self, type: str, to: str, payload: dict, ts: int | None = None) -> Deferred[bytes]:
        """Sign on the worker pool; fire with the encoded frame."""
        stamp = self._now_ms() if ts is None else ts
        return self._workers.run(self.frame_now, type, to, payload, stamp)
