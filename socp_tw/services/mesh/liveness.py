"""Liveness: heartbeats, dead links, CTRL_CLOSE, withdrawing a lost server's users."""

from __future__ import annotations

from socp_tw import crypto, wire
from socp_tw.interfaces import ILink
from socp_tw.services.mesh.state import CLOSE_GOING_AWAY, CLOSE_NORMAL, _LinkState


class Liveness:
    """Mesh part: telling live links from dead or hung ones."""

    def goodbye(self, link: ILink) -> None:
        """Tell the peer on ``link`` that we are leaving (signed CTRL_CLOSE), once."""
        state = self._links.get(link.link_id)
        if state is None or state.said_goodbye or state.server_id is None:
            return
        state.said_goodbye = True
        try:
            link.send(self._signer.frame_now("CTRL_CLOSE", state.server_id, {}))
        except Exception:
            self._log.failure("Could not sign CTRL_CLOSE for {link}", link=link.link_id)

    def heard_since(self, server_id: str, when: float) -> bool:
        state = self._by_server.get(server_id)
        return state is not None and state.last_seen >= when

    def unresponsive(self, server_id: str, since: float) -> None:
        """A delivery ``server_id`` should have confirmed was not: if its link has been silent
        since ``since`` too, the peer is hung (process stopped, TCP open): declare the link dead
        now instead of after ``dead_after`` of silence."""
        state = self._by_server.get(server_id)
        if state is None or state.retired or state.last_seen >= since:
            return
        self.counters["links_unresponsive"] += 1
        self._log.warn(
            "Server {server_id} confirmed no delivery and sent nothing for {seconds:.0f} s: link"
            " declared dead, closing",
            server_id=server_id,
            seconds=self._clock.seconds() - state.last_seen,
        )
        self._retire(state, "no delivery confirmation", CLOSE_GOING_AWAY)

    def _heartbeat(self, state: _LinkState) -> None:
        """``HEARTBEAT {}`` to the peer (``to`` = its id).  The payload is the same on every link, so
        one signature made within the last interval serves them all (shared.py): one per round."""
        state.link.send(self._heartbeats.frame_to(state.server_id, max_age=self.heartbeat_interval))
        self._retained.expire(self._retain_for())
        ping = getattr(state.link, "ping", None)  # the round trip shown by socpctl status
        if ping is not None:
            ping(self._clock.seconds())

    def _arm_dead_timer(self, state: _LinkState) -> None:
        if state.dead_timer is not None and state.dead_timer.active():
            state.dead_timer.cancel()
        remaining = self.dead_after - (self._clock.seconds() - state.last_seen)
        state.dead_timer = self._clock.callLater(max(remaining, 0.0), self._check_alive, state)

    def _check_alive(self, state: _LinkState) -> None:
        state.dead_timer = None
        if self._links.get(state.link.link_id) is not state or state.retired:
            return
        silent = self._clock.seconds() - state.last_seen
        if silent < self.dead_after:
            self._arm_dead_timer(state)
            return
        self.counters["links_dead"] += 1
        if state.joining:
            self._log.warn(
                "No SERVER_WELCOME from {url} after {seconds:.0f} s: closing",
                url=state.dialer.url,
                seconds=silent,
            )
            self._stop_timers(state)
            state.retired = True
            state.link.close(CLOSE_NORMAL, "no SERVER_WELCOME")
            return
        self._log.warn(
            "Link to server {server_id} silent for {seconds:.0f} s: declared dead, closing",
            server_id=state.server_id,
            seconds=silent,
        )
        self._retire(state, "no heartbeat", CLOSE_GOING_AWAY)

    def _schedule_withdraw(self, server_id: str) -> None:
        if server_id in self._withdraw_timers or server_id == self.server_id or not self.running:
            return
        self._withdraw_timers[server_id] = self._clock.callLater(
            self.withdraw_after, self._withdraw, server_id
        )

    def _withdraw(self, server_id: str, why: str | None = None) -> None:
        timer = self._withdraw_timers.pop(server_id, None)
        if timer is not None and timer.active():
            timer.cancel()
        if server_id in self._by_server:
            return
        gone = self._presence.server_lost(server_id)
        if gone:
            self.counters["users_withdrawn"] += len(gone)
            self._log.info(
                "Withdrew {count} users of server {server_id} ({why})",
                count=len(gone),
                server_id=server_id,
                why=why or f"no link for {self.withdraw_after:g} s",
            )

    def _ctrl_close(self, state: _LinkState, envelope: wire.Envelope) -> None:
        """The peer is leaving.  Signed by it: withdraw its users now instead of after the grace."""
        server_id = state.server_id
        known = self._known.get(server_id)
        leaving = (
            envelope.from_ == server_id
            and known is not None
            and bool(envelope.sig)
            and crypto.verify_payload(known.key, envelope.payload, envelope.sig)
        )
        self._log.info(
            "Server {server_id} closed its link{how}",
            server_id=server_id,
            how=" (leaving)" if leaving else "",
        )
        self._link_down(state, "peer sent CTRL_CLOSE")
        self._close_later(state, "CTRL_CLOSE")  # the peer closes right after it
        if leaving:
            self._withdraw(server_id, "it left the mesh")
