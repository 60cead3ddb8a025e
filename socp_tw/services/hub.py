"""The hub: every connection accepted on the listening port, and who handles its frames.

A connection starts *pending*.  Its first frame identifies it (PROTOCOL.md §1): the
handler that claimed that frame type receives it and, when it accepts the peer,
binds the link to itself with :meth:`Hub.bind`.  Frames nobody claimed get a
server-signed ``ERROR UNKNOWN_TYPE`` and the link stays up.  Malformed frames get an
ERROR with the precise code on user and pending links; on server links they are
logged and dropped, because two servers answering each other's errors loop forever.

The hub also enforces the connection-level limits (docs/SECURITY.md), on user and
pending links (server links are the mesh's business):

- at most ``max_connections`` links, of which at most ``max_pending_connections`` not yet
  authenticated, ``max_pending_per_address`` of them (and ``max_unidentified_per_address``
  without an identifying frame) from one source address; a connection beyond that is closed
  at once (1013, try again later), except that at the total the address holding the most
  pending links gives up its oldest instead of a newcomer from elsewhere (services/admission.py);
- a link must send an identifying first frame within ``identify_timeout`` seconds and
  complete authentication within ``auth_timeout`` seconds, or it is closed (1008);
- a token bucket per connection (``conn_rate``/``conn_burst``) and one per user across
  all its connections and reconnects (``user_rate``/``user_burst``).  A frame that finds
  a bucket empty is not handled: it gets ``ERROR RATE_LIMITED`` and costs a strike;
  ``conn_strike_limit`` strikes within ``conn_strike_window`` seconds close the link (1008);
- ERROR frames cost the server a signature each, so a connection gets at most
  ``error_rate``/``error_burst`` of them; beyond that they are dropped and counted.

Two kinds of frames are cheap on purpose: ``FILE_CHUNK`` on an authenticated link (the
file relay paces those per user, slowing the sender down instead of refusing it) and
the fan-out of a public-channel message (one ``MSG_PUBLIC_CHANNEL`` per member, all with
the message's ``ts``: they count as one frame, up to ``max_fanout`` members).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall
from zope.interface import implementer

from socp_tw import wire
from socp_tw.interfaces import IHub, ILink, ILinkHandler, ISigner
from socp_tw.limits import DEFAULT_LIMITS, Limits, RateLimiter, Strikes
from socp_tw.logs import get_logger
from socp_tw.services.admission import Admission

__all__ = ["CLOSE_POLICY", "CLOSE_TRY_AGAIN", "Hub"]

CLOSE_POLICY = 1008  # RFC 6455: policy violation (too slow to identify, rate limit abused)
CLOSE_TRY_AGAIN = 1013  # RFC 6455: try again later (server full)

#: Frames that never identify a link nor show progress: they do not stop the identify timer.
_IDLE_TYPES = frozenset({"HEARTBEAT", "CTRL_CLOSE", "ERROR", "ACK"})


@dataclass(eq=False)
class _Conn:
    """The hub's per-connection bookkeeping (user and pending links)."""

    link: ILink
    timer: IDelayedCall | None = None
    identified: bool = False  # a handler claimed one of its frames
    fanout_ts: int | None = None  # ts of the public-channel message being fanned out
    fanout_frames: int = 0
    closing: bool = False  # closed by a limit: its remaining frames are dropped


