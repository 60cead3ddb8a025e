"""Routed frames (SERVER_DELIVER, ERROR ...) and sending to one server or all."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from socp_tw import wire
from socp_tw.interfaces import ILink
from socp_tw.services.mesh.state import _LinkState
from socp_tw.transport.fanout import send_to_all


class Relay:
    """Mesh part: frames for a server, ours or passed on towards their ``to``."""

    def _live_links(self, exclude: str | None = None) -> list[ILink]:
        return [s.link for s in self._by_server.values() if s.link.link_id != exclude]

    def broadcast(self, frame: bytes | Deferred, exclude: str | None = None) -> int:
        links = self._live_links(exclude)
        if not links:
            if isinstance(frame, Deferred):
                frame.addErrback(lambda f: None)
            return 0
        send_to_all(links, frame)
        return len(links)

    def send_to_server(self, server_id: str, frame: bytes | Deferred) -> bool:
        state = self._by_server.get(server_id)
        if state is not None:
            state.link.send(frame)
            return True
        if server_id == self.server_id or not wire.is_uuid(server_id):
            return False
        # No direct link (the mesh is still forming, or the link is down): flood it;
        # the servers in between forward it towards its ``to``, seen_ids stopping loops.
        sent = self.broadcast(frame)
        if sent:
            self.counters["relay.flooded"] += 1
        return sent > 0

    # -- routed frames (SERVER_DELIVER, ERROR ...) ----------------------------------------------------

    def _routed(self, state: _LinkState, envelope: wire.Envelope, prepared: Any = None) -> None:
        to = envelope.to
        if self._hosts_recipient(envelope):
            to = self.server_id  # forwarded to us unchanged (its ``to`` still names the first hop)
        if to != self.server_id and (to in self._known or to in self._by_server):
            # Not ours: pass it on towards ``to`` (multi-hop while the mesh forms).
            raw = wire.encode_frame(
                envelope.type, envelope.from_, envelope.to, envelope.ts, envelope.payload, envelope.sig
            )
            target = self._by_server.get(to)
            if target is not None:
                target.link.send(raw)
                sent = 1
            else:
                sent = self.broadcast(raw, exclude=state.link.link_id)
            self.counters["relay.forwarded" if sent else "relay.no_route"] += 1
            self._log.debug(
                "Relayed {type} from {origin} towards {to}", type=envelope.type, origin=envelope.from_, to=to
            )
            return
        handler = self._handlers[envelope.type]
        try:
            if prepared is None:
                handler(envelope, state.link)
            else:
                handler(envelope, state.link, prepared)
        except Exception:
            self._log.failure(
                "Handler of {type} from {origin} failed", type=envelope.type, origin=envelope.from_
            )

    def _hosts_recipient(self, envelope: wire.Envelope) -> bool:
        """A SERVER_DELIVER for a user of ours, whatever its ``to``: a server that believed the
        user was elsewhere forwards the frame unchanged, and it must end here (§4)."""
        if envelope.type != "SERVER_DELIVER":
            return False
        user_id = envelope.payload.get("user_id")
        return isinstance(user_id, str) and self._presence.local_link(user_id) is not None
