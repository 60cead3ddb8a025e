"""Fan-out: one frame, signed once, sent on many links.

The mesh, the user side and the public channel send the same frame to many links (a
broadcast, presence to every local user, a channel push).  The frame is signed once and
each link gets a handle on the same bytes, so the signature and the bytes cost once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["copies_of", "send_to_all", "sign_for_all"]


def copies_of(frame: bytes | Deferred[bytes], count: int) -> list[bytes | Deferred[bytes]]:
    """``count`` handles on one frame, one for each link it goes to (it is signed once).

    Bytes are shared as they are.  A Deferred's result feeds one callback chain only, so a
    frame still being signed gets one Deferred per link, fired with its bytes; if signing
    failed (a failure, or None left by an errback that logged it) each copy fails, and
    the shared chain goes on with None.  Safe to call again later for more copies: the
    shared chain keeps its bytes.
    """
    if isinstance(frame, bytes):
        return [frame] * count
    copies: list[Deferred[bytes]] = [Deferred() for _ in range(count)]

    def pass_on(result: object) -> object:
        if isinstance(result, bytes):
            for copy in copies:
                copy.callback(result)
            return result
        failure = result if isinstance(result, Failure) else Failure(RuntimeError("the frame was not signed"))
        for copy in copies:
            copy.errback(failure)
        return None

    frame.addBoth(pass_on)
    return copies


def send_to_all(links: Sequence[Any], frame: bytes | Deferred[bytes]) -> None:
    """Send one frame on every link of ``links``, signed once (:func:`copies_of`)."""
    for link, copy in zip(links, copies_of(frame, len(links)), strict=True):
        link.send(copy)


def sign_for_all(
    signer: Any, log: Logger, frame_type: str, payload: dict[str, Any], links: Sequence[Any]
) -> Deferred:
    """Sign one ``frame_type`` frame to ``"*"`` and send the same bytes on every link of ``links``.

    Returns the signed frame's Deferred (its bytes, or None if signing failed: the failure is
    logged on ``log`` once, and each link's copy fails with it)."""
    frame = signer.frame(frame_type, "*", payload)
    frame.addErrback(_unsigned, log, frame_type)
    send_to_all(links, frame)
    return frame


def _unsigned(failure: Failure, log: Logger, frame_type: str) -> Failure:
    log.failure("Could not sign {type} for local users", failure, type=frame_type)
    return failure
