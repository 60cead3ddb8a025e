"""The link registry: dialers wanted, a link up or down, duplicate links, closing, per-peer pacing."""

from __future__ import annotations

from socp_tw.interfaces import ILink
from socp_tw.services.mesh.state import CLOSE_NORMAL, DUPLICATE_CLOSE_DELAY, _LinkState
from socp_tw.timers import repeating, stop_repeating


class Links:
    """Mesh part: which link is *the* link to a server, and how links close."""

    def _want_link(self, server_id: str, delay: float = 0.0) -> None:
        """Make sure a dialer for ``server_id`` exists; it dials (after ``delay``) only while no
        link is live."""
        if self._outgoing is None or server_id == self.server_id:
            return
        known = self._known.get(server_id)
        if known is None or known.host is None:
            return
        dialer = self._dialers.get(server_id)
        if dialer is None:
            dialer = self._dialers[server_id] = self._outgoing.dialer(
                known.host, known.port, server_id=server_id
            )
        if server_id not in self._by_server and self.running:
            dialer.resume(delay)

    def _gossip_dial_delay(self, server_id: str) -> float:
        """Grace before dialling a server we only heard of: it is probably dialling us right now.
        The lower UUID waits less, so when both ends wait the usual winner of the tie-break dials."""
        return self.gossip_dial_delay * (1 if self.server_id < server_id else 3)

    # -- link up / down, duplicates -----------------------------------------------------------

    def _dialled_by(self, state: _LinkState, server_id: str) -> str:
        return self.server_id if state.link.outgoing else server_id

    def _link_up(self, state: _LinkState, server_id: str) -> None:
        """``state`` is identified as a link to ``server_id``: register it, or lose a tie-break."""
        state.server_id = server_id
        existing = self._by_server.get(server_id)
        if existing is not None and existing is not state:
            new_by, old_by = self._dialled_by(state, server_id), self._dialled_by(existing, server_id)
            # Two links to one server: keep the one dialled by the lower UUID (§4).  If one side
            # dialled both, keep the newer only if the old one has gone quiet (the dialler saw it
            # die before we did); a live old link wins, so a replayed HELLO cannot displace it.
            if new_by != old_by:
                keep_new = new_by == min(self.server_id, server_id)
            else:
                keep_new = self._clock.seconds() - existing.last_seen >= self.heartbeat_interval
            loser = existing if keep_new else state
            self.counters["duplicate_links"] += 1
            self._log.info(
                "Two links to server {server_id}: keeping the {kept} one, closing {closed}",
                server_id=server_id,
                kept=(state if keep_new else existing).direction,
                closed=loser.link.link_id,
            )
            # The loser closes quietly: the server stays linked through the winner.  Its dialler
            # closes it, once frames still being signed for it have left; the accepting side only
            # waits (both closing at once loses close frames) and closes it if the dialler does not.
            if loser.dialer is not None:
                loser.dialer.pause()
            delay = DUPLICATE_CLOSE_DELAY if loser.link.outgoing else self.close_grace
            self._close_later(loser, "duplicate link", delay)
            if not keep_new:
                return
        newly = existing is None
        state.up = True
        self._by_server[server_id] = state
        known = self._known.get(server_id)
        if known is not None and not known.linked:
            known.linked = True
            self._save_pins()
        timer = self._withdraw_timers.pop(server_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        dialer = self._dialers.get(server_id)
        if dialer is not None and dialer is not state.dialer:
            dialer.pause()
        state.heartbeat = repeating(self._clock, self.heartbeat_interval, self._heartbeat, state, now=True)
        self._arm_dead_timer(state)
        for entry in self._presence.local_entries():
            state.link.send(self._advertise_frame(entry))
        self._introduce_neighbours(state)
        self._links_changed()
        if newly:
            self.counters["links_up"] += 1
            # A link we dialled is up only once the peer answers (verify.py logs that): until
            # then it may be a peer that does not accept our first frame (INTEROP.md row 11).
            waiting = state.link.outgoing and not state.healthy
            self._log.info(
                "Link to server {server_id} {what} ({direction}, {peer})",
                server_id=server_id,
                what="opened, up once it answers" if waiting else "up",
                direction=state.direction,
                peer=state.link.peer,
            )
            self._changed()

    def _close_state(self, state: _LinkState, reason: str, code: int = CLOSE_NORMAL) -> None:
        """Close ``state``'s link without any link-down consequence (its close is then silent)."""
        state.retired = True
        state.up = False
        self._stop_timers(state)
        state.link.close(code, reason)

    def _close_later(self, state: _LinkState, reason: str, delay: float | None = None) -> None:
        """Stop using ``state`` now and close it after ``delay`` (default: the grace left to the
        peer to close it first) unless it is gone by then."""
        state.retired = True
        state.up = False
        self._stop_timers(state)
        delay = self.close_grace if delay is None else delay
        state.dead_timer = self._clock.callLater(delay, self._close_if_open, state, reason)

    def _close_if_open(self, state: _LinkState, reason: str) -> None:
        state.dead_timer = None
        if self._links.get(state.link.link_id) is state:
            state.link.close(CLOSE_NORMAL, reason)

    def _retire(self, state: _LinkState, reason: str, code: int = CLOSE_NORMAL) -> None:
        """Stop using ``state`` (dead, cut off, peer leaving): the server is down now, then close."""
        self._link_down(state, reason)
        self._close_state(state, reason, code)

    def _link_down(self, state: _LinkState, reason: str) -> None:
        server_id = state.server_id
        if not state.up or self._by_server.get(server_id) is not state:
            return
        state.up = False
        del self._by_server[server_id]
        self.counters["links_down"] += 1
        self._log.info("Link to server {server_id} down ({reason})", server_id=server_id, reason=reason)
        if self.running:
            self._schedule_withdraw(server_id)
            self._want_link(server_id)
        self._links_changed(at_once=True)
        self._changed()

    def _stop_timers(self, state: _LinkState) -> None:
        stop_repeating(state.heartbeat)
        state.heartbeat = None
        if state.dead_timer is not None and state.dead_timer.active():
            state.dead_timer.cancel()
        state.dead_timer = None

    # -- per-peer pacing ---------------------------------------------------------------------------

    def _pace(self, state: _LinkState) -> None:
        """Spend a token of the link's bucket; past ``peer_rate`` stop reading the link until it refills.

        Server frames are never dropped for speed (they carry other people's messages): a peer
        that sends too fast is slowed down by TCP instead, so it costs at most its rate in CPU.
        """
        link = state.link
        if self._peer_rate.allow(link.link_id):
            return
        self.counters["throttled"] += 1
        transport = getattr(link, "transport", None)
        if link.link_id in self._paused or not hasattr(transport, "pauseProducing"):
            return
        delay = max(self._peer_rate.retry_after(link.link_id), 0.01)
        if not state.throttled:
            state.throttled = True
            self._log.info(
                "Server {server_id} sends more than {rate:g} frames/s on link {link}: reading it slower",
                server_id=state.server_id,
                rate=self.peer_rate,
                link=link.link_id,
            )
        transport.pauseProducing()
        self._paused[link.link_id] = self._clock.callLater(delay, self._unpause, link)

    def _unpause(self, link: ILink) -> None:
        self._paused.pop(link.link_id, None)
        if link.link_id in self._links:
            link.transport.resumeProducing()
