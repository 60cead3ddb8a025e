"""The server mesh (PROTOCOL.md §4): joining, pinned keys, presence gossip, liveness, routing.

One :class:`Mesh` owns every server-to-server link, whichever side dialled it:
incoming links reach it through the hub (it claims the identifying frame types),
outgoing ones through ``socp_tw.protocols.peer`` (which owns the redialling).  Every
frame on a server link takes the same path: liveness, de-duplication, one
verification step (the pinned key of its ``from``), then a per-type handler.

docs/MESH.md describes the behaviour (join flow, pinning, gossip, liveness, routing
and limits); the comments here say how the code does it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from socp_tw import crypto, wire
from socp_tw.bootstrap import BootstrapEntry
from socp_tw.interfaces import (
    IHub,
    ILink,
    ILinkHandler,
    IPeerLinks,
    IPresence,
    IPresenceObserver,
    ISigner,
    IUserKeys,
    IWorkers,
)
from socp_tw.limits import DEFAULT_LIMITS, Limits, RateLimiter
from socp_tw.logs import Aggregated, get_logger
from socp_tw.privatefile import write_private
from socp_tw.protocols.links import send_to_all
from socp_tw.services.userkeys import DIFFERS, FULL, UserKeys
from socp_tw.timers import repeating, stop_repeating

PEERS_FILE = "peers.json"

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008

#: First frames of an incoming server link (PROTOCOL.md §1).
CLAIMED_TYPES = ("SERVER_HELLO_JOIN", "SERVER_HELLO_LINK", "SERVER_ANNOUNCE")
#: Gossip: flooded to every link but the arrival one, de-duplicated by ``seen_ids``.
GOSSIP_TYPES = frozenset({"USER_ADVERTISE", "USER_REMOVE", "SERVER_ANNOUNCE"})
#: Frames a server link never answers, whatever happens (PROTOCOL.md §5).
NEVER_ANSWERED = frozenset({"ERROR", "ACK"})

#: Our profile's capabilities, listed in ``ext`` of our own {host, port, pubkey} payloads
#: (docs/PROTOCOL-EXTENSIONS.md): "deliver-ack": we confirm each delivered SERVER_DELIVER.
EXT_DELIVER_ACK = "deliver-ack"
OUR_EXTENSIONS = [EXT_DELIVER_ACK]

MAX_KNOWN_SERVERS = 1000
#: Seconds the dialler of a losing duplicate link waits before closing it (pending frames leave).
DUPLICATE_CLOSE_DELAY = 0.25
MAX_META_BYTES = 4096
MAX_ANSWERED_TYPES = 64
MAX_HOST_CHARS = 255
_HOST_RE = re.compile(r"[A-Za-z0-9._\-]+|[0-9A-Fa-f:.]+")  # a host name, IPv4 or IPv6 literal


class PinStoreError(Exception):
    """``peers.json`` exists but cannot be read: refuse to start rather than forget pinned keys."""


class KeyRefused(Exception):
    """A server key or identity was refused; ``code`` is the ERROR code for a pending link."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


# -- seen_ids ---------------------------------------------------------------------------


class SeenCache:
    """The ``seen_ids`` cache of PROTOCOL.md §4: bounded in size and in age.

    Keys are ``(ts, from, to, sha256(canonical(payload)))``.  Entries leave after
    ``max_age`` seconds (on the injected clock) or, oldest first, when more than
    ``max_size`` are held.
    """

    def __init__(self, clock: IReactorTime, max_size: int = 100_000, max_age: float = 600.0) -> None:
        self._clock = clock
        self.max_size = max_size
        self.max_age = max_age
        self._entries: OrderedDict[tuple, float] = OrderedDict()

    @staticmethod
    def key(envelope: wire.Envelope, canonical_payload: bytes | None = None) -> tuple:
        """The de-duplication key of a frame (the signature is deliberately not part of it).

        ``canonical_payload`` is ``canonical(envelope.payload)`` when the caller has it.
        """
        if canonical_payload is None:
            canonical_payload = wire.canonical(envelope.payload)
        digest = hashlib.sha256(canonical_payload).digest()
        return (envelope.ts, envelope.from_, envelope.to, digest)

    def _expire(self) -> None:
        horizon = self._clock.seconds() - self.max_age
        entries = self._entries
        while entries:
            oldest_key, added = next(iter(entries.items()))
            if added > horizon:
                break
            del entries[oldest_key]

    def __contains__(self, key: tuple) -> bool:
        self._expire()
        return key in self._entries

    def add(self, key: tuple) -> None:
        """Remember ``key`` as seen now."""
        self._entries[key] = self._clock.seconds()
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)


# -- pinned keys and the address book ------------------------------------------------------


@dataclass
class KnownServer:
    """What we know of another server: its pinned key and where it listens."""

    server_id: str
    pubkey: str  # normalised: b64u(DER SPKI)
    key: RSAPublicKey
    pem: bool = False  # the server sent its own key as b64u(PEM): mirror that (§8)
    host: str | None = None
    port: int | None = None
    linked: bool = False  # we have had a direct link with it (only those are redialled after a restart)
    acks: bool = False  # it said it confirms deliveries (``ext`` has "deliver-ack")
    #: Its own signed {host, port, pubkey} (payload, sig), re-sent to new neighbours as a SERVER_ANNOUNCE.
    described: tuple[dict[str, Any], str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "pubkey": self.pubkey,
            "pem": self.pem,
            "host": self.host,
            "port": self.port,
            "linked": self.linked,
            "acks": self.acks,
        }


