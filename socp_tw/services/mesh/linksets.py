"""The relay rule: who needs a copy of a flooded frame (docs/MESH.md "Relaying floods").

Flooding over a full mesh moves (N-1)² copies of each frame, N-1 of them useful.  Servers of
our profile tell their neighbours which servers they are directly linked to (``SERVER_LINKS``,
the ``link-set`` extension, docs/PROTOCOL-EXTENSIONS.md §15).  A frame of origin O is then not
passed on to a neighbour P when **both** O and P said they are linked to each other: P has it
from O.  Either side's claim alone changes nothing, so a server lying about its links only
ever deprives itself (or, as an origin, withholds its own frames).  Every frame skipped for
someone is retained for ``dead_after + heartbeat_interval`` seconds and handed over if O or P
withdraws that link meanwhile (it may have been down when the frame left).
"""

from __future__ import annotations

from socp_tw import wire
from socp_tw.services.mesh.shared import SharedSignature
from socp_tw.services.mesh.state import MAX_KNOWN_SERVERS, _LinkState

#: Our extension frame: the sender's healthy direct links, to each neighbour that speaks it.
LINKS_TYPE = "SERVER_LINKS"


class LinkSets:
    """Mesh part: our link set told to the neighbours, theirs recorded, the relay rule, replay."""

    # -- what we tell ------------------------------------------------------------------------

    def _healthy_links(self) -> list[str]:
        """The servers we are linked to and heard from on that link: where our frames arrive."""
        return sorted(sid for sid, state in self._by_server.items() if state.healthy)

    def _speaks_link_sets(self, state: _LinkState) -> bool:
        known = self._known.get(state.server_id)
        return state.claims is not None or (known is not None and known.link_sets)

    def _links_changed(self, at_once: bool = False) -> None:
        """Our links changed: tell the neighbours, coalesced over ``link_set_delay`` (a link lost:
        at once, so that the others stop counting on it as soon as possible)."""
        if not self.running:
            return
        timer = self._link_set_timer
        if at_once or self.link_set_delay <= 0:
            self._tell_links()
        elif timer is None or not timer.active():
            self._link_set_timer = self._clock.callLater(self.link_set_delay, self._tell_links)

    def _tell_links(self) -> None:
        """Send our current set to every healthy neighbour that speaks ``link-set`` and lacks it
        (one signature per set, ``to`` = each neighbour)."""
        timer, self._link_set_timer = self._link_set_timer, None
        if timer is not None and timer.active():
            timer.cancel()  # called directly: the coalesced call would have nothing left to say
        servers = self._healthy_links()
        if self._link_set is None or self._link_set.payload["servers"] != servers:
            self._link_set_seq = max(self._link_set_seq + 1, self._now_ms())
            payload = {"servers": servers, "seq": self._link_set_seq}
            self._link_set = SharedSignature(self._signer, self._clock, LINKS_TYPE, payload, self._now_ms)
        for state in list(self._by_server.values()):
            if state.healthy and state.told_links != self._link_set_seq and self._speaks_link_sets(state):
                self._tell_link(state)

    def _tell_link(self, state: _LinkState) -> None:
        state.told_links = self._link_set_seq
        state.link.send(self._link_set.frame_to(state.server_id))
        self.counters["link_sets.sent"] += 1

    # -- what they tell --------------------------------------------------------------------------

    def _link_set_received(self, state: _LinkState, envelope: wire.Envelope) -> None:
        """A neighbour's ``SERVER_LINKS {servers, seq}`` (verified): its claims replace the last."""
        if envelope.from_ != state.server_id:
            self.counters["dropped.link_set_relayed"] += 1  # a server speaks only for its own links
            return
        try:
            servers = wire.require_list(envelope.payload, "servers", max_len=MAX_KNOWN_SERVERS)
            seq = wire.require_int(envelope.payload, "seq", minimum=0)
            if not all(wire.is_uuid(s) for s in servers):
                raise wire.BadFieldType("payload field 'servers' must list server ids", "servers")
        except wire.FrameError as e:
            self._bad_gossip(state, envelope, e.detail)
            return
        if state.claims_seq is not None and seq <= state.claims_seq:
            self.counters["dropped.link_set_old"] += 1  # a replay, or out of order
            return
        old = state.claims or frozenset()
        state.claims = frozenset(servers) - {state.server_id}
        state.claims_seq = seq
        self.counters["link_sets.received"] += 1
        known = self._known.get(state.server_id)
        if known is not None and not known.link_sets:
            known.link_sets = True
            self._save_pins()
        for gone in old - state.claims:
            self._link_withdrawn(state.server_id, gone)
        if state.healthy and state.told_links != self._link_set_seq:
            if self._link_set is None:
                self._tell_links()
            else:
                self._tell_link(state)

    def _link_withdrawn(self, a: str, b: str) -> None:
        """``a`` no longer claims ``b``: frames of either that we skipped for the other (trusting
        that link) are handed over now, in case they were lost on it."""
        max_age = self._retain_for()
        for origin, target in ((a, b), (b, a)):
            state = self._by_server.get(target)
            if state is None:
                continue
            frames = self._retained.take(origin, target, max_age)
            for raw in frames:
                state.link.send(raw)
            if frames:
                self.counters["relay.replayed"] += len(frames)
                self._log.info(
                    "Link {a}-{b} withdrawn: passed {count} frames of {origin} on to {target} that it"
                    " was thought to have directly",
                    a=a,
                    b=b,
                    count=len(frames),
                    origin=origin,
                    target=target,
                )

    # -- the rule -------------------------------------------------------------------------------

    def _retain_for(self) -> float:
        return self.dead_after + self.heartbeat_interval

    def _flood(self, envelope: wire.Envelope, raw: bytes, exclude: str | None) -> int:
        """Pass ``raw`` (``envelope`` as it came) on to every live link but ``exclude``, the origin,
        and the neighbours that have it from the origin directly (both said so)."""
        origin = envelope.from_
        source = self._by_server.get(origin)
        origin_claims = source.claims if source is not None else None
        targets, skipped = [], set()
        for server_id, state in self._by_server.items():
            if state.link.link_id == exclude or server_id == origin:
                continue
            if origin_claims and server_id in origin_claims and state.claims and origin in state.claims:
                skipped.add(server_id)
            else:
                targets.append(state.link)
        if skipped and not self._retained.add(origin, raw, skipped, self._retain_for()):
            self.counters["relay.retain_full"] += 1  # cannot promise a replay: flood as before
            targets.extend(self._by_server[s].link for s in skipped)
            skipped = set()
        for link in targets:
            link.send(raw)
        self.counters["forwarded"] += len(targets)
        self.counters["relay.skipped"] += len(skipped)
        return len(targets)

    def relay(self, envelope: wire.Envelope, link: object) -> int:
        """IPeerLinks: pass a verified ``to: "*"`` frame from another server on, unchanged, to the
        servers that need it (the relay rule).  Returns how many links it went to."""
        raw = wire.encode_frame(
            envelope.type, envelope.from_, envelope.to, envelope.ts, envelope.payload, envelope.sig
        )
        return self._flood(envelope, raw, getattr(link, "link_id", None))
