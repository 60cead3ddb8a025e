"""The ``seen_ids`` cache of PROTOCOL.md §4: bounded in size and in age."""

from __future__ import annotations

import hashlib

from twisted.internet.interfaces import IReactorTime

from socp_tw import wire
from socp_tw.limits import BoundedTTLCache


class SeenCache(BoundedTTLCache):
    """``seen_ids``: a :class:`~socp_tw.limits.BoundedTTLCache` of frame keys.

    Keys are ``(ts, from, to, sha256(canonical(payload)))``, recorded only once a
    frame has verified (a forged copy must not shadow the real one).  Entries leave
    after ``max_age`` seconds (on the injected clock) or, oldest first, when more
    than ``max_size`` are held.
    """

    def __init__(self, clock: IReactorTime, max_size: int = 100_000, max_age: float = 600.0) -> None:
        super().__init__(max_size, max_age, clock)

    @property
    def max_size(self) -> int:
        return self.max_entries

    @staticmethod
    def key(envelope: wire.Envelope, canonical_payload: bytes | None = None) -> tuple:
        """The de-duplication key of a frame (the signature is deliberately not part of it).

        ``canonical_payload`` is ``canonical(envelope.payload)`` when the caller has it.
        """
        if canonical_payload is None:
            canonical_payload = wire.canonical(envelope.payload)
        digest = hashlib.sha256(canonical_payload).digest()
        return (envelope.ts, envelope.from_, envelope.to, digest)