class PinStore:
    """``peers.json`` in the data dir: pinned keys and addresses, written atomically, mode 0600."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None

    def load(self) -> dict[str, KnownServer]:
        """Read the file (a missing file is an empty book); raise :class:`PinStoreError` if corrupt."""
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text("utf-8"))
            servers = data["servers"]
            if not isinstance(servers, dict):
                raise TypeError("'servers' is not an object")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PinStoreError(f"{self.path} is unreadable ({e}); fix or remove it") from None
        known: dict[str, KnownServer] = {}
        for server_id, item in servers.items():
            try:
                if not wire.is_uuid(server_id):
                    raise ValueError("bad server id")
                key = crypto.load_public_key(item["pubkey"])
                host, port = item.get("host"), item.get("port")
                if host is not None and not (isinstance(host, str) and isinstance(port, int)):
                    raise ValueError("bad address")
            except (KeyError, TypeError, ValueError) as e:  # BadKey is a ValueError
                raise PinStoreError(f"{self.path}: entry {server_id!r} is invalid ({e})") from None
            known[server_id] = KnownServer(
                server_id,
                crypto.encode_public_key(key),
                key,
                bool(item.get("pem", False)),
                host,
                port,
                bool(item.get("linked", False)),
                bool(item.get("acks", False)),
            )
        return known

    def save(self, snapshot: dict[str, dict[str, Any]]) -> None:
        """Write ``snapshot`` (server_id -> KnownServer.to_json()) atomically."""
        if self.path is None:
            return
        data = json.dumps({"version": 1, "servers": snapshot}, indent=1, sort_keys=True).encode("utf-8")
        write_private(self.path, data)


# -- links ---------------------------------------------------------------------------------


@dataclass(eq=False)
class _LinkState:
    """The mesh's view of one server link."""

    link: ILink
    dialer: Any = None  # the PeerDialer that owns an outgoing link
    server_id: str | None = None
    joining: bool = False  # outgoing, SERVER_HELLO_JOIN sent, waiting for SERVER_WELCOME
    up: bool = False  # the registered link of server_id
    retired: bool = False  # lost a duplicate-link tie-break, or dropped: closing
    healthy: bool = False  # a verified frame from the peer arrived on it
    last_seen: float = 0.0
    heartbeat: LoopingCall | None = None
    dead_timer: IDelayedCall | None = None
    failures: deque = field(default_factory=deque)
    answered_types: set = field(default_factory=set)
    said_goodbye: bool = False
    throttled: bool = False  # paced for going over peer_rate at least once (logged once)

    @property
    def direction(self) -> str:
        return "outgoing" if self.link.outgoing else "incoming"


def _parse_address_payload(payload: dict[str, Any]) -> tuple[str, int, str]:
    """``{host, port, pubkey}`` of HELLO_JOIN / HELLO_LINK / ANNOUNCE, tolerantly typed."""
    host = wire.require_str(payload, "host", max_len=MAX_HOST_CHARS).strip().strip("[]")
    if not _HOST_RE.fullmatch(host):
        raise wire.BadFieldType("payload field 'host' must be a host name or address", "host")
    port = payload.get("port")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    port = wire.require_int({"port": port}, "port", minimum=1, maximum=65535)
    pubkey = wire.require_str(payload, "pubkey", max_len=16384, allow_empty=True)  # "" is a BAD_KEY
    return host, port, pubkey


def _says_it_acks(payload: dict[str, Any]) -> bool:
    """True if a server's own {host, port, pubkey} payload lists the ``deliver-ack`` extension."""
    ext = payload.get("ext")
    return isinstance(ext, list) and EXT_DELIVER_ACK in ext


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# -- the mesh --------------------------------------------------------------------------------


