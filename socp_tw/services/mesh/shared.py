"""One signature for the frames of one payload sent to several peers, each addressed to its own.

The transport signature covers ``canonical(payload)`` only (PROTOCOL.md §1), not ``to`` or
``ts``.  A frame whose payload is the same for every peer (``HEARTBEAT {}``, our
``SERVER_LINKS``) is therefore signed once and encoded per peer with ``to`` = that peer's id,
as the spec's server-to-server frames are addressed: every copy verifies with our key.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from socp_tw import wire
from socp_tw.interfaces import ISigner
from socp_tw.logs import get_logger
from socp_tw.signer import encode_signed_frame

__all__ = ["SharedSignature"]

_log = get_logger("socp_tw.mesh")


class SharedSignature:
    """The signature of one ``type`` / ``payload``, made once on the pool and reused.

    :meth:`frame_to` returns the frame for one peer: bytes once the signature exists (and is
    younger than ``max_age`` seconds, if given), else a Deferred fired when the one pending
    signature is made (with None, a skipped frame, if signing failed).
    """

    def __init__(
        self,
        signer: ISigner,
        clock: IReactorTime,
        type: str,
        payload: dict[str, Any],
        now_ms: Callable[[], int] = wire.now_ms,
    ) -> None:
        self._signer = signer
        self._clock = clock
        self.type = type
        self.payload = payload
        self._body = wire.canonical(payload)
        self._now_ms = now_ms
        self._sig: str | None = None
        self._made_at = 0.0
        self._signing: Deferred | None = None
        self._waiting: list[tuple[str, Deferred]] = []
        self.signatures = 0  # signatures asked for (tests, benchmarks)

    def frame_to(self, to: str, max_age: float | None = None) -> bytes | Deferred:
        """The frame addressed to ``to``, signed at most ``max_age`` seconds ago."""
        now = self._clock.seconds()
        if self._sig is not None and (max_age is None or now - self._made_at < max_age):
            return self._encode(to, self._sig)
        waiter: Deferred = Deferred()
        self._waiting.append((to, waiter))
        if self._signing is None:
            self.signatures += 1
            self._signing = signing = self._signer.frame(self.type, "*", self.payload)
            signing.addCallbacks(self._signed, self._failed, callbackArgs=(now,))
        return waiter

    def _encode(self, to: str, sig: str) -> bytes:
        return encode_signed_frame(self.type, self._signer.server_id, to, self._now_ms(), self._body, sig)

    def _signed(self, frame: bytes, at: float) -> None:
        self._signing = None
        self._sig, self._made_at = json.loads(frame)["sig"], at
        waiting, self._waiting = self._waiting, []
        for to, waiter in waiting:
            waiter.callback(self._encode(to, self._sig))

    def _failed(self, failure: Failure) -> None:
        self._signing = None
        _log.failure("Could not sign {type}", failure, type=self.type)
        waiting, self._waiting = self._waiting, []
        for _, waiter in waiting:
            waiter.callback(None)  # the link's sender skips it
