"""Anti-entropy gossip of the public channel with the other servers.

Events travel in ``PUBLIC_CHANNEL_ADD`` frames, flooded like presence gossip; when a server
link comes up both sides send their whole state (``sync``) and the key of that state, so a
server that was down or partitioned catches up.  A peer's frame we refuse is dropped,
logged and counted, never answered (PROTOCOL.md §5).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from socp_tw import crypto, wire
from socp_tw.interfaces import ILink
from socp_tw.interfaces.users import DIFFERS
from socp_tw.logs import get_logger
from socp_tw.services.public.state import (
    MAX_EVENTS_PER_FRAME,
    MemberState,
    chunks,
    parse_event,
    parse_origins,
)

if TYPE_CHECKING:
    from socp_tw.services.public.channel import PublicChannel

__all__ = ["Gossip"]

Handler = Callable[[wire.Envelope, ILink], None]


class Gossip:
    """The channel's side of the mesh: registers for its frames and exchanges state."""

    _log = get_logger("socp_tw.public")

    def __init__(self, channel: PublicChannel) -> None:
        self._channel = channel
        self._linked: set[str] = set()
        peers = channel.peers
        peers.on_frame("PUBLIC_CHANNEL_ADD", self._gossip(self._add_received))
        peers.on_frame("PUBLIC_CHANNEL_UPDATED", self._gossip(channel.rekeying.updated_received))
        peers.add_change_observer(self.mesh_changed)

    def _gossip(self, handler: Handler) -> Handler:
        def receive(envelope: wire.Envelope, link: ILink) -> None:
            if not self._channel.running:
                return
            self._channel.when_ready(lambda: self._checked(handler, envelope, link))

        return receive

    def _checked(self, handler: Handler, envelope: wire.Envelope, link: ILink) -> None:
        try:
            handler(envelope, link)
        except wire.FrameError as e:
            self._drop(envelope, e.detail)

    def _drop(self, envelope: wire.Envelope, detail: str) -> None:
        """A peer's frame we refuse: log and count it, never answer (PROTOCOL.md §5)."""
        self._channel.counters["dropped." + envelope.type] += 1
        self._log.warn(
            "Dropped {type} from server {origin}: {detail}",
            type=envelope.type,
            origin=envelope.from_,
            detail=detail,
        )

    def flood(self, envelope: wire.Envelope, link: ILink) -> None:
        """Pass a ``to: "*"`` frame on unchanged to the servers that need it (seen_ids stops
        loops; the mesh's relay rule spares the neighbours the origin reached itself)."""
        if envelope.to != "*":
            return
        self._channel.counters["forwarded"] += self._channel.peers.relay(envelope, link)

    def _add_received(self, envelope: wire.Envelope, link: ILink) -> None:
        channel = self._channel
        payload = envelope.payload
        if "events" not in payload:
            # Another implementation's bare {add, if_version}: no event ids to merge.  Its users
            # become members through the leader's sweep instead (docs/PUBLIC-CHANNEL.md).
            channel.counters["foreign_add"] += 1
            self._log.info(
                "Ignored PUBLIC_CHANNEL_ADD without events from server {origin}", origin=envelope.from_
            )
            self.flood(envelope, link)
            return
        raw_events = wire.require_list(payload, "events", max_len=MAX_EVENTS_PER_FRAME)
        events = [parse_event(e) for e in raw_events]
        origins = parse_origins(payload.get("counters"))
        self.flood(envelope, link)
        accepted = []
        for event in events:
            if event.present and channel.state.would_change(event):
                try:
                    key = crypto.load_public_key(event.pubkey)
                except crypto.BadKey as e:
                    self._drop(envelope, f"event for {event.member_id}: {e.detail}")
                    continue
                keys = channel.user_keys
                if keys is not None and keys.check(event.member_id, event.pubkey) == DIFFERS:
                    # A member's key is the one its id is pinned to, or /all would encrypt to another's.
                    detail = f"event for {event.member_id} carries a key other than its pinned one"
                    self._drop(envelope, detail)
                    continue
                event = MemberState(
                    event.member_id,
                    True,
                    event.lamport,
                    event.origin_id,
                    event.seq,
                    event.host_id,
                    crypto.encode_public_key(key),
                )
            accepted.append(event)
        before = channel.state.version
        changed, raised = channel.state.merge(accepted, origins)
        channel.counters["events_merged"] += len(changed)
        if not changed and not raised:
            return
        if_version = payload.get("if_version")
        if isinstance(if_version, int) and envelope.to == "*" and if_version != before:
            channel.counters["concurrent_events"] += 1
        self._log.debug(
            "Public channel: merged {count} states from {origin}, version {before} -> {version}",
            count=len(changed),
            origin=envelope.from_,
            before=before,
            version=channel.state.version,
        )
        channel.persist(changed, raised)
        if envelope.to != "*" and channel.peers.connected_servers():
            # Learnt through a state exchange: pass what was new to us on to the others.
            self._regossip(changed, raised, before, exclude=link.link_id)
        channel.changed(changed)

    def _regossip(
        self, states: list[MemberState], origins: dict[str, int], before: int, exclude: str | None
    ) -> None:
        channel = self._channel
        for chunk in chunks(states, channel.states_per_frame):
            payload = channel.add_payload(chunk, origins, before)
            channel.peers.broadcast(channel.signer.frame("PUBLIC_CHANNEL_ADD", "*", payload), exclude=exclude)

    def mesh_changed(self) -> None:
        """IPeerLinks change observer: exchange state with newly linked servers; the leader may differ."""
        channel = self._channel
        if not channel.live():
            return  # the channel calls us again once loaded: every link up then counts as new
        connected = set(channel.peers.connected_servers())
        new, self._linked = connected - self._linked, connected
        for server_id in sorted(new):
            self._send_state(server_id)
        channel.rekeying.check()

    def _send_state(self, server_id: str) -> None:
        """Anti-entropy: our whole state to one server (``sync``), in frames of bounded size."""
        channel = self._channel
        state = channel.state
        if not state.origins:
            return
        states = sorted(state.states.values(), key=lambda s: s.member_id)
        version = state.version
        for chunk in chunks(states, channel.states_per_frame):
            payload = channel.add_payload(chunk, state.origins, version)
            payload["sync"] = True
            channel.peers.send_to_server(
                server_id, channel.signer.frame("PUBLIC_CHANNEL_ADD", server_id, payload)
            )
        if channel.rekeying.valid(channel.key):
            # The key of this state too: a server that reaches it by this exchange needs no new one.
            for payload in channel.key.server_payloads():
                frame = channel.signer.frame("PUBLIC_CHANNEL_UPDATED", server_id, payload)
                channel.peers.send_to_server(server_id, frame)
        channel.counters["state_sent"] += 1
