"""A recording router: :class:`FakeRouter`, an :class:`IRouter` that notes what it is asked to route."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from zope.interface import implementer

from socp_tw import wire
from socp_tw.interfaces import ILink, IRouter

__all__ = ["FakeRouter"]


@implementer(IRouter)
class FakeRouter:
    """An :class:`IRouter` that records what it is asked to route.

    ``locations`` maps recipient -> "local" or a hosting server id; an unknown
    recipient raises ``UserNotFound`` like the real router.
    """

    def __init__(self, locations: dict[str, str] | None = None) -> None:
        self.locations: dict[str, str] = dict(locations or {})
        self.routed: list[tuple[str, str, dict[str, Any], int, str, str]] = []
        self.from_servers: list[tuple[wire.Envelope, ILink]] = []

    def route(
        self,
        kind: str,
        recipient: str,
        fields: dict[str, Any],
        ts: int,
        sender: str,
        sender_pub: str,
        verified: Callable[[], bool] | None = None,
    ) -> str:
        """Record the frame; with ``verified``, only if it passes (else ``Unverified``, as the real one)."""
        from socp_tw.interfaces import Unverified, UserNotFound

        if verified is not None and not verified():
            raise Unverified("the content signature does not verify")
        where = self.locations.get(recipient)
        if where is None:
            raise UserNotFound(recipient)
        self.routed.append((kind, recipient, dict(fields), ts, sender, sender_pub))
        return where

    def deliver_from_server(self, envelope: wire.Envelope, origin_link: ILink) -> None:
        self.from_servers.append((envelope, origin_link))
