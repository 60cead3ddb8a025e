"""Per-link dispatch: frames of one link handled one at a time, in order, with a bounded backlog."""

from __future__ import annotations

import hashlib
from collections import deque

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from socp_tw import wire
from socp_tw.content import USER_CONTENT_FIELDS
from socp_tw.interfaces import ILink
from socp_tw.limits import check_ts_window
from socp_tw.services.users.state import (
    BACKLOG_PAUSE,
    MAX_BACKLOG,
    _BadFrom,
    _NotNow,
    _Replay,
    _UnknownType,
    _UserLink,
)


class _Dispatching:
    """ILinkHandler for :class:`UserSide`: the per-link queue, backpressure, state and replay checks."""

    def frame_received(self, link: ILink, envelope: wire.Envelope) -> None:
        state = self._links.get(link.link_id)
        if state is None:
            # This link is a user link from its first frame on: bind it now so its
            # close reaches us and the per-link state (nonce, login) is dropped.
            state = self._links[link.link_id] = _UserLink(link)
            self._hub.bind(link, self)
        if state.closed:
            return
        if state.busy:
            if len(state.backlog) >= MAX_BACKLOG:
                self.counters["backlog_full"] += 1
                self.send_error(
                    link,
                    "RATE_LIMITED",
                    "too many frames in flight; slow down",
                    ref=envelope.type,
                    to=envelope.from_,
                )
                return
            if not state.backlog:
                state.backlog = deque()
            state.backlog.append(envelope)
            if len(state.backlog) >= BACKLOG_PAUSE:
                self._pause_reading(state)
            return
        self._drain(state, envelope)

    def link_closed(self, link: ILink, reason: str | None) -> None:
        state = self._links.pop(link.link_id, None)
        if state is None:
            return
        state.closed = True
        state.backlog = ()
        self._forget_follows(link.link_id, state.follows)
        self._event_mode_links.pop(link.link_id, None)
        state.follows = ()
        state.nonce = state.login = None
        if state.user_id is not None and self._presence.user_offline_local(state.user_id, link):
            self._log.info("User {user} offline ({reason})", user=state.user_id, reason=reason)

    def _drain(self, state: _UserLink, envelope: wire.Envelope) -> None:
        """Handle ``envelope`` and then the backlog, until a handler has to wait."""
        while True:
            if state.reading_paused and len(state.backlog) <= BACKLOG_PAUSE // 2:
                self._resume_reading(state)
            d = self._handle(state, envelope)
            if d is not None:
                finished: list = []
                d.addBoth(finished.append)
                if not finished:
                    state.busy = True
                    d.addBoth(self._resume, state)
                    return
            if state.closed or not state.backlog:
                state.backlog = ()  # an idle link keeps no deque
                return
            envelope = state.backlog.popleft()

    def _pause_reading(self, state: _UserLink) -> None:
        """Stop reading a link whose backlog is long: its client's writes back up (backpressure)."""
        transport = getattr(state.link, "transport", None)
        if state.reading_paused or not hasattr(transport, "pauseProducing"):
            return
        state.reading_paused = True
        self.counters["reading_paused"] += 1
        transport.pauseProducing()

    def _resume_reading(self, state: _UserLink) -> None:
        state.reading_paused = False
        transport = getattr(state.link, "transport", None)
        if not state.closed and hasattr(transport, "resumeProducing"):
            transport.resumeProducing()

    def _resume(self, _: object, state: _UserLink) -> None:
        state.busy = False
        if not state.closed and state.backlog:
            self._drain(state, state.backlog.popleft())

    def _handle(self, state: _UserLink, envelope: wire.Envelope) -> Deferred | None:
        try:
            d = self._dispatch(state, envelope)
        except Exception:
            self._failed(Failure(), state, envelope)
            return None
        if d is not None:
            d.addErrback(self._failed, state, envelope)
        return d

    def _failed(self, failure: Failure, state: _UserLink, envelope: wire.Envelope) -> None:
        error = failure.value
        if isinstance(error, wire.FrameError):
            self.send_error(state.link, error.code, error.detail, ref=envelope.type, to=envelope.from_)
            return
        self._log.failure(
            "Failed handling {type} on link {link}", failure, type=envelope.type, link=state.link.link_id
        )
        self.send_error(
            state.link,
            "INTERNAL",
            f"the server failed handling {envelope.type}",
            ref=envelope.type,
            to=envelope.from_,
        )

    def _dispatch(self, state: _UserLink, envelope: wire.Envelope) -> Deferred | None:
        frame_type = envelope.type
        if frame_type in ("ERROR", "ACK"):
            self.counters["ignored." + frame_type] += 1  # never answered: no error loops
            return None
        if frame_type == "CTRL_CLOSE":
            state.link.close(1000, "closed at the client's request")
            return None
        if frame_type == "HEARTBEAT":
            return None
        if state.user_id is None:
            handler = self._auth_handlers.get(frame_type)
            if handler is not None:
                return handler(state, envelope)
            if frame_type in self._user_frames:
                raise _NotNow(f"{frame_type} needs an authenticated link: send USER_HELLO first")
            raise _UnknownType(f"frame type {frame_type!r} is not understood here")
        if frame_type in self._auth_handlers:
            raise _NotNow("already authenticated")
        if envelope.from_ != state.user_id:
            self.counters["spoofed_from"] += 1
            self._log.warn(
                "User {user} sent {type} from {claimed}: dropped",
                user=state.user_id,
                type=frame_type,
                claimed=envelope.from_,
            )
            raise _BadFrom(f"'from' must be your own user id {state.user_id}", "from")
        handler = self._user_frames.get(frame_type)
        if handler is None:
            raise _UnknownType(f"frame type {frame_type!r} is not understood here")
        if frame_type in USER_CONTENT_FIELDS:
            self._check_fresh(envelope)
        return handler(state.link, state.user_id, envelope)

    def _check_fresh(self, envelope: wire.Envelope) -> None:
        """Replay protection for user content: ``ts`` inside the window, and never the same frame twice.

        A frame outside ``±ts_window`` gets ``BAD_TS``; one identical to a frame accepted in the
        last ``seen_ids_ttl`` seconds (same from, to, ts and payload) gets ``REPLAY``.  Since
        ``seen_ids_ttl >= 2 * ts_window``, a replay is caught by one check or the other.  The
        frame is remembered before it is handled, so one that failed cannot be replayed either.
        """
        check_ts_window(envelope.ts, int(self._now() * 1000), self.limits.ts_window_ms)
        digest = hashlib.sha256(wire.canonical(envelope.payload)).digest()
        if not self._seen.add((envelope.type, envelope.from_, envelope.to, envelope.ts, digest)):
            self.counters["replayed"] += 1
            self._log.warn(
                "User {user} replayed a {type} frame (ts {ts}): dropped",
                user=envelope.from_,
                type=envelope.type,
                ts=envelope.ts,
            )
            raise _Replay(f"this {envelope.type} frame was already received; a new frame needs a new ts")