@implementer(IPeerLinks, ILinkHandler, IPresenceObserver)
class Mesh(Service):
    """All server links of this server, and the rules of PROTOCOL.md §4."""

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
        seen_max: int = 100_000,
        seen_max_age: float = 600.0,
        forged_limit: int = 10,
        forged_window: float = 60.0,
        stop_timeout: float = 10.0,
        now_ms: Callable[[], int] = wire.now_ms,
        limits: Limits = DEFAULT_LIMITS,
        user_keys: IUserKeys | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self._clock: IReactorTime = reactor
        self._signer = ISigner(signer)
        self._hub = IHub(hub)
        self._presence = IPresence(presence)
        self._user_keys = IUserKeys(user_keys) if user_keys is not None else UserKeys()
        self._workers = IWorkers(workers) if workers is not None else None
        self._advertise = advertise
        self.heartbeat_interval = heartbeat_interval
        self.dead_after = dead_after
        self.withdraw_after = withdraw_after
        self.gossip_dial_delay = gossip_dial_delay
        self.close_grace = close_grace
        self.forged_limit = forged_limit
        self.forged_window = forged_window
        self.stop_timeout = stop_timeout
        self._now_ms = now_ms
        self._seen = SeenCache(reactor, seen_max, seen_max_age)
        self.counters: Counter[str] = Counter()
        # Presence frames refused for who sent them, or for a changed user key: one line a minute.
        self._refusals = Aggregated(reactor, 60.0)
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
        self._outgoing: Any = None
        self._dialers: dict[str, Any] = {}  # server_id -> PeerDialer
        self._introducers: list[Any] = []  # PeerDialers of --peer/--bootstrap, id not yet known
        self._close_waiters: dict[str, Deferred] = {}
        self._saving: Deferred | None = None
        self._save_again = False

        self._hub.claim(CLAIMED_TYPES, self)
        self._presence.add_observer(self)

    # -- configuration ---------------------------------------------------------------------

    def _add_bootstrap(self, entry: BootstrapEntry) -> None:
        norm = crypto.encode_public_key(entry.key)
        self._boot_keys[(entry.host, entry.port)] = norm
        pem = crypto.is_pem_b64u(entry.pubkey)
        if not any((h, p) == (entry.host, entry.port) for h, p, _ in self._introducer_targets):
            self._introducer_targets.append((entry.host, entry.port, pem))
        if entry.server_id is None:
            return
        known = self._known.get(entry.server_id)
        if known is not None and known.pubkey != norm:
            self._log.warn(
                "Bootstrap file pins server {server_id} to key {new}, replacing the key {old} pinned before",
                server_id=entry.server_id,
                new=crypto.fingerprint(entry.key),
                old=crypto.fingerprint(known.key),
            )
            known = None
        if known is None:
            self._known[entry.server_id] = KnownServer(
                entry.server_id, norm, entry.key, pem, entry.host, entry.port
            )

    def set_outgoing(self, outgoing: Any) -> None:
        """Attach the service that owns outgoing links (``socp_tw.protocols.peer.OutgoingLinks``)."""
        self._outgoing = outgoing

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

    def _own_key_for(self, server_id: str | None = None, pem: bool = False) -> str:
        """Our public key in the encoding ``server_id`` understands (PEM mirror, §8)."""
        known = self._known.get(server_id) if server_id else None
        return self._own_pem if pem or (known is not None and known.pem) else self._own_pubkey

    def _address_payload(self, server_id: str | None = None, pem: bool = False) -> dict[str, Any]:
        host, port = self.advertised_address()
        pubkey = self._own_key_for(server_id, pem)
        return {"host": host, "port": port, "pubkey": pubkey, "ext": OUR_EXTENSIONS}

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

    def join(self, host: str, port: int) -> Any:
        """Join (or re-join) the mesh through the introducer at ``host:port``, now."""
        dialer = self._outgoing.dialer(host, port, server_id=None, join=True)
        self._introducers.append(dialer)
        dialer.resume()
        return dialer

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

    # -- ILinkHandler (incoming links through the hub; outgoing ones through the dialer) -------

    def outgoing_opened(self, link: ILink, dialer: Any) -> None:
        """An outgoing WebSocket opened: identify ourselves (JOIN or LINK)."""
        now = self._clock.seconds()
        state = _LinkState(link, dialer, last_seen=now)
        self._links[link.link_id] = state
        link.role = "server"
        self._log.info("Connected to peer {url}", url=dialer.url)
        if dialer.server_id is None or dialer.join:
            state.joining = True
            payload = self._address_payload(dialer.server_id, getattr(dialer, "pem", False))
            link.send(self._signer.frame("SERVER_HELLO_JOIN", _host_port(dialer.host, dialer.port), payload))
            self._arm_dead_timer(state)
            return
        link.identity = dialer.server_id
        link.send(
            self._signer.frame("SERVER_HELLO_LINK", dialer.server_id, self._address_payload(dialer.server_id))
        )
        self._link_up(state, dialer.server_id)

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
        self._peer_rate.forget(link.link_id)
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
            self._log.info(
                "Join through {url} failed: link closed before SERVER_WELCOME ({reason})",
                url=state.dialer.url,
                reason=reason,
            )
            return
        self._link_down(state, reason or "closed")

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

    # -- first frames of incoming links ---------------------------------------------------------

    def _refuse(self, link: ILink, code: str, detail: str) -> None:
        """Refuse a pending link that tried to identify as a server: one ERROR, then close."""
        self.counters["refused." + code] += 1
        self._log.warn(
            "Refused server link {link} from {peer} ({code}): {detail}",
            link=link.link_id,
            peer=link.peer,
            code=code,
            detail=detail,
        )
        # The ERROR is signed on the pool: close only once it has been written, or it is lost.
        frame = self._signer.frame("ERROR", "*", wire.error_payload(code, detail))
        link.send(frame)
        frame.addBoth(lambda _: link.close(CLOSE_POLICY, detail[:120]))

    def _first_frame(self, link: ILink, envelope: wire.Envelope) -> None:
        if envelope.type == "SERVER_HELLO_JOIN":
            self._accept_join(link, envelope)
        elif envelope.type in ("SERVER_HELLO_LINK", "SERVER_ANNOUNCE"):
            self._accept_link(link, envelope)

    def _check_key(
        self, server_id: str, key_text: str, source: str, address: tuple[str, int] | None = None
    ) -> tuple[RSAPublicKey, str]:
        """Load a server key and check it against the pins; raise :class:`KeyRefused`."""
        try:
            key = crypto.load_public_key(key_text)
        except crypto.BadKey as e:
            raise KeyRefused("BAD_KEY", f"key of server {server_id} is unusable: {e.detail}") from None
        norm = crypto.encode_public_key(key)
        if norm == self._own_pubkey:
            raise KeyRefused("BAD_KEY", f"{source} offers this server's own key")
        known = self._known.get(server_id)
        if known is not None and known.pubkey != norm:
            self._key_changed(server_id, known.key, key, source)
            raise KeyRefused("BAD_KEY", f"key of server {server_id} differs from the key pinned for it")
        if address is not None:
            expected = self._boot_keys.get(address)
            if expected is not None and expected != norm:
                self._key_changed(
                    server_id, crypto.load_public_key(expected), key, source + " (bootstrap address)"
                )
                raise KeyRefused(
                    "BAD_KEY", f"{_host_port(*address)} is pinned to another key by the bootstrap file"
                )
        return key, norm

    def _key_changed(self, server_id: str, pinned: RSAPublicKey, offered: RSAPublicKey, source: str) -> None:
        self.counters["key_refused"] += 1
        self._log.error(
            "REFUSED changed key for server {server_id} ({source}): pinned {pinned}, offered {offered}",
            server_id=server_id,
            source=source,
            pinned=crypto.fingerprint(pinned),
            offered=crypto.fingerprint(offered),
        )

    def _remember(
        self,
        server_id: str,
        key: RSAPublicKey,
        key_text: str,
        address: tuple[str, int] | None,
        source: str,
        linked: bool = False,
    ) -> KnownServer:
        """Pin ``key`` to ``server_id`` (first contact) and record its address."""
        known = self._known.get(server_id)
        changed = False
        pem = crypto.is_pem_b64u(key_text)
        if known is None:
            if len(self._known) >= MAX_KNOWN_SERVERS:
                raise KeyRefused("BAD_FRAME", f"this server already knows {MAX_KNOWN_SERVERS} servers")
            known = KnownServer(server_id, crypto.encode_public_key(key), key, pem)
            self._known[server_id] = known
            changed = True
            self._log.info(
                "Pinned key {fingerprint} for server {server_id} on first contact ({source})",
                fingerprint=crypto.fingerprint(key),
                server_id=server_id,
                source=source,
            )
        elif known.pem != pem and linked:
            known.pem, changed = pem, True
        if address is not None and (known.host, known.port) != address:
            if known.host is not None:
                self._log.info(
                    "Server {server_id} now listens on {address}",
                    server_id=server_id,
                    address=_host_port(*address),
                )
            known.host, known.port = address
            changed = True
            dialer = self._dialers.get(server_id)
            if dialer is not None:
                dialer.retarget(*address)
        if linked and not known.linked:
            known.linked, changed = True, True
        if changed:
            self._save_pins()
        return known

    def _accept_join(self, link: ILink, envelope: wire.Envelope) -> None:
        """SERVER_HELLO_JOIN: assign an id, pin the key, answer SERVER_WELCOME; the link stays."""
        try:
            host, port, key_text = _parse_address_payload(envelope.payload)
        except wire.FrameError as e:
            self._refuse(link, e.code, e.detail)
            return
        try:
            key = crypto.load_public_key(key_text)
        except crypto.BadKey as e:
            self._refuse(link, "BAD_KEY", e.detail)
            return
        if envelope.sig and not crypto.verify_payload(key, envelope.payload, envelope.sig):
            self._refuse(link, "INVALID_SIG", "SERVER_HELLO_JOIN is not signed by the key it carries")
            return
        norm = crypto.encode_public_key(key)
        requested = envelope.from_ if wire.is_uuid(envelope.from_) else None
        assigned = requested
        if requested is None or requested == self.server_id:
            assigned = wire.new_uuid4()
        elif requested in self._known and self._known[requested].pubkey == norm and not envelope.sig:
            # Anyone can copy a public key: a pinned id must prove it holds the private one.
            self._refuse(
                link, "INVALID_SIG", f"server {requested} is known here: its SERVER_HELLO_JOIN must be signed"
            )
            return
        elif requested in self._known and self._known[requested].pubkey != norm:
            self._key_changed(requested, self._known[requested].key, key, "SERVER_HELLO_JOIN")
            assigned = wire.new_uuid4()
            self._log.warn(
                "Server id {requested} is taken by another key: assigning {assigned} to the joiner",
                requested=requested,
                assigned=assigned,
            )
        try:
            key, norm = self._check_key(assigned, key_text, "SERVER_HELLO_JOIN", (host, port))
            known = self._remember(assigned, key, key_text, (host, port), "SERVER_HELLO_JOIN", linked=True)
        except KeyRefused as e:
            self._refuse(link, e.code, e.detail)
            return
        known.acks = _says_it_acks(envelope.payload)
        if envelope.sig:
            known.described = (envelope.payload, envelope.sig)
        self._log.info("Server joining {server_id}", server_id=assigned)
        self.counters["joins_accepted"] += 1
        link.role = "server"
        link.identity = assigned
        self._hub.bind(link, self)
        state = _LinkState(link, last_seen=self._clock.seconds())
        self._links[link.link_id] = state
        link.send(self._signer.frame("SERVER_WELCOME", assigned, self._welcome_payload(assigned)))
        self._link_up(state, assigned)
        self._want_link(assigned)

    def _welcome_payload(self, joiner: str) -> dict[str, Any]:
        """SERVER_WELCOME: us and every live linked server, in both list forms (§4)."""
        host, port = self.advertised_address()
        servers = [
            {
                "server_id": self.server_id,
                "host": host,
                "port": port,
                "pubkey": self._own_key_for(joiner),
                "ext": OUR_EXTENSIONS,
            }
        ]
        for server_id in self.connected_servers():
            known = self._known.get(server_id)
            if server_id == joiner or known is None or known.host is None:
                continue
            pubkey = crypto.encode_public_key(known.key, pem=known.pem)
            servers.append({"server_id": server_id, "host": known.host, "port": known.port, "pubkey": pubkey})
        clients = [
            {"user_id": s["server_id"], "host": s["host"], "port": s["port"], "pubkey": s["pubkey"]}
            for s in servers
        ]
        return {"assigned_id": joiner, "clients": clients, "servers": servers}

    def _accept_link(self, link: ILink, envelope: wire.Envelope) -> None:
        """SERVER_HELLO_LINK (or SERVER_ANNOUNCE) as the first frame of an incoming link."""
        server_id = envelope.from_
        try:
            host, port, key_text = _parse_address_payload(envelope.payload)
        except wire.FrameError as e:
            self._refuse(link, e.code, e.detail)
            return
        if server_id == self.server_id:
            self._refuse(link, "BAD_FRAME", f"{envelope.type} claims this server's own id")
            return
        try:
            key, _ = self._check_key(server_id, key_text, envelope.type, (host, port))
            pinned = server_id in self._known or (host, port) in self._boot_keys
            if envelope.sig or pinned:
                if not crypto.verify_payload(key, envelope.payload, envelope.sig):
                    raise KeyRefused("INVALID_SIG", f"{envelope.type} signature does not verify")
            known = self._remember(server_id, key, key_text, (host, port), envelope.type, linked=True)
        except KeyRefused as e:
            self._refuse(link, e.code, e.detail)
            return
        known.acks = _says_it_acks(envelope.payload)
        if envelope.sig:
            known.described = (envelope.payload, envelope.sig)
        link.role = "server"
        link.identity = server_id
        self._hub.bind(link, self)
        state = _LinkState(link, last_seen=self._clock.seconds(), healthy=True)
        self._links[link.link_id] = state
        self._link_up(state, server_id)
        self._want_link(server_id)
        if envelope.type == "SERVER_ANNOUNCE":
            self._seen.add(SeenCache.key(envelope))
            self._log.info("Server announced: {server_id}", server_id=server_id)
            self._forward(envelope, state)

    # -- the join, dialler side -----------------------------------------------------------------

    def _joining_frame(self, state: _LinkState, envelope: wire.Envelope) -> None:
        if envelope.type == "SERVER_WELCOME":
            self._welcome(state, envelope)
        elif envelope.type == "ERROR":
            payload = envelope.payload
            self._log.warn(
                "Introducer {url} answered ERROR {code}: {detail}",
                url=state.dialer.url,
                code=str(payload.get("code"))[:64],
                detail=str(payload.get("detail"))[:200],
            )
        elif envelope.type == "CTRL_CLOSE":
            self._close_later(state, "CTRL_CLOSE")
        else:
            self.counters["dropped.before_welcome"] += 1

    def _welcome_entries(self, payload: dict[str, Any]) -> list[tuple[str, str, int, str]]:
        """(server_id, host, port, pubkey) of both lists of a SERVER_WELCOME, malformed entries skipped."""
        entries: dict[str, tuple[str, str, int, str]] = {}
        for list_name, id_field in (("servers", "server_id"), ("clients", "user_id")):
            items = envelope_list(payload, list_name)
            for item in items[:MAX_KNOWN_SERVERS]:
                try:
                    server_id = wire.require_uuid(item, id_field)
                    host, port, key_text = _parse_address_payload(item)
                except (wire.FrameError, AttributeError, TypeError):
                    self.counters["welcome.bad_entry"] += 1
                    continue
                entries.setdefault(server_id, (server_id, host, port, key_text))
        return list(entries.values())

    def _welcome(self, state: _LinkState, envelope: wire.Envelope) -> None:
        dialer = state.dialer
        introducer = envelope.from_
        payload = envelope.payload
        if not wire.is_uuid(introducer) or introducer == self.server_id:
            self._log.error(
                "Peer {url} is this server itself (or sent a bad SERVER_WELCOME id): not joining through it",
                url=dialer.url,
            )
            self._outgoing.remove(dialer)
            self._forget_introducer(dialer)
            state.link.close(CLOSE_POLICY, "not a valid introducer")
            return
        entries = self._welcome_entries(payload)
        own_entry = next((e for e in entries if e[0] == introducer), None)
        offered_text = payload.get("server_pub") if isinstance(payload.get("server_pub"), str) else None
        if offered_text is None and own_entry is not None:
            offered_text = own_entry[3]
        address = (own_entry[1], own_entry[2]) if own_entry is not None else (dialer.host, dialer.port)
        try:
            known = self._known.get(introducer)
            expected = known.pubkey if known is not None else self._boot_keys.get((dialer.host, dialer.port))
            if offered_text is None and expected is None:
                raise KeyRefused("BAD_KEY", "SERVER_WELCOME does not carry the introducer's key")
            key_text = offered_text if offered_text is not None else expected
            key, _ = self._check_key(introducer, key_text, "SERVER_WELCOME", (dialer.host, dialer.port))
            if (expected is not None or envelope.sig) and not crypto.verify_payload(
                key, payload, envelope.sig
            ):
                raise KeyRefused("INVALID_SIG", "SERVER_WELCOME signature does not verify")
            known = self._remember(introducer, key, key_text, address, "SERVER_WELCOME", linked=True)
            own_item = next(
                (
                    item
                    for item in envelope_list(payload, "servers")
                    if isinstance(item, dict) and item.get("server_id") == introducer
                ),
                {},
            )
            known.acks = _says_it_acks(own_item)
        except KeyRefused as e:
            self.counters["welcome.refused"] += 1
            self._log.error("Refused SERVER_WELCOME from {url}: {detail}", url=dialer.url, detail=e.detail)
            state.link.close(CLOSE_POLICY, e.detail[:120])
            return
        assigned = payload.get("assigned_id")
        if wire.is_uuid(assigned) and assigned != self.server_id:
            self._adopt_id(assigned, introducer)
        elif assigned is not None and not wire.is_uuid(assigned):
            self._log.warn("Ignored invalid assigned_id from introducer {server_id}", server_id=introducer)
        state.joining = False
        state.healthy = True
        dialer.server_id = introducer
        dialer.join = False
        dialer.mark_healthy()
        state.link.identity = introducer
        existing = self._by_server.get(introducer)
        if existing is not None and existing.link.outgoing:
            # We already dialled the introducer by another address: keep that link, drop this one.
            self._forget_introducer(dialer)
            self._close_state(state, "duplicate link")
            self._outgoing.remove(dialer)
        else:
            self._adopt_dialer(dialer, introducer)
            self._link_up(state, introducer)
        listed = 0
        for server_id, host, port, key_text in entries:
            if server_id in (introducer, self.server_id):
                continue
            try:
                key, _ = self._check_key(
                    server_id, key_text, f"SERVER_WELCOME from {introducer}", (host, port)
                )
                self._remember(server_id, key, key_text, (host, port), f"SERVER_WELCOME from {introducer}")
            except KeyRefused:
                self.counters["welcome.refused_entry"] += 1
                continue
            listed += 1
            self._want_link(server_id)
        self._log.info(
            "Joined the mesh through {introducer} ({url}); {count} other servers listed",
            introducer=introducer,
            url=dialer.url,
            count=listed,
        )
        self.broadcast(self._signer.frame("SERVER_ANNOUNCE", "*", self._address_payload()))

    def _adopt_id(self, assigned: str, introducer: str) -> None:
        old = self.server_id
        self._log.warn(
            "Introducer {introducer} assigned us the id {assigned} instead of {old}: using it until restart",
            introducer=introducer,
            assigned=assigned,
            old=old,
        )
        self._signer.server_id = assigned
        rename = getattr(self._presence, "rename_server", None)
        if rename is not None:
            rename(assigned)
        else:
            self._presence.server_id = assigned

    def _forget_introducer(self, dialer: Any) -> None:
        if dialer in self._introducers:
            self._introducers.remove(dialer)

    def _adopt_dialer(self, dialer: Any, server_id: str) -> None:
        """An introducer's dialer now knows its server: it becomes that server's dialer."""
        self._forget_introducer(dialer)
        previous = self._dialers.get(server_id)
        if previous is not None and previous is not dialer:
            self._outgoing.remove(previous)
        self._dialers[server_id] = dialer

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
        if newly:
            self.counters["links_up"] += 1
            self._log.info(
                "Link to server {server_id} up ({direction}, {peer})",
                server_id=server_id,
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
        self._changed()

    def _stop_timers(self, state: _LinkState) -> None:
        stop_repeating(state.heartbeat)
        state.heartbeat = None
        if state.dead_timer is not None and state.dead_timer.active():
            state.dead_timer.cancel()
        state.dead_timer = None

    # -- liveness ----------------------------------------------------------------------------------

    def _heartbeat(self, state: _LinkState) -> None:
        state.link.send(self._signer.frame("HEARTBEAT", state.server_id, {}))

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

    # -- frames on identified server links ---------------------------------------------------------

    def _verify(
        self, state: _LinkState, envelope: wire.Envelope, key: RSAPublicKey, body: bytes | None = None
    ) -> bool:
        if envelope.sig and crypto.verify_payload(key, envelope.payload, envelope.sig, body):
            return True
        self._forged(state, envelope)
        return False

    def _forged(self, state: _LinkState, envelope: wire.Envelope) -> None:
        """Count a frame whose signature fails; cut off a link that keeps sending them."""
        self.counters["verify_failed"] += 1
        now = self._clock.seconds()
        state.failures.append(now)
        while state.failures and state.failures[0] <= now - self.forged_window:
            state.failures.popleft()
        self._log.warn(
            "Dropped {type} from {origin} on link {link} ({server_id}): {why} ({count} in {window:g} s)",
            type=envelope.type,
            origin=envelope.from_,
            link=state.link.link_id,
            server_id=state.server_id,
            why="signature does not verify" if envelope.sig else "unsigned",
            count=len(state.failures),
            window=self.forged_window,
        )
        if len(state.failures) >= self.forged_limit and not state.retired:
            self.counters["cut_off"] += 1
            self._log.error(
                "Cut off link {link} to server {server_id}: {count} bad signatures in {window:g} s",
                link=state.link.link_id,
                server_id=state.server_id,
                count=len(state.failures),
                window=self.forged_window,
            )
            self._retire(state, "too many invalid signatures", CLOSE_POLICY)

    def _stale(self, envelope: wire.Envelope) -> bool:
        return abs(self._now_ms() - envelope.ts) > self._seen.max_age * 1000

    def _server_frame(self, state: _LinkState, envelope: wire.Envelope) -> None:
        kind = envelope.type
        if kind == "CTRL_CLOSE":
            self._ctrl_close(state, envelope)
            return
        if kind == "ACK" and kind not in self._handlers:
            self.counters["dropped.ack"] += 1
            return
        origin = envelope.from_
        if origin == self.server_id:
            self.counters["dropped.own_frame"] += 1  # our own gossip echoed back: absorbed
            return
        tracked = kind in GOSSIP_TYPES or kind in self._handlers
        seen_key = body = None
        if tracked:
            body = wire.canonical(envelope.payload)  # for the seen-ids key and the signature both
            seen_key = SeenCache.key(envelope, body)
            if seen_key in self._seen:
                self.counters["dropped.duplicate"] += 1
                return
            if kind in GOSSIP_TYPES and self._stale(envelope):
                self.counters["dropped.stale"] += 1
                self._log.debug("Dropped stale {type} from {origin}", type=kind, origin=origin)
                return
        known = self._known.get(origin)
        if known is None:
            if kind == "SERVER_ANNOUNCE":
                self._announce(state, envelope, seen_key, None)
            else:
                self.counters["dropped.unknown_origin"] += 1
                self._log.debug("Dropped {type} from unknown server {origin}", type=kind, origin=origin)
            return
        prepared = self._prepare(state, envelope)
        try:
            self._checked_frame(state, envelope, known, body, seen_key, prepared)
        finally:
            if prepared is not None:
                prepared.discard()  # a no-op once the handler used it

    def _prepare(self, state: _LinkState, envelope: wire.Envelope) -> Any:
        """Let the frame's handler start work that stays on this server (a signature) while the
        frame's own signature is checked (``on_frame(prepare=...)``): only for a frame addressed
        to us, on a link that sent no bad signature lately.  The handler gets what it started
        only if the frame verifies; whatever it did not use is discarded after it."""
        prepare = self._preparers.get(envelope.type)
        if prepare is None or envelope.to != self.server_id or state.failures:
            return None
        try:
            return prepare(envelope)
        except Exception:
            self._log.failure(
                "Preparing {type} from {origin} failed", type=envelope.type, origin=envelope.from_
            )
            return None

    def _checked_frame(
        self,
        state: _LinkState,
        envelope: wire.Envelope,
        known: Any,
        body: bytes | None,
        seen_key: Any,
        prepared: Any,
    ) -> None:
        kind = envelope.type
        origin = envelope.from_
        if not self._verify(state, envelope, known.key, body):
            return
        if not state.healthy and origin == state.server_id:
            state.healthy = True
            if state.dialer is not None:
                state.dialer.mark_healthy()
        if seen_key is not None:
            self._seen.add(seen_key)
        self.counters["verified"] += 1  # every frame is counted: verified here, or dropped above
        if kind == "HEARTBEAT":
            return
        if kind == "USER_ADVERTISE":
            self._user_advertise(state, envelope)
        elif kind == "USER_REMOVE":
            self._user_remove(state, envelope)
        elif kind == "SERVER_ANNOUNCE":
            self._announce(state, envelope, seen_key, known)
        elif kind == "SERVER_HELLO_LINK" and origin == state.server_id:
            self._hello_again(state, envelope)
        elif kind in self._handlers:
            self._routed(state, envelope, prepared)
        elif kind in ("SERVER_HELLO_JOIN", "SERVER_WELCOME", "SERVER_HELLO_LINK"):
            self.counters["dropped.late_handshake"] += 1
        else:
            self._unknown_type(state, envelope)

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

    def _hello_again(self, state: _LinkState, envelope: wire.Envelope) -> None:
        """SERVER_HELLO_LINK on a live link: only an address update is of interest."""
        try:
            host, port, key_text = _parse_address_payload(envelope.payload)
            key, _ = self._check_key(envelope.from_, key_text, "SERVER_HELLO_LINK", (host, port))
            known = self._remember(
                envelope.from_, key, key_text, (host, port), "SERVER_HELLO_LINK", linked=True
            )
            known.described = (envelope.payload, envelope.sig)
            known.acks = _says_it_acks(envelope.payload)
        except (wire.FrameError, KeyRefused) as e:
            self.counters["dropped.bad_hello"] += 1
            self._log.warn(
                "Ignored SERVER_HELLO_LINK from {server_id}: {detail}",
                server_id=envelope.from_,
                detail=str(e),
            )

    def _announce(
        self, state: _LinkState, envelope: wire.Envelope, seen_key: tuple | None, known: KnownServer | None
    ) -> None:
        """SERVER_ANNOUNCE {host, port, pubkey}: pin (first contact) or check the key, store the
        address, forward unchanged to the other links.  Signature already checked if ``known``."""
        origin = envelope.from_
        try:
            host, port, key_text = _parse_address_payload(envelope.payload)
            key, _ = self._check_key(origin, key_text, "SERVER_ANNOUNCE", (host, port))
        except (wire.FrameError, KeyRefused) as e:  # a refused key change is also logged as an error
            self._bad_gossip(state, envelope, e.detail)
            return
        if known is None and envelope.sig and not crypto.verify_payload(key, envelope.payload, envelope.sig):
            self._forged(state, envelope)
            return
        if seen_key is not None:
            self._seen.add(seen_key)
        direct = origin == state.server_id
        try:
            new = origin not in self._known
            known = self._remember(origin, key, key_text, (host, port), "SERVER_ANNOUNCE", linked=direct)
        except KeyRefused as e:
            self._bad_gossip(state, envelope, e.detail)
            return
        if envelope.sig:
            known.described = (envelope.payload, envelope.sig)
        known.acks = _says_it_acks(envelope.payload)
        self.counters["announces"] += 1
        if envelope.to == "*":
            self._log.info("Server announced: {server_id}", server_id=origin)
            self._forward(envelope, state)
        elif new:
            self._log.info(
                "Learnt of server {server_id} from server {via}", server_id=origin, via=state.server_id
            )
        if origin not in self._by_server:
            self._want_link(origin, self._gossip_dial_delay(origin))

    def _introduce_neighbours(self, state: _LinkState) -> None:
        """Introduce a new neighbour and our other live neighbours to each other.

        Each learns the other from the other's own signed self-description, sent as a
        SERVER_ANNOUNCE addressed to it (the transport sig covers the payload only, so it
        still verifies with the described server's key).  Servers that joined at the same
        time, or linked without joining, thus still find each other.
        """
        server_id = state.server_id
        newcomer = self._known.get(server_id)
        for other_id, other in list(self._by_server.items()):
            known = self._known.get(other_id)
            if other_id == server_id or known is None:
                continue
            if known.described is not None:
                payload, sig = known.described
                state.link.send(
                    wire.encode_frame("SERVER_ANNOUNCE", other_id, server_id, self._now_ms(), payload, sig)
                )
            if newcomer is not None and newcomer.described is not None:
                payload, sig = newcomer.described
                other.link.send(
                    wire.encode_frame("SERVER_ANNOUNCE", server_id, other_id, self._now_ms(), payload, sig)
                )

    # -- presence gossip ------------------------------------------------------------------------------

    def _bad_gossip(self, state: _LinkState, envelope: wire.Envelope, detail: str) -> None:
        self.counters["dropped.bad_gossip"] += 1
        self._log.warn(
            "Dropped {type} from {origin} (via {server_id}): {detail}",
            type=envelope.type,
            origin=envelope.from_,
            server_id=state.server_id,
            detail=detail,
        )

    def _user_advertise(self, state: _LinkState, envelope: wire.Envelope) -> None:
        payload = envelope.payload
        try:
            user_id = wire.require_uuid(payload, "user_id")
            server_id = wire.require_uuid(payload, "server_id")
            pubkey = wire.require_str(payload, "pubkey", max_len=16384)
            crypto.load_public_key(pubkey)
            meta = payload.get("meta")
            if meta is not None and not isinstance(meta, dict):
                raise wire.BadFieldType("payload field 'meta' must be an object", "meta")
        except wire.FrameError as e:
            self._bad_gossip(state, envelope, e.detail)
            return
        if server_id == self.server_id:
            self._bad_gossip(state, envelope, "it places a user on this server")
            return
        if envelope.from_ != server_id:
            self._not_its_own(state, envelope, user_id, server_id)
            return
        verdict = self._user_keys.pin_advertised(user_id, pubkey, server_id)
        if verdict == DIFFERS:
            self._user_key_refused(envelope, user_id, pubkey)
            return
        if verdict == FULL:
            self.counters["dropped.user_pins_full"] += 1
            return
        meta = meta or {}
        if len(wire.canonical(meta)) > MAX_META_BYTES:
            meta = {"pubkey": pubkey}
        self.counters["gossip.advertise"] += 1
        self._presence.user_online_remote(user_id, server_id, pubkey, meta)
        if server_id not in self._by_server:
            self._schedule_withdraw(server_id)
        self._forward(envelope, state)

    def _user_remove(self, state: _LinkState, envelope: wire.Envelope) -> None:
        try:
            user_id = wire.require_uuid(envelope.payload, "user_id")
            server_id = wire.require_uuid(envelope.payload, "server_id")
        except wire.FrameError as e:
            self._bad_gossip(state, envelope, e.detail)
            return
        if envelope.from_ != server_id:
            self._not_its_own(state, envelope, user_id, server_id)
            return
        self.counters["gossip.remove"] += 1
        self._presence.user_offline_remote(user_id, server_id)
        self._forward(envelope, state)

    def _not_its_own(self, state: _LinkState, envelope: wire.Envelope, user_id: str, named: str) -> None:
        """Presence is spoken only by the hosting server: ``from`` (the origin, which relays keep)
        must be the ``server_id`` the frame names.  Dropped, counted, one warning a minute per origin."""
        origin = envelope.from_
        self.counters["dropped.not_hosting_server"] += 1
        count = self._refusals.hit(("not-own", origin))
        if count is not None:
            self._log.warn(
                "Dropped {type} from server {origin} (via {via}): it speaks for server {named} about"
                " user {user}; only a user's own server may ({count} such frames from {origin} in the"
                " last minute)",
                type=envelope.type,
                origin=origin,
                via=state.server_id,
                named=named,
                user=user_id,
                count=count,
            )

    def _user_key_refused(self, envelope: wire.Envelope, user_id: str, pubkey: str) -> None:
        """An advertise with another key than the one pinned for the user: refused, like a changed
        server key (docs/SECURITY.md says how an operator lifts a pin)."""
        self.counters["user_key_refused"] += 1
        pin = self._user_keys.lookup(user_id)
        count = self._refusals.hit(("user-key", envelope.from_, user_id))
        if count is not None and pin is not None:
            self._log.error(
                "REFUSED changed key for user {user} advertised by server {origin}: pinned {pinned}"
                " ({where}), offered {offered} ({count} in the last minute)",
                user=user_id,
                origin=envelope.from_,
                pinned=pin.fingerprint,
                where=f"home server {pin.home_server}" if pin.home_server else "here",
                offered=crypto.fingerprint(pubkey),
                count=count,
            )

    def _forward(self, envelope: wire.Envelope, arrival: _LinkState) -> int:
        """Send ``envelope`` unchanged to every live link but the one it came on."""
        raw = wire.encode_frame(
            envelope.type, envelope.from_, envelope.to, envelope.ts, envelope.payload, envelope.sig
        )
        sent = self.broadcast(raw, exclude=arrival.link.link_id)
        self.counters["forwarded"] += sent
        return sent

    def _advertise_frame(self, entry: Any) -> Deferred:
        meta = {**entry.meta, "pubkey": entry.pubkey}
        payload = {
            "user_id": entry.user_id,
            "server_id": self.server_id,
            "pubkey": entry.pubkey,
            "meta": meta,
        }
        return self._signer.frame("USER_ADVERTISE", "*", payload)

    def user_online(self, entry: Any) -> None:
        """IPresenceObserver: a local user came online: USER_ADVERTISE to every server."""
        if entry.local and self._by_server:
            self.broadcast(self._advertise_frame(entry))

    def user_offline(self, entry: Any) -> None:
        """IPresenceObserver: a local user left: USER_REMOVE to every server."""
        if entry.local and self._by_server:
            payload = {"user_id": entry.user_id, "server_id": self.server_id}
            self.broadcast(self._signer.frame("USER_REMOVE", "*", payload))

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

    def _unknown_type(self, state: _LinkState, envelope: wire.Envelope) -> None:
        """Answer an unknown type once per type per link; never an ERROR or ACK (§5)."""
        kind = envelope.type
        self.counters["unknown_type"] += 1
        if kind in NEVER_ANSWERED or kind in state.answered_types:
            return
        if len(state.answered_types) >= MAX_ANSWERED_TYPES:
            return
        state.answered_types.add(kind)
        payload = wire.error_payload("UNKNOWN_TYPE", f"frame type {kind!r} is not understood here")
        payload["msg_ref"] = kind
        state.link.send(self._signer.frame("ERROR", state.server_id, payload))

    # -- persistence ----------------------------------------------------------------------------------

    def _save_pins(self) -> None:
        """Write peers.json (off the reactor thread when we have workers); writes never overlap."""
        if self._pins.path is None:
            return
        if self._saving is not None:
            self._save_again = True
            return
        snapshot = {server_id: known.to_json() for server_id, known in self._known.items()}
        run = self._workers.run if self._workers is not None else maybeDeferred
        saving = self._saving = run(self._pins.save, snapshot)
        saving.addErrback(self._save_failed)
        saving.addBoth(self._saved)

    def _save_failed(self, failure) -> None:
        self._log.failure("Could not write {path}", failure, path=str(self._pins.path))

    def _saved(self, _) -> None:
        self._saving = None
        if self._save_again:
            self._save_again = False
            self._save_pins()


def envelope_list(payload: dict[str, Any], name: str) -> list[Any]:
    """``payload[name]`` if it is a list, else ``[]`` (tolerant reading of SERVER_WELCOME)."""
    value = payload.get(name)
    return value if isinstance(value, list) else []


__all__ = [
    "CLAIMED_TYPES",
    "PEERS_FILE",
    "KeyRefused",
    "KnownServer",
    "Mesh",
    "PinStore",
    "PinStoreError",
    "SeenCache",
]
