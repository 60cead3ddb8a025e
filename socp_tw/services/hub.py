"""The hub: every connection accepted on the listening port, and who handles its frames.

A connection starts *pending*.  Its first frame identifies it (PROTOCOL.md §1): the
handler that claimed that frame type receives it and, when it accepts the peer,
binds the link to itself with :meth:`Hub.bind`.  Frames nobody claimed get a
server-signed ``ERROR UNKNOWN_TYPE`` and the link stays up.  Malformed frames get an
ERROR with the precise code on user and pending links; on server links they are
logged and dropped, because two servers answering each other's errors loop forever.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from twisted.application.service import Service
from zope.interface import implementer

from socp_tw import wire
from socp_tw.interfaces import IHub, ILink, ILinkHandler, ISigner
from socp_tw.logs import get_logger


@implementer(IHub)
class Hub(Service):
    """Track accepted links and dispatch their frames."""

    name = "hub"
    _log = get_logger("socp_tw.hub")

    def __init__(self, signer: ISigner) -> None:
        self._signer = ISigner(signer)
        self._claims: dict[str, ILinkHandler] = {}
        self._bound: dict[str, ILinkHandler] = {}
        self.links: dict[str, ILink] = {}
        self.counters: Counter[str] = Counter()

    def claim(self, types: Iterable[str], handler: ILinkHandler) -> None:
        """Route first frames of ``types`` to ``handler``."""
        handler = ILinkHandler(handler)
        for frame_type in types:
            self._claims[frame_type] = handler

    def bind(self, link: ILink, handler: ILinkHandler) -> None:
        """Send every later frame of ``link`` to ``handler`` (the peer has identified itself)."""
        self._bound[link.link_id] = ILinkHandler(handler)

    def link_opened(self, link: ILink) -> None:
        self.links[link.link_id] = link
        self.counters["links_opened"] += 1
        self._log.debug("Link {link} opened from {peer}", link=link.link_id, peer=link.peer)

    def frame_received(self, link: ILink, envelope: wire.Envelope) -> None:
        handler = self._bound.get(link.link_id) or self._claims.get(envelope.type)
        if handler is None:
            self.counters["unknown_type"] += 1
            self.send_error(
                link,
                "UNKNOWN_TYPE",
                f"frame type {envelope.type!r} is not understood here",
                ref=envelope.type,
            )
            return
        handler.frame_received(link, envelope)

    def frame_rejected(self, link: ILink, error: wire.FrameError) -> None:
        self.counters["rejected." + error.code] += 1
        if link.role == "server":
            self._log.warn(
                "Dropped malformed frame from server {server} ({code}: {detail})",
                server=link.identity,
                code=error.code,
                detail=error.detail,
            )
            return
        self.send_error(link, error.code, error.detail)

    def send_error(self, link: ILink, code: str, detail: str, ref: str | None = None) -> None:
        self.counters["errors_sent." + code] += 1
        payload = wire.error_payload(code, detail)
        if ref is not None:
            payload["msg_ref"] = ref
        self._log.info(
            "ERROR {code} to {role} link {link}: {detail}",
            code=code,
            role=link.role,
            link=link.link_id,
            detail=detail,
        )
        link.send(self._signer.frame("ERROR", link.identity or "*", payload))

    def link_closed(self, link: ILink, reason: str | None) -> None:
        if self.links.pop(link.link_id, None) is None:
            return
        handler = self._bound.pop(link.link_id, None)
        self.counters["links_closed"] += 1
        self._log.debug("Link {link} closed ({reason})", link=link.link_id, reason=reason)
        if handler is not None:
            handler.link_closed(link, reason)

    def stopService(self) -> None:
        """Close every link cleanly (1001 going away) so peers notice at once."""
        super().stopService()
        for link in list(self.links.values()):
            link.close(1001, "server shutting down")