@implementer(IHub)
class Hub(Service):
    """Track accepted links, dispatch their frames, and hold them to the connection limits."""

    name = "hub"
    _log = get_logger("socp_tw.hub")

    def __init__(self, signer: ISigner, clock: Any = None, limits: Limits = DEFAULT_LIMITS) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self._signer = ISigner(signer)
        self._clock = clock
        self.limits = limits
        self._claims: dict[str, ILinkHandler] = {}
        self._bound: dict[str, ILinkHandler] = {}
        self._conns: dict[str, _Conn] = {}
        self.links: dict[str, ILink] = {}
        self.counters: Counter[str] = Counter()
        max_keys = limits.max_connections
        self._conn_rate = RateLimiter(limits.conn_rate, limits.conn_burst, clock, max_keys=max_keys)
        self._user_rate = RateLimiter(limits.user_rate, limits.user_burst, clock, max_keys=max_keys)
        self._error_rate = RateLimiter(limits.error_rate, limits.error_burst, clock, max_keys=max_keys)
        self._strikes = Strikes(limits.conn_strike_limit, limits.conn_strike_window, clock, max_keys=max_keys)
        self._admission = Admission(limits)

    # -- IHub -----------------------------------------------------------------------------------------

    def claim(self, types: Iterable[str], handler: ILinkHandler) -> None:
        """Route first frames of ``types`` to ``handler``."""
        handler = ILinkHandler(handler)
        for frame_type in types:
            self._claims[frame_type] = handler

    def bind(self, link: ILink, handler: ILinkHandler) -> None:
        """Send every later frame of ``link`` to ``handler`` (the peer has identified itself)."""
        self._bound[link.link_id] = ILinkHandler(handler)
        conn = self._conns.get(link.link_id)
        if conn is not None:
            self._identified(conn)

    def pending_links(self) -> int:
        """Links not yet authenticated as a user or a server."""
        return self._admission.pending()

    def link_opened(self, link: ILink) -> None:
        limits = self.limits
        if len(self.links) >= limits.max_connections:
            self._turn_away(link, f"server full ({limits.max_connections} connections)")
            return
        verdict = self._admission.check(link)
        if not verdict.admit:
            self._turn_away(link, verdict.why, verdict.counter)
            return
        if verdict.evict is not None:
            self._evict(verdict.evict, verdict.why)
        self._admission.add(link)
        self.links[link.link_id] = link
        conn = self._conns[link.link_id] = _Conn(link)
        if self.running:
            conn.timer = self._clock.callLater(limits.identify_timeout, self._identify_deadline, conn)
        self.counters["links_opened"] += 1
        self._log.debug("Link {link} opened from {peer}", link=link.link_id, peer=link.peer)

    def frame_received(self, link: ILink, envelope: wire.Envelope) -> None:
        if link.link_id not in self.links:
            self.counters["dropped.unregistered"] += 1  # turned away at open, still closing
            return
        conn = self._conns.get(link.link_id)
        if conn is not None and link.role != "server":
            if not self._allowed(conn, envelope):
                return
            if envelope.type not in _IDLE_TYPES and (
                link.link_id in self._bound or envelope.type in self._claims
            ):
                self._identified(conn)
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
        if link.link_id not in self.links:
            self.counters["dropped.unregistered"] += 1
            return
        conn = self._conns.get(link.link_id)
        if conn is not None and not self._allowed(conn, None):
            return
        self.send_error(link, error.code, error.detail)

    def send_error(self, link: ILink, code: str, detail: str, ref: str | None = None) -> None:
        if not self.allow_error(link, code):
            return
        self.counters["errors_sent." + code] += 1
        detail = detail[: self.limits.max_error_detail_chars]
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

    def allow_error(self, link: ILink, code: str = "") -> bool:
        """May the server sign one more ERROR for ``link``?  False past the connection's error budget
        (the error is then dropped and counted: a flood of bad frames must not buy signatures)."""
        if link.role == "server" or link.link_id not in self._conns:
            return True
        if self._error_rate.allow(link.link_id):
            return True
        self.counters["errors_suppressed"] += 1
        self._log.debug(
            "ERROR {code} to link {link} not sent: over its error budget", code=code, link=link.link_id
        )
        return False

    def link_closed(self, link: ILink, reason: str | None) -> None:
        if self.links.pop(link.link_id, None) is None:
            return
        self._forget(link)
        handler = self._bound.pop(link.link_id, None)
        self.counters["links_closed"] += 1
        self._log.debug("Link {link} closed ({reason})", link=link.link_id, reason=reason)
        if handler is not None:
            handler.link_closed(link, reason)

    def stopService(self) -> None:
        """Close every link cleanly (1001 going away) so peers notice at once."""
        super().stopService()
        for conn in self._conns.values():
            self._cancel(conn)
        for link in list(self.links.values()):
            link.close(1001, "server shutting down")

    # -- limits -------------------------------------------------------------------------------------

    def _identified(self, conn: _Conn) -> None:
        if not conn.identified:
            conn.identified = True
            self._admission.identified(conn.link)

    def _evict(self, link: ILink, why: str) -> None:
        """Close a pending link to make room for a newcomer from a less crowded address."""
        self.counters["refused.evicted"] += 1
        self._log.warn(
            "Closed pending link {link} from {peer}: {why}", link=link.link_id, peer=link.peer, why=why
        )
        conn = self._conns.get(link.link_id)
        if conn is not None:
            conn.closing = True
            self._cancel(conn)
        self._admission.remove(link)
        link.close(CLOSE_TRY_AGAIN, why)

    def _turn_away(self, link: ILink, why: str, counter: str = "full") -> None:
        self.counters["refused." + counter] += 1
        self._log.warn("Refused connection from {peer}: {why}", peer=link.peer, why=why)
        link.close(CLOSE_TRY_AGAIN, why)

    def _cost(self, conn: _Conn, envelope: wire.Envelope | None) -> float:
        """What a frame costs its buckets (see the module docstring for the two cheap kinds)."""
        if envelope is None or conn.link.role != "user":
            return 1.0
        if envelope.type == "FILE_CHUNK":
            return 0.0
        if envelope.type == "MSG_PUBLIC_CHANNEL":
            if envelope.ts == conn.fanout_ts and conn.fanout_frames < self.limits.max_fanout:
                conn.fanout_frames += 1
                return 0.0
            conn.fanout_ts, conn.fanout_frames = envelope.ts, 1
        return 1.0

    def _allowed(self, conn: _Conn, envelope: wire.Envelope | None) -> bool:
        """Spend the frame's cost from the connection's (and its user's) bucket; refuse it if empty."""
        link = conn.link
        if conn.closing:
            self.counters["dropped.closing"] += 1
            return False
        cost = self._cost(conn, envelope)
        if cost == 0:
            return True
        user_key = link.identity.lower() if link.role == "user" and link.identity else None
        if self._conn_rate.allow(link.link_id, cost):
            if user_key is None or self._user_rate.allow(user_key, cost):
                return True
            wait, limit = self._user_rate.retry_after(user_key, cost), f"{self.limits.user_rate:g}/s per user"
        else:
            wait, limit = self._conn_rate.retry_after(link.link_id, cost), f"{self.limits.conn_rate:g}/s"
        self.counters["rate_limited"] += 1
        frame_type = envelope.type if envelope is not None else None
        if self._strikes.strike(link.link_id):
            self.counters["closed.rate_limited"] += 1
            self._log.warn(
                "Closed link {link} ({peer}, {who}): rate limit exceeded {count} times in {window:g} s",
                link=link.link_id,
                peer=link.peer,
                who=link.identity or link.role,
                count=self.limits.conn_strike_limit,
                window=self.limits.conn_strike_window,
            )
            self._close(conn, "rate limit exceeded repeatedly")
            return False
        self.send_error(
            link,
            "RATE_LIMITED",
            f"too many frames (limit {limit}); retry after {wait:.2f} s",
            ref=frame_type,
        )
        return False

    def _identify_deadline(self, conn: _Conn) -> None:
        """``identify_timeout`` after opening: close a link that has not identified itself; give one
        that has (a login in progress) until ``auth_timeout`` to authenticate."""
        conn.timer = None
        link = conn.link
        if self._conns.get(link.link_id) is not conn or link.role != "pending" or conn.closing:
            return
        if conn.identified:
            remaining = self.limits.auth_timeout - self.limits.identify_timeout
            if remaining > 0:
                conn.timer = self._clock.callLater(remaining, self._auth_deadline, conn)
                return
            self._auth_deadline(conn)
            return
        self._timed_out(conn, "identify_timeout", "no identifying frame", self.limits.identify_timeout)

    def _auth_deadline(self, conn: _Conn) -> None:
        conn.timer = None
        link = conn.link
        if self._conns.get(link.link_id) is not conn or link.role != "pending" or conn.closing:
            return
        self._timed_out(conn, "auth_timeout", "not authenticated", self.limits.auth_timeout)

    def _timed_out(self, conn: _Conn, counter: str, what: str, timeout: float) -> None:
        """Close a pending link that missed a deadline: counted, logged, reason sent with the close."""
        self.counters["closed." + counter] += 1
        reason = f"{what} within {timeout:g} s"
        self._log.info(
            "Closed link {link} from {peer}: {reason}",
            link=conn.link.link_id,
            peer=conn.link.peer,
            reason=reason,
        )
        self._close(conn, reason)

    def _close(self, conn: _Conn, reason: str) -> None:
        """Close a link for breaking a limit (1008); frames still arriving before it is gone are dropped."""
        conn.closing = True
        self._cancel(conn)
        conn.link.close(CLOSE_POLICY, reason)

    @staticmethod
    def _cancel(conn: _Conn) -> None:
        if conn.timer is not None and conn.timer.active():
            conn.timer.cancel()
        conn.timer = None

    def _forget(self, link: ILink) -> None:
        """Drop a closed link's limiter state (its user's bucket stays, for reconnects)."""
        conn = self._conns.pop(link.link_id, None)
        if conn is not None:
            self._cancel(conn)
        self._admission.remove(link)
        self._conn_rate.forget(link.link_id)
        self._error_rate.forget(link.link_id)
        self._strikes.clear(link.link_id)
