"""The server mesh (PROTOCOL.md §4).  Placeholder until the mesh lands: no peer links."""

from __future__ import annotations

from collections.abc import Callable

from twisted.application.service import Service
from zope.interface import implementer

from socp_tw.interfaces import IPeerLinks


@implementer(IPeerLinks)
class Mesh(Service):
    """A mesh of one: no peers, nothing to route to."""

    name = "mesh"

    def __init__(self) -> None:
        self._handlers: dict[str, Callable[..., None]] = {}

    def connected_servers(self) -> list[str]:
        return []

    def server_key(self, server_id: str):
        return None

    def send_to_server(self, server_id: str, frame) -> bool:
        return False

    def broadcast(self, frame, exclude: str | None = None) -> int:
        return 0

    def on_frame(self, type: str, handler: Callable[..., None]) -> None:
        self._handlers[type] = handler
