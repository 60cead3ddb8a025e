"""The user side without links: :class:`FakeUserFrames`, an :class:`IUserFrames` driven by :meth:`deliver`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from zope.interface import implementer

from socp_tw import wire
from socp_tw.interfaces import ILink, IPresence, IUserFrames

__all__ = ["FakeUserFrames"]


@implementer(IUserFrames)
class FakeUserFrames:
    """An :class:`IUserFrames` without links to authenticate: handlers are called by :meth:`deliver`.

    ``authenticated_key`` answers from ``presence`` (the key of a local user), as the real
    user side does; ERRORs are recorded as ``(link, payload)`` with the payload the real one
    would sign.
    """

    def __init__(self, presence: IPresence) -> None:
        self.presence = IPresence(presence)
        self.handlers: dict[str, Callable[[ILink, str, wire.Envelope], Deferred | None]] = {}
        self.errors: list[tuple[ILink, dict[str, Any]]] = []

    def register_user_frame(
        self, frame_type: str, handler: Callable[[ILink, str, wire.Envelope], Deferred | None]
    ) -> None:
        self.handlers[frame_type] = handler

    def send_error(
        self, link: ILink, code: str, detail: str, ref: str | None = None, to: str | None = None, **extra: Any
    ) -> None:
        payload: dict[str, Any] = wire.error_payload(code, detail)
        if ref is not None:
            payload["msg_ref"] = ref
        payload.update(extra)
        self.errors.append((link, payload))

    def authenticated_key(self, user_id: str) -> str | None:
        entry = self.presence.lookup(user_id)
        return entry.pubkey if entry is not None and entry.local else None

    def deliver(self, link: ILink, envelope: wire.Envelope) -> Deferred | None:
        """Hand a frame of ``link``'s user to its handler; a failure is answered with ERROR
        (a ``FrameError`` with its code and detail, anything else with ``INTERNAL``)."""
        handler = self.handlers[envelope.type]

        def failed(failure: Failure) -> None:
            error = failure.value
            if isinstance(error, wire.FrameError):
                self.send_error(link, error.code, error.detail, ref=envelope.type)
            else:
                self.send_error(
                    link, "INTERNAL", f"the server failed handling {envelope.type}", ref=envelope.type
                )

        try:
            d = handler(link, link.identity, envelope)
        except Exception:
            failed(Failure())
            return None
        if d is not None:
            d.addErrback(failed)
        return d
