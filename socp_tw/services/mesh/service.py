"""The :class:`Mesh` facade: one service, its state, and the IPeerLinks / IPeerLinkEvents entry points."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from socp_tw import crypto, wire
from socp_tw.bootstrap import BootstrapEntry
from socp_tw.interfaces import (
    IDialer,
    IHub,
    ILink,
    IOutgoingLinks,
    IPeerLinkEvents,
    IPeerLinks,
    IPresence,
    IPresenceObserver,
    ISigner,
    IUserKeys,
    IWorkers,
)
from socp_tw.limits import DEFAULT_LIMITS, Limits, RateLimiter, Strikes
from socp_tw.logs import Aggregated, get_logger
from socp_tw.services.mesh.gossip import Gossip
from socp_tw.services.mesh.handshake import Handshake
from socp_tw.services.mesh.joining import Joining
from socp_tw.services.mesh.links import Links
from socp_tw.services.mesh.linksets import LinkSets
from socp_tw.services.mesh.liveness import Liveness
from socp_tw.services.mesh.pins import PEERS_FILE, KnownServer, PinBook, PinStore
from socp_tw.services.mesh.refusals import REFUSAL_WINDOW, SIGNED_REFUSALS, Refusals
from socp_tw.services.mesh.relay import Relay
from socp_tw.services.mesh.retained import Retained
from socp_tw.services.mesh.seen import SeenCache
from socp_tw.services.mesh.shared import SharedSignature
from socp_tw.services.mesh.state import CLAIMED_TYPES, CLOSE_GOING_AWAY, _LinkState
from socp_tw.services.mesh.userfrom import UserFrom
from socp_tw.services.mesh.verify import Verify


@implementer(IPeerLinks, IPeerLinkEvents, IPresenceObserver)
class Mesh(
    Handshake, Joining, Refusals, Links, LinkSets, Liveness, Verify, Gossip, UserFrom, Relay, PinBook, Service
):
    """All server links of this server, and the rules of PROTOCOL.md §4.

    The parts (one module each) share this object's state: ``_links`` (link_id ->
    :class:`_LinkState`), ``_by_server`` (server_id -> its one live link), ``_known``
    (the key book), ``_dialers``, ``counters``.
    """

    name = "mesh"
    _log = get_logger("socp_tw.mesh")

    def __init__(
        self,
        signer: ISigner,
        hub: IHub,
        presence: IPresence,
        *,
        reactor: IReactorTime | None = None,
        data_dir: str | Path | None = None,
        peers: Sequence[tuple[str, int]] = (),
        bootstrap: Sequence[BootstrapEntry] = (),
        advertise: Callable[[], tuple[str, int]] | tuple[str, int] | None = None,
        workers: IWorkers | None = None,
        heartbeat_interval: float = 15.0,
        dead_after: float = 45.0,
        withdraw_after: float = 15.0,
        gossip_dial_delay: float = 1.0,
        close_grace: float = 2.0,
        link_set_delay: float = 0.5,
        seen_max: int = 100_000,
        seen_max_age: float = 600.0,
        forged_limit: int = 10,
        signed_refusals: int = SIGNED_REFUSALS,
        forged_window: float = 60.0,
        stop_timeout: float = 10.0,
        now_ms: Callable[[], int] = wire.now_ms,
        limits: Limits = DEFAULT_LIMITS,
        user_keys: IUserKeys,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._clock: IReactorTime = reactor
        self._signer = ISigner(signer)
        self._hub = IHub(hub)
        self._presence = IPresence(presence)
        self._user_keys = IUserKeys(user_keys)
        self._workers = IWorkers(workers) if workers is not None else None
        self._advertise = advertise
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self.withdraw_after = withdraw_after
        self.gossip_dial_delay = gossip_dial_delay
        self.close_grace = close_grace
        # The relay rule (linksets.py): our link set as last told, the frames skipped for someone.
        self.link_set_delay = link_set_delay
        self._link_set: SharedSignature | None = None
        self._link_set_seq = 0
        self._link_set_timer: IDelayedCall | None = None
        self._retained = Retained(reactor)
        # HEARTBEAT {} is the same on every link: one signature a round serves them all.
        self._heartbeats = SharedSignature(self._signer, reactor, "HEARTBEAT", {}, now_ms)
        # Bad signatures per link id: ``forged_limit`` within ``forged_window`` s cut the link off.
        self._strikes = Strikes(forged_limit, forged_window, reactor)
        self.stop_timeout = stop_timeout
        self._now_ms = now_ms
        self._seen = SeenCache(reactor, seen_max, seen_max_age)
        self.counters: Counter[str] = Counter()
        # Presence frames refused for who sent them, or for a changed user key: one line a minute.
        self._refusals = Aggregated(reactor, 60.0)
        # Refused server links per remote address: past a few a minute, no signed ERROR (refusals.py).
        self._refused_hosts = Strikes(signed_refusals, REFUSAL_WINDOW, reactor, max_keys=10_000)
        self._refused_links: set[str] = set()
        # Per-peer pacing (docs/SECURITY.md): a link past its bucket is not read for a while.
        self.peer_rate = limits.peer_rate
        self._peer_rate = RateLimiter(limits.peer_rate, limits.peer_burst, reactor, max_keys=limits.max_peers)
        self._paused: dict[str, IDelayedCall] = {}

        own_key = crypto.load_public_key(self._signer.public_key_text)
        self._own_pubkey = crypto.encode_public_key(own_key)
        self._own_pem = crypto.encode_public_key(own_key, pem=True)

        self._pins = PinStore(Path(data_dir) / PEERS_FILE if data_dir is not None else None)
        self._known: dict[str, KnownServer] = self._pins.load()
        self._boot_keys: dict[tuple[str, int], str] = {}
        self._introducer_targets: list[tuple[str, int, bool]] = []  # host, port, key given as PEM
        for entry in bootstrap:
            self._add_bootstrap(entry)
        for host, port in peers:
            if not any((h, p) == (host, port) for h, p, _ in self._introducer_targets):
                self._introducer_targets.append((host, port, False))

        self._links: dict[str, _LinkState] = {}  # link_id -> state, every server link
        self._by_server: dict[str, _LinkState] = {}  # server_id -> the one live link
        self._handlers: dict[str, Callable[..., None]] = {}
        self._preparers: dict[str, Callable[[wire.Envelope], Any]] = {}
        self._observers: list[Callable[[], None]] = []
        self._withdraw_timers: dict[str, IDelayedCall] = {}
        self._outgoing: IOutgoingLinks | None = None
        self._dialers: dict[str, IDialer] = {}  # server_id -> its dialer
        self._introducers: list[IDialer] = []  # dialers of --peer/--bootstrap, id not yet known
        self._close_waiters: dict[str, Deferred] = {}
        self._saving: Deferred | None = None
        self._save_again = False

        self._hub.claim(CLAIMED_TYPES, self)
        self._presence.add_observer(self)

    # -- configuration ---------------------------------------------------------------------

    def set_outgoing(self, outgoing: IOutgoingLinks) -> None:
        """Attach the service that owns outgoing links (``socp_tw.services.mesh.dialing.OutgoingLinks``)."""
        self._outgoing = IOutgoingLinks(outgoing)

    @property
    def server_id(self) -> str:
        return self._signer.server_id

    def advertised_address(self) -> tuple[str, int]:
        """The (host, port) we announce to peers."""
        if callable(self._advertise):
            return self._advertise()
        if self._advertise is not None:
            return self._advertise
        return ("127.0.0.1", 0)

    # -- service -----------------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self._outgoing is None:
            return
        introducer_addresses = set()
        for host, port, pem in self._introducer_targets:
            introducer_addresses.add((host, port))
            dialer = self._outgoing.dialer(host, port, server_id=None, join=True)
            dialer.pem = pem
            self._introducers.append(dialer)
            dialer.resume()
        for known in self._known.values():
            if (
                known.linked
                and known.host is not None
                and (known.host, known.port) not in introducer_addresses
            ):
                self._want_link(known.server_id)

    def stopService(self) -> Deferred:
        super().stopService()
        if self._link_set_timer is not None and self._link_set_timer.active():
            self._link_set_timer.cancel()
        self._link_set_timer = None
        for timer in self._withdraw_timers.values():
            if timer.active():
                timer.cancel()
        self._withdraw_timers.clear()
        for link_id, paused in list(self._paused.items()):  # read again: the close replies must arrive
            if paused.active():
                paused.cancel()
            state = self._links.get(link_id)
            if state is not None:
                self._unpause(state.link)
        self._paused.clear()
        waiting = []
        for state in list(self._links.values()):
            self._stop_timers(state)
            waiter = self._close_waiters.setdefault(state.link.link_id, Deferred())
            waiting.append(waiter)
            self.goodbye(state.link)
            state.link.close(CLOSE_GOING_AWAY, "server shutting down")
        if self._saving is not None:
            saving: Deferred = Deferred()
            self._saving.addBoth(lambda r: saving.callback(None) or r)
            waiting.append(saving)
        if not waiting:
            return succeed(None)
        done = DeferredList(waiting)
        timeout = self._clock.callLater(self.stop_timeout, self._give_up_waiting)
        done.addBoth(lambda r: timeout.cancel() if timeout.active() else None)
        return done

    def _give_up_waiting(self) -> None:
        for waiter in list(self._close_waiters.values()):
            if not waiter.called:
                waiter.callback(None)
        self._close_waiters.clear()

    # -- IPeerLinks ----------------------------------------------------------------------------

    def connected_servers(self) -> list[str]:
        return sorted(self._by_server)

    def known_servers(self) -> list[str]:
        """Sorted ids of every server whose key is pinned."""
        return sorted(self._known)

    def server_key(self, server_id: str) -> RSAPublicKey | None:
        known = self._known.get(server_id)
        return known.key if known is not None else None

    def server_address(self, server_id: str) -> tuple[str, int] | None:
        known = self._known.get(server_id)
        return (known.host, known.port) if known is not None and known.host is not None else None

    def open_links(self) -> int:
        """How many server links exist, live or not yet identified or closing (tests, status)."""
        return len(self._links)

    def link_to(self, server_id: str) -> ILink | None:
        """The live link to ``server_id``, or None."""
        state = self._by_server.get(server_id)
        return state.link if state is not None else None

    def acks_deliveries(self, server_id: str) -> bool:
        known = self._known.get(server_id)
        return known is not None and known.acks

    def on_frame(
        self, type: str, handler: Callable[..., None], prepare: Callable[[wire.Envelope], Any] | None = None
    ) -> None:
        self._handlers[type] = handler
        if prepare is not None:
            self._preparers[type] = prepare

    def add_change_observer(self, callback: Callable[[], None]) -> None:
        self._observers.append(callback)

    def _changed(self) -> None:
        for callback in list(self._observers):
            try:
                callback()
            except Exception:
                self._log.failure("Mesh change observer {observer} failed", observer=callback)

    def frame_received(self, link: ILink, envelope: wire.Envelope) -> None:
        state = self._links.get(link.link_id)
        if state is None:
            if not link.outgoing:
                self._first_frame(link, envelope)
            return
        state.last_seen = self._clock.seconds()
        self._pace(state)
        if state.joining:
            self._joining_frame(state, envelope)
        elif state.server_id is not None:
            self._server_frame(state, envelope)

    def frame_rejected(self, link: ILink, error: wire.FrameError) -> None:
        """A malformed frame on an outgoing link: logged and dropped, never answered."""
        state = self._links.get(link.link_id)
        if state is not None:
            state.last_seen = self._clock.seconds()
            self._pace(state)
        self.counters["rejected." + error.code] += 1
        self._log.warn(
            "Dropped malformed frame from server {server} ({code}: {detail})",
            server=link.identity or link.peer,
            code=error.code,
            detail=error.detail,
        )

    def link_closed(self, link: ILink, reason: str | None) -> None:
        self._refused_links.discard(link.link_id)
        self._peer_rate.forget(link.link_id)
        self._strikes.clear(link.link_id)
        paused = self._paused.pop(link.link_id, None)
        if paused is not None and paused.active():
            paused.cancel()
        state = self._links.pop(link.link_id, None)
        waiter = self._close_waiters.pop(link.link_id, None)
        if waiter is not None and not waiter.called:
            waiter.callback(None)
        if state is None:
            return
        self._stop_timers(state)
        if state.joining:
            if state.welcome_refused is not None:
                self._log.info(
                    "Join through {url} failed: its SERVER_WELCOME was refused ({detail})",
                    url=state.dialer.url,
                    detail=state.welcome_refused,
                )
            else:
                self._log.info(
                    "Join through {url} failed: link closed before SERVER_WELCOME ({reason})",
                    url=state.dialer.url,
                    reason=reason,
                )
            return
        self._never_answered(state, reason)
        self._link_down(state, reason or "closed")
