"""The public channel (PROTOCOL.md §6): membership, version, group keys, and ``/all`` fan-out.

Every user who completes ``USER_HELLO`` joins the group ``"public"``; a user leaves
when it goes offline network-wide.  docs/PUBLIC-CHANNEL.md is the reference; in short:

* Membership is a CRDT that every server merges (:class:`ChannelState`): each join or
  leave is an *event* ``(origin server, seq)`` with a Lamport timestamp; the version is
  the number of events (the sum of each origin's highest ``seq``) and each member's
  state is the newest event about it (last writer wins by ``(lamport, origin, seq)``).
  Merging is commutative, associative and idempotent, so servers that have seen the same
  events agree on the version and the members whatever the order they saw them in.
* Events travel in ``PUBLIC_CHANNEL_ADD`` frames (flooded like presence gossip); when a
  server link comes up both sides send their whole state (anti-entropy), so a server that
  was down or partitioned catches up.  Our own events are persisted before they are sent:
  a restart never reuses a sequence number, loses or resets the version.
* The hosting server makes the events of its users: a join at the hello, a leave when
  the user disconnects.  The *leader* (lowest id among this server and its live peers)
  cleans up after servers that vanished (leaves for their users) and joins users of
  servers that don't speak these frames; a server re-joins its own connected users if a
  race made them look gone.
* For every version the leader settles on it makes a fresh 256-bit group key, wraps it
  for each member (RSA-OAEP) and sends it as ``PUBLIC_CHANNEL_UPDATED`` (wraps, with its
  content_sig over the key shares); servers keep only the wrapped keys and hand each
  local member its share in a ``PUBLIC_CHANNEL_KEY_SHARE``.  While the version keeps
  changing the leader makes at most one key per ``rekey_interval``: a burst of joins gets
  one key after it, for the members of that moment.
* Local users are told the membership (ids and public keys) in ``PUBLIC_CHANNEL_UPDATED``
  frames: a snapshot after the hello, then one update per version change.
* ``MSG_PUBLIC_CHANNEL`` from a local user (one per member, encrypted to that member) is
  checked (sender key, content_sig, recipient a member) and routed like a DM; the
  server never sees plaintext.
"""

from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from socp_tw import crypto, wire
from socp_tw.content import extract_fields, verify_user_content
from socp_tw.interfaces import (
    ILink,
    IPeerLinks,
    IPresence,
    IPresenceObserver,
    IRouter,
    ISigner,
    IStore,
    IWorkers,
    UserNotFound,
)
from socp_tw.logs import get_logger
from socp_tw.protocols.links import copies_of, sign_for_all
from socp_tw.timers import repeating, stop_repeating

if TYPE_CHECKING:
    from socp_tw.services.users import UserSide

__all__ = [
    "GROUP",
    "ChannelState",
    "GroupKey",
    "MemberState",
    "PublicChannel",
    "make_key_parts",
    "parse_event",
]

GROUP = "public"

MAX_COUNTER = 2**53  # lamport / seq values accepted from peers
MAX_MEMBERS = 100_000  # member states held: gossip is hostile input too
MAX_EVENTS_PER_FRAME = 1000
MAX_ORIGINS_PER_FRAME = 1000
MAX_KEY_TEXT = 16384
MAX_WRAPPED_CHARS = 1024  # one RSA-4096 block is 683 b64u characters
MAX_PENDING_KEYS = 4  # incomplete or future keys kept while waiting for their version
MAX_KEY_PARTS = 8192  # 100 000 members in parts of 16

#: Names other implementations use for a wrapped key inside ``wraps``/``shares``.
WRAPPED_NAMES = ("wrapped_key", "wrapped", "wrapped_public_channel_key")


class _NotMember(wire.FrameError):
    code = "USER_NOT_FOUND"


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]


# ---------------------------------------------------------------- the CRDT


@dataclass(frozen=True, slots=True)
class MemberState:
    """The newest membership event known about one member (slots: one per member)."""

    member_id: str
    present: bool
    lamport: int
    origin_id: str  # the server that made the event
    seq: int  # its sequence number at that server
    host_id: str  # the server hosting the member at the event
    pubkey: str | None  # b64u(DER) of the member's key; None for a leave

    def order(self) -> tuple[int, str, int]:
        """Last writer wins by this key: unique per event, the same on every server."""
        return (self.lamport, self.origin_id.lower(), self.seq)

    def to_wire(self) -> dict[str, Any]:
        event: dict[str, Any] = {
            "member_id": self.member_id,
            "present": self.present,
            "lamport": self.lamport,
            "origin": self.origin_id,
            "seq": self.seq,
            "host": self.host_id,
        }
        if self.pubkey is not None:
            event["pubkey"] = self.pubkey
        return event

    def to_store(self) -> dict[str, Any]:
        return {
            "member_id": self.member_id,
            "present": self.present,
            "lamport": self.lamport,
            "origin_id": self.origin_id,
            "seq": self.seq,
            "host_id": self.host_id,
            "pubkey": self.pubkey,
        }

    @classmethod
    def from_store(cls, row: dict[str, Any]) -> MemberState:
        return cls(
            row["member_id"],
            bool(row["present"]),
            row["lamport"],
            row["origin_id"],
            row["seq"],
            row["host_id"],
            row["pubkey"],
        )


def parse_event(event: object) -> MemberState:
    """Validate one event of a ``PUBLIC_CHANNEL_ADD`` (shape only: keys are checked on merge)."""
    if not isinstance(event, dict):
        raise wire.BadFieldType("each event must be an object", "events")
    member_id = wire.require_uuid(event, "member_id")
    present = event.get("present")
    if type(present) is not bool:
        raise wire.BadFieldType("event field 'present' must be true or false", "present")
    lamport = wire.require_int(event, "lamport", minimum=1, maximum=MAX_COUNTER)
    origin = wire.require_uuid(event, "origin")
    seq = wire.require_int(event, "seq", minimum=1, maximum=MAX_COUNTER)
    host = wire.require_uuid(event, "host")
    pubkey = wire.require_str(event, "pubkey", max_len=MAX_KEY_TEXT) if present else None
    return MemberState(member_id, present, lamport, origin, seq, host, pubkey)


def parse_origins(value: object) -> dict[str, int]:
    """Validate the ``counters`` of a ``PUBLIC_CHANNEL_ADD``: {origin server id: highest seq}."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise wire.BadFieldType("payload field 'counters' must be an object", "counters")
    if len(value) > MAX_ORIGINS_PER_FRAME:
        raise wire.BadFieldType("payload field 'counters' has too many entries", "counters")
    origins = {}
    for origin in value:
        if not wire.is_uuid(origin):
            raise wire.BadUUID("counters must be keyed by server ids", "counters")
        origins[origin] = wire.require_int(value, origin, minimum=0, maximum=MAX_COUNTER)
    return origins


class ChannelState:
    """The replicated membership: pure bookkeeping, no I/O (see the module docstring)."""

    def __init__(self, max_members: int = MAX_MEMBERS) -> None:
        self.states: dict[str, MemberState] = {}
        self.origins: dict[str, int] = {}
        self.lamport = 0
        self.version = 0
        self.max_members = max_members
        self.refused_full = 0

    def members(self) -> dict[str, str]:
        """Current members: member id -> public key."""
        return {m: s.pubkey or "" for m, s in self.states.items() if s.present}

    def is_member(self, member_id: str) -> bool:
        state = self.states.get(member_id)
        return state is not None and state.present

    def would_change(self, event: MemberState) -> bool:
        current = self.states.get(event.member_id)
        return current is None or event.order() > current.order()

    def merge(
        self, events: Iterable[MemberState], origins: dict[str, int] | None = None
    ) -> tuple[list[MemberState], dict[str, int]]:
        """Fold ``events`` and ``origins`` in; return (member states that changed, counters raised)."""
        events = list(events)
        wanted = dict(origins or {})
        for event in events:
            wanted[event.origin_id] = max(wanted.get(event.origin_id, 0), event.seq)
        raised = {}
        for origin, seq in wanted.items():
            if seq > self.origins.get(origin, 0):
                self.version += seq - self.origins.get(origin, 0)
                self.origins[origin] = raised[origin] = seq
        changed: dict[str, MemberState] = {}
        for event in events:
            if not self.would_change(event):
                continue
            if event.member_id not in self.states and len(self.states) >= self.max_members:
                self.refused_full += 1
                continue
            self.states[event.member_id] = changed[event.member_id] = event
            self.lamport = max(self.lamport, event.lamport)
        return list(changed.values()), raised

    def next_event(
        self, origin: str, member_id: str, present: bool, host: str, pubkey: str | None
    ) -> MemberState:
        """A new event by ``origin`` ordered after everything known (not applied yet)."""
        return MemberState(
            member_id,
            present,
            self.lamport + 1,
            origin,
            self.origins.get(origin, 0) + 1,
            host,
            pubkey if present else None,
        )


# ---------------------------------------------------------------- group keys


@dataclass
class GroupKey:
    """One group key: the version it belongs to, who made it, and its signed shares."""

    version: int
    creator: str
    creator_pub: str
    parts: list[dict[str, Any]]  # [{"shares": [{member, wrapped_public_channel_key}], "content_sig"}]

    def wraps(self) -> dict[str, str]:
        return {
            share["member"]: share["wrapped_public_channel_key"]
            for part in self.parts
            for share in part["shares"]
        }

    def member_ids(self) -> set[str]:
        return {share["member"] for part in self.parts for share in part["shares"]}


def make_key_parts(
    private_key: RSAPrivateKey, creator_pub: str, members: list[tuple[str, str]], shares_per_part: int
) -> list[dict[str, Any]]:
    """Make a fresh 256-bit group key, wrap it for each (member id, pubkey), sign the shares.

    Runs on the worker pool.  The clear key exists only inside this call.
    """
    group_key = secrets.token_bytes(32)
    shares = [
        {
            "member": member,
            "wrapped_public_channel_key": crypto.oaep_encrypt(crypto.load_public_key(pubkey), group_key),
        }
        for member, pubkey in members
    ]
    del group_key
    return [
        {
            "shares": chunk,
            "content_sig": crypto.sign_content(private_key, crypto.keyshare_preimage(chunk, creator_pub)),
        }
        for chunk in _chunks(shares, shares_per_part)
    ]


@dataclass
class _PartialKey:
    version: int
    creator: str
    creator_pub: str
    count: int
    parts: dict[int, dict[str, Any]] = field(default_factory=dict)

    def complete(self) -> GroupKey | None:
        if len(self.parts) != self.count:
            return None
        return GroupKey(
            self.version, self.creator, self.creator_pub, [self.parts[i] for i in range(self.count)]
        )


def _wrapped_of(item: dict[str, Any]) -> str:
    for name in WRAPPED_NAMES:
        if item.get(name) is not None:
            return wire.require_str(item, name, max_len=MAX_WRAPPED_CHARS)
    raise wire.MissingField("each wrap needs 'wrapped_key' (or 'wrapped')", "wraps")


# ---------------------------------------------------------------- the service


@implementer(IPresenceObserver)
class PublicChannel(Service):
    """The public channel of this server (see the module docstring)."""

    name = "public"
    _log = get_logger("socp_tw.public")

    def __init__(
        self,
        store: IStore,
        presence: IPresence,
        peers: IPeerLinks,
        router: IRouter,
        users: UserSide,
        signer: ISigner,
        private_key: RSAPrivateKey,
        workers: IWorkers,
        clock=None,
        *,
        sweep_interval: float = 5.0,
        evict_after: float = 30.0,
        key_timeout: float = 10.0,
        rekey_interval: float = 5.0,
        push_interval: float = 0.5,
        shares_per_part: int = 16,
        states_per_frame: int = 200,
        members_per_frame: int = 200,
        max_members: int = MAX_MEMBERS,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self._store = IStore(store)
        self._presence = IPresence(presence)
        self._peers = IPeerLinks(peers)
        self._router = IRouter(router)
        self._users = users
        self._signer = ISigner(signer)
        self._private_key = private_key
        self._workers = IWorkers(workers)
        self._clock = clock
        self.sweep_interval = sweep_interval
        self.evict_after = evict_after
        self.key_timeout = key_timeout
        self.rekey_interval = rekey_interval
        self.push_interval = push_interval
        self.shares_per_part = shares_per_part
        self.states_per_frame = states_per_frame
        self.members_per_frame = members_per_frame
        self.counters: Counter[str] = Counter()
        self.state = ChannelState(max_members)
        self.key: GroupKey | None = None
        self.ready = False
        self._waiting: list[Callable[[], None]] = []  # work that arrived before the state was loaded
        self._linked: set[str] = set()
        self._pushed: dict[str, str] = {}  # the membership local users were last told
        self._pushed_version = 0
        self._awaiting_snapshot: dict[str, ILink] = {}
        self._pending_keys: dict[tuple[int, str], _PartialKey] = {}
        self._generating = False
        self._generate_again = False
        self._last_key_started: float | None = None  # clock time the last key generation started
        self._rekey_timer: IDelayedCall | None = None
        self._last_push: float | None = None  # clock time local users were last told a change
        self._push_timer: IDelayedCall | None = None
        # The snapshot frames of ``_pushed`` (signed once, to "*"), shared by the users arriving
        # before the next push; dropped at that push, or soon after when nobody arrives.
        self._snapshot: tuple[dict[str, str], list[bytes | Deferred]] | None = None
        self._snapshot_expiry: IDelayedCall | None = None
        self._watchdog: IDelayedCall | None = None
        self._watchdog_version = 0
        self._stale_since: dict[str, float] = {}
        self._sweeper: LoopingCall | None = None
        self._loading: Deferred | None = None

        self._presence.add_observer(self)
        self._peers.on_frame("PUBLIC_CHANNEL_ADD", self._gossip(self._add_received))
        self._peers.on_frame("PUBLIC_CHANNEL_UPDATED", self._gossip(self._updated_received))
        self._peers.add_change_observer(self._mesh_changed)
        users.register_user_frame("MSG_PUBLIC_CHANNEL", self._user_message)

    @property
    def server_id(self) -> str:
        return self._signer.server_id

    # ------------------------------------------------------------ service

    def startService(self) -> None:
        super().startService()
        self._loading = self._store.load_group(GROUP)
        self._loading.addCallback(self._loaded)
        self._loading.addErrback(self._load_failed)

    def stopService(self) -> None:
        super().stopService()
        stop_repeating(self._sweeper)
        self._cancel_watchdog()
        self._cancel_rekey_timer()
        if self._push_timer is not None and self._push_timer.active():
            self._push_timer.cancel()
        self._push_timer = None
        self._drop_snapshot()
        if self.ready:
            # Our users go offline with us: tell the mesh now, while its links are still up.
            leaving = [
                s.member_id
                for s in self.state.states.values()
                if s.present and s.host_id == self.server_id and self._presence.local_link(s.member_id)
            ]
            if leaving:
                self._emit([(m, False, self.server_id, None) for m in leaving], urgent=True)
        self.ready = False

    def _loaded(self, group: dict[str, Any] | None) -> None:
        if group is None:
            self._log.error("The store has no {group!r} group: the public channel is disabled", group=GROUP)
            return
        states = [MemberState.from_store(row) for row in group["states"]]
        self.state.merge(states, group["origins"])
        self._pushed = self.state.members()
        self._pushed_version = self.state.version
        self._log.info(
            "Public channel loaded: version {version}, {members} current member(s)",
            version=self.state.version,
            members=len(self._pushed),
        )
        if not self.running:
            return
        self.ready = True
        waiting, self._waiting = self._waiting, []
        for work in waiting:
            self._safely(work)
        self._sweep()
        self._sweeper = repeating(self._clock, self.sweep_interval, self._sweep)
        self._mesh_changed()

    def _load_failed(self, failure: Failure) -> None:
        self._log.failure("Could not load the public channel: it is disabled", failure)

    def _when_ready(self, work: Callable[[], None]) -> None:
        if self.ready:
            work()
        elif self.running:
            self._waiting.append(work)

    def _safely(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception:
            self._log.failure("Public channel work failed")

    # ------------------------------------------------------------ events

    def _emit(self, changes: list[tuple[str, bool, str, str | None]], urgent: bool = False) -> None:
        """Make one event per (member, present, host, pubkey), apply, persist, then gossip them."""
        before = self.state.version
        events = []
        for member_id, present, host, pubkey in changes:
            if member_id not in self.state.states and len(self.state.states) >= self.state.max_members:
                self.state.refused_full += 1
                continue
            event = self.state.next_event(self.server_id, member_id, present, host, pubkey)
            self.state.merge([event])
            events.append(event)
            self._log.info(
                "Public channel: {member} {what} (version {version})",
                member=member_id,
                what="joined" if present else "left",
                version=self.state.version,
            )
        if not events:
            return
        own = {self.server_id: self.state.origins[self.server_id]}
        self.counters["events_made"] += len(events)
        payloads = [self._add_payload(chunk, own, before) for chunk in _chunks(events, self.states_per_frame)]
        saved = self._store.save_group_state(GROUP, [e.to_store() for e in events], own)
        if urgent:
            saved.addErrback(self._persist_failed)
            for payload in payloads:
                self._peers.broadcast(self._signer.frame_now("PUBLIC_CHANNEL_ADD", "*", payload))
        else:
            # Persisted first: a restart must never reuse a sequence number already sent.
            saved.addCallbacks(self._broadcast_adds, self._persist_failed, callbackArgs=(payloads,))
        self._changed(events)

    def _add_payload(
        self, events: list[MemberState], origins: dict[str, int], if_version: int
    ) -> dict[str, Any]:
        return {
            "add": [e.member_id for e in events if e.present],
            "remove": [e.member_id for e in events if not e.present],
            "if_version": if_version,
            "version": self.state.version,
            "events": [e.to_wire() for e in events],
            "counters": dict(origins),
        }

    def _broadcast_adds(self, _: object, payloads: list[dict[str, Any]]) -> None:
        for payload in payloads:
            self._peers.broadcast(self._signer.frame("PUBLIC_CHANNEL_ADD", "*", payload))

    def _persist(self, states: list[MemberState], origins: dict[str, int]) -> None:
        if states or origins:
            d = self._store.save_group_state(GROUP, [s.to_store() for s in states], origins)
            d.addErrback(self._persist_failed)

    def _persist_failed(self, failure: Failure) -> None:
        self.counters["persist_failed"] += 1
        self._log.failure("Could not save the public channel state", failure)

    def _changed(self, states: list[MemberState]) -> None:
        """Member states changed (or only the version): re-join our users, tell them, re-key."""
        rejoin = []
        for state in states:
            if not state.present:
                entry = self._presence.lookup(state.member_id)
                if entry is not None and entry.local:
                    rejoin.append((state.member_id, True, self.server_id, entry.pubkey))
        if rejoin and self.running:
            self.counters["rejoined"] += len(rejoin)
            self._emit(rejoin)  # calls _changed again, with joins only
            return
        self._push_when_due()
        self._key_check()

    # ------------------------------------------------------------ presence (IPresenceObserver)

    def user_online(self, entry: Any) -> None:
        if not entry.local:
            return
        self._awaiting_snapshot[entry.user_id] = entry.link
        # After the USER_HELLO's ACK, which the user side sends once observers returned.
        self._clock.callLater(0, self._when_ready, lambda: self._send_snapshot(entry.user_id, entry.link))
        self._when_ready(lambda: self._local_join(entry))

    def user_offline(self, entry: Any) -> None:
        if not entry.local:
            return
        if self._awaiting_snapshot.get(entry.user_id) is entry.link:
            del self._awaiting_snapshot[entry.user_id]
        self._when_ready(lambda: self._local_leave(entry.user_id))

    def _local_join(self, entry: Any) -> None:
        if not self.running or self._presence.local_link(entry.user_id) is not entry.link:
            return
        self._emit([(entry.user_id, True, self.server_id, entry.pubkey)])

    def _local_leave(self, user_id: str) -> None:
        state = self.state.states.get(user_id)
        if (
            self.running
            and state is not None
            and state.present
            and state.host_id == self.server_id
            and self._presence.local_link(user_id) is None
        ):
            self._emit([(user_id, False, self.server_id, None)])

    # ------------------------------------------------------------ gossip from the mesh

    def _gossip(
        self, handler: Callable[[wire.Envelope, ILink], None]
    ) -> Callable[[wire.Envelope, ILink], None]:
        def receive(envelope: wire.Envelope, link: ILink) -> None:
            if not self.running:
                return
            self._when_ready(lambda: self._checked(handler, envelope, link))

        return receive

    def _checked(self, handler, envelope: wire.Envelope, link: ILink) -> None:
        try:
            handler(envelope, link)
        except wire.FrameError as e:
            self._drop(envelope, e.detail)

    def _drop(self, envelope: wire.Envelope, detail: str) -> None:
        """A peer's frame we refuse: log and count it, never answer (PROTOCOL.md §5)."""
        self.counters["dropped." + envelope.type] += 1
        self._log.warn(
            "Dropped {type} from server {origin}: {detail}",
            type=envelope.type,
            origin=envelope.from_,
            detail=detail,
        )

    def _flood(self, envelope: wire.Envelope, link: ILink) -> None:
        """Pass a ``to: "*"`` frame on unchanged to every other server (seen_ids stops loops)."""
        if envelope.to != "*":
            return
        raw = wire.encode_frame(
            envelope.type, envelope.from_, envelope.to, envelope.ts, envelope.payload, envelope.sig
        )
        self.counters["forwarded"] += self._peers.broadcast(raw, exclude=link.link_id)

    def _add_received(self, envelope: wire.Envelope, link: ILink) -> None:
        payload = envelope.payload
        if "events" not in payload:
            # Another implementation's bare {add, if_version}: no event ids to merge.  Its users
            # become members through the leader's sweep instead (docs/PUBLIC-CHANNEL.md).
            self.counters["foreign_add"] += 1
            self._log.info(
                "Ignored PUBLIC_CHANNEL_ADD without events from server {origin}", origin=envelope.from_
            )
            self._flood(envelope, link)
            return
        raw_events = wire.require_list(payload, "events", max_len=MAX_EVENTS_PER_FRAME)
        events = [parse_event(e) for e in raw_events]
        origins = parse_origins(payload.get("counters"))
        self._flood(envelope, link)
        accepted = []
        for event in events:
            if event.present and self.state.would_change(event):
                try:
                    key = crypto.load_public_key(event.pubkey)
                except crypto.BadKey as e:
                    self._drop(envelope, f"event for {event.member_id}: {e.detail}")
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
        before = self.state.version
        changed, raised = self.state.merge(accepted, origins)
        self.counters["events_merged"] += len(changed)
        if not changed and not raised:
            return
        if_version = payload.get("if_version")
        if isinstance(if_version, int) and envelope.to == "*" and if_version != before:
            self.counters["concurrent_events"] += 1
        self._log.debug(
            "Public channel: merged {count} states from {origin}, version {before} -> {version}",
            count=len(changed),
            origin=envelope.from_,
            before=before,
            version=self.state.version,
        )
        self._persist(changed, raised)
        if envelope.to != "*" and self._peers.connected_servers():
            # Learnt through a state exchange: pass what was new to us on to the others.
            self._regossip(changed, raised, before, exclude=link.link_id)
        self._changed(changed)

    def _regossip(
        self, states: list[MemberState], origins: dict[str, int], before: int, exclude: str | None
    ) -> None:
        for chunk in _chunks(states, self.states_per_frame):
            payload = self._add_payload(chunk, origins, before)
            self._peers.broadcast(self._signer.frame("PUBLIC_CHANNEL_ADD", "*", payload), exclude=exclude)

    def _mesh_changed(self) -> None:
        """IPeerLinks change observer: exchange state with newly linked servers; the leader may differ."""
        if not self.ready or not self.running:
            return  # _loaded calls us again: every link up then counts as new
        connected = set(self._peers.connected_servers())
        new, self._linked = connected - self._linked, connected
        for server_id in sorted(new):
            self._send_state(server_id)
        self._key_check()

    def _send_state(self, server_id: str) -> None:
        """Anti-entropy: our whole state to one server (``sync``), in frames of bounded size."""
        if not self.state.origins:
            return
        states = sorted(self.state.states.values(), key=lambda s: s.member_id)
        version = self.state.version
        for chunk in _chunks(states, self.states_per_frame):
            payload = self._add_payload(chunk, self.state.origins, version)
            payload["sync"] = True
            self._peers.send_to_server(
                server_id, self._signer.frame("PUBLIC_CHANNEL_ADD", server_id, payload)
            )
        if self._key_valid(self.key, self.state.members()):
            # The key of this state too: a server that reaches it by this exchange needs no new one.
            for payload in self._key_payloads(self.key):
                frame = self._signer.frame("PUBLIC_CHANNEL_UPDATED", server_id, payload)
                self._peers.send_to_server(server_id, frame)
        self.counters["state_sent"] += 1

    # ------------------------------------------------------------ the leader's sweep

    def is_leader(self) -> bool:
        """The lowest server id among this server and its live peers cleans up and makes keys."""
        return self.server_id.lower() == min(
            s.lower() for s in [self.server_id, *self._peers.connected_servers()]
        )

    def _sweep(self) -> None:
        """Leave for our own members who are not connected (after a restart or a missed close);
        as leader, leave for members whose server vanished and join users of servers that
        don't speak these frames, once that has lasted ``evict_after`` seconds."""
        if not self.ready or not self.running:
            return
        own_gone = [
            (s.member_id, False, self.server_id, None)
            for s in self.state.states.values()
            if s.present and s.host_id == self.server_id and self._presence.local_link(s.member_id) is None
        ]
        if own_gone:
            self.counters["swept_own"] += len(own_gone)
            self._emit(own_gone)
        if not self.is_leader():
            self._stale_since.clear()
            return
        now = self._clock.seconds()
        connected = set(self._peers.connected_servers())
        speaking = set(self.state.origins)
        stale: dict[str, tuple[str, bool, str, str | None]] = {}
        for s in self.state.states.values():
            if not s.present or s.host_id == self.server_id:
                continue
            if self._presence.lookup(s.member_id) is not None:
                continue
            if s.host_id in connected and s.host_id in speaking:
                continue  # its server is up and will say when it leaves
            stale[s.member_id] = (s.member_id, False, s.host_id, None)
        for user_id in self._presence.online_users():
            entry = self._presence.lookup(user_id)
            if entry is None or entry.local or entry.server_id in speaking:
                continue
            if not self.state.is_member(user_id):
                stale[user_id] = (user_id, True, entry.server_id, entry.pubkey)
        for member_id in list(self._stale_since):
            if member_id not in stale:
                del self._stale_since[member_id]
        due = []
        for member_id, change in stale.items():
            since = self._stale_since.setdefault(member_id, now)
            if now - since >= self.evict_after:
                due.append(change)
                del self._stale_since[member_id]
        if due:
            self.counters["swept"] += len(due)
            self._log.info("Public channel: the leader corrects {count} stale members", count=len(due))
            self._emit(due)

    # ------------------------------------------------------------ membership pushed to local users

    def _local_links(self) -> list[ILink]:
        return [
            e.link
            for e in self._presence.local_entries()
            if self._awaiting_snapshot.get(e.user_id) is not e.link
        ]

    def _fan_out(self, frame_type: str, payload: dict[str, Any], links: list[ILink]) -> None:
        """Sign one frame (to ``"*"``) and send the same bytes on every link of ``links``."""
        if links:
            sign_for_all(self._signer, self._log, frame_type, payload, links)

    def _push_when_due(self) -> None:
        """Tell local users the change now, or once ``push_interval`` has passed since the last push.

        A burst of joins (a reconnect storm) is then one update to every local user per
        interval, carrying all the changes since the previous one, instead of one per join:
        each update is a signature and a frame to every local user.  Users who arrive
        meanwhile get the membership as of the last push in their snapshot and the rest in
        the next update, like everybody else.
        """
        if not self.running:
            return  # stopping: our users are going offline with us
        if self._push_timer is not None and self._push_timer.active():
            return  # the update already waiting will carry this change too
        if self._last_push is not None:
            wait = self._last_push + self.push_interval - self._clock.seconds()
            if wait > 0:
                self.counters["pushes_deferred"] += 1
                self._push_timer = self._clock.callLater(wait, self._push_due)
                return
        self._push_membership()

    def _push_due(self) -> None:
        self._push_timer = None
        if self.ready and self.running:
            self._push_membership()

    def _push_membership(self) -> None:
        """Tell local users what changed since the last push (one frame per chunk of members)."""
        current = self.state.members()
        version = self.state.version
        added = [
            {"user_id": m, "pubkey": pk} for m, pk in sorted(current.items()) if self._pushed.get(m) != pk
        ]
        removed = sorted(m for m in self._pushed if m not in current)
        if not added and not removed and version == self._pushed_version:
            return
        self._last_push = self._clock.seconds()
        self._pushed, self._pushed_version = current, version
        self._drop_snapshot()
        links = self._local_links()
        for index, chunk in enumerate(_chunks(added, self.members_per_frame)):
            payload = {
                "version": version,
                "wraps": [],
                "members": chunk,
                "removed": removed if index == 0 else [],
                "reset": False,
            }
            self._fan_out("PUBLIC_CHANNEL_UPDATED", payload, links)
        self.counters["membership_pushed"] += 1

    def _send_snapshot(self, user_id: str, link: ILink) -> None:
        """After the hello: the whole membership (``reset``), then the user's key share if any."""
        if self._awaiting_snapshot.get(user_id) is not link:
            return
        del self._awaiting_snapshot[user_id]
        if self._presence.local_link(user_id) is not link:
            return
        for frame in self._snapshot_frames():
            link.send(frame)
        if self.key is not None and user_id in self.key.member_ids():
            self._send_shares(self.key, {user_id: link})

    def _snapshot_frames(self) -> list[bytes | Deferred]:
        """The snapshot of ``_pushed`` for one user: signed once (to "*") for every user arriving
        until the next push, as a fan-out is; a storm of arrivals shares it."""
        cached = self._snapshot
        if cached is None or cached[0] is not self._pushed:
            members = [{"user_id": m, "pubkey": pk} for m, pk in sorted(self._pushed.items())]
            frames: list[bytes | Deferred] = []
            cached = self._snapshot = (self._pushed, frames)
            for index, chunk in enumerate(_chunks(members, self.members_per_frame)):
                payload = {
                    "version": self._pushed_version,
                    "wraps": [],
                    "members": chunk,
                    "removed": [],
                    "reset": index == 0,
                }
                d = self._signer.frame("PUBLIC_CHANNEL_UPDATED", "*", payload)
                frames.append(d)
                d.addCallbacks(
                    self._snapshot_signed,
                    self._snapshot_failed,
                    callbackArgs=(frames, index),
                    errbackArgs=(frames,),
                )
            self.counters["snapshots_signed"] += 1
            if self._snapshot_expiry is None or not self._snapshot_expiry.active():
                keep = max(1.0, self.push_interval)
                self._snapshot_expiry = self._clock.callLater(keep, self._drop_snapshot)
        return [copies_of(frame, 1)[0] for frame in cached[1]]

    def _snapshot_signed(self, data: bytes, frames: list, index: int) -> bytes:
        frames[index] = data  # later users get the bytes themselves
        return data

    def _snapshot_failed(self, failure: Failure, frames: list) -> None:
        self._log.failure("Could not sign a public channel snapshot", failure)
        if self._snapshot is not None and self._snapshot[1] is frames:
            self._snapshot = None  # the next user gets a freshly signed one
        # Handled: the users' copies fail with "not signed" and their senders skip it.

    def _drop_snapshot(self) -> None:
        if self._snapshot_expiry is not None and self._snapshot_expiry.active():
            self._snapshot_expiry.cancel()
        self._snapshot_expiry = None
        self._snapshot = None

    # ------------------------------------------------------------ group keys

    def _cancel_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None

    def _key_valid(self, key: GroupKey | None, members: dict[str, str]) -> bool:
        return key is not None and key.version == self.state.version and key.member_ids() == set(members)

    def _key_check(self) -> None:
        """Make sure the current version has a key: adopt one received, or make one (leader)."""
        if not self.ready or not self.running:
            return
        version = self.state.version
        members = self.state.members()
        for slot in [s for s in self._pending_keys if s[0] < version]:
            del self._pending_keys[slot]
        if not members:
            self._cancel_watchdog()
            return
        candidates = [
            key
            for key in (p.complete() for p in self._pending_keys.values())
            if key is not None and self._key_valid(key, members)
        ]
        if candidates:
            best = min(candidates, key=lambda k: k.creator.lower())
            if not self._key_valid(self.key, members) or best.creator.lower() < self.key.creator.lower():
                self._adopt(best)
        if self._key_valid(self.key, members):
            self._cancel_watchdog()
            return
        if self.is_leader():
            self._cancel_watchdog()
            self._generate_when_due()
        elif self._watchdog is None or not self._watchdog.active() or self._watchdog_version != version:
            # Re-armed on every version change: it fires only once a version stayed keyless.
            self._cancel_watchdog()
            self._watchdog_version = version
            self._watchdog = self._clock.callLater(self.key_timeout, self._watchdog_fired)

    def _watchdog_fired(self) -> None:
        """No key from the leader in time (it may not make keys at all): make one ourselves."""
        self._watchdog = None
        if self.ready and self.running and not self._key_valid(self.key, self.state.members()):
            self.counters["key_watchdog"] += 1
            self._generate()

    def _cancel_rekey_timer(self) -> None:
        if self._rekey_timer is not None and self._rekey_timer.active():
            self._rekey_timer.cancel()
        self._rekey_timer = None

    def _generate_when_due(self) -> None:
        """Make a key now, or once ``rekey_interval`` has passed since the last one was started.

        While the version keeps changing (a burst of joins), the leader makes at most one key
        per interval: the key made when the timer fires is for the membership of that moment,
        so a burst costs one key after it instead of one per join.  The first change after a
        quiet interval is keyed at once.
        """
        if self._generating:
            self._generate_again = True  # checked again when that one is over
            return
        if self._last_key_started is not None:
            wait = self._last_key_started + self.rekey_interval - self._clock.seconds()
            if wait > 0:
                if self._rekey_timer is None or not self._rekey_timer.active():
                    self.counters["rekeys_deferred"] += 1
                    self._rekey_timer = self._clock.callLater(wait, self._rekey_due)
                return
        self._generate()

    def _rekey_due(self) -> None:
        self._rekey_timer = None
        self._key_check()  # the key may have come from elsewhere meanwhile, or the leader changed

    def _generate(self) -> None:
        if self._generating:
            self._generate_again = True
            return
        self._cancel_rekey_timer()
        version = self.state.version
        members = sorted(self.state.members().items())
        self._generating = True
        self._last_key_started = self._clock.seconds()
        self.counters["keys_started"] += 1
        d = self._workers.run(
            make_key_parts, self._private_key, self._signer.public_key_text, members, self.shares_per_part
        )
        d.addCallbacks(self._generated, self._generate_failed, callbackArgs=(version,))
        d.addBoth(self._generation_over)

    def _generated(self, parts: list[dict[str, Any]], version: int) -> None:
        if not self.running:
            return
        key = GroupKey(version, self.server_id, self._signer.public_key_text, parts)
        members = self.state.members()
        if not self._key_valid(key, members):
            self.counters["keys_outdated"] += 1  # the version moved on meanwhile: made again below
            self._generate_again = True
            return
        if self._key_valid(self.key, members) and self.key.creator.lower() < self.server_id.lower():
            return  # a lower server made one first
        self.counters["keys_made"] += 1
        self._log.info(
            "Public channel key for version {version} made here for {count} members",
            version=version,
            count=len(members),
        )
        for payload in self._key_payloads(key):
            self._peers.broadcast(self._signer.frame("PUBLIC_CHANNEL_UPDATED", "*", payload))
        self._adopt(key)

    @staticmethod
    def _key_payloads(key: GroupKey) -> list[dict[str, Any]]:
        """The PUBLIC_CHANNEL_UPDATED payloads (one per part) announcing ``key`` to servers."""
        return [
            {
                "version": key.version,
                "wraps": [
                    {"member_id": s["member"], "wrapped_key": s["wrapped_public_channel_key"]}
                    for s in part["shares"]
                ],
                "creator": key.creator,
                "creator_pub": key.creator_pub,
                "content_sig": part["content_sig"],
                "part": index,
                "parts": len(key.parts),
            }
            for index, part in enumerate(key.parts)
        ]

    def _generate_failed(self, failure: Failure) -> None:
        self.counters["keys_failed"] += 1
        self._log.failure("Could not make a public channel key", failure)

    def _generation_over(self, _: object) -> None:
        self._generating = False
        if self._generate_again:
            self._generate_again = False
            self._key_check()

    def _adopt(self, key: GroupKey) -> None:
        """``key`` is the key of the current version: keep it (wrapped only) and hand out shares."""
        self.key = key
        self._cancel_watchdog()
        for slot in [s for s in self._pending_keys if s[0] <= key.version]:
            del self._pending_keys[slot]
        self.counters["keys_adopted"] += 1
        if key.creator != self.server_id:
            self._log.info(
                "Public channel key for version {version} adopted from server {creator}",
                version=key.version,
                creator=key.creator,
            )
        d = self._store.set_group_key(
            GROUP, key.wraps(), {"key_version": key.version, "key_creator": key.creator}
        )
        d.addErrback(self._persist_failed)
        local = {}
        for member in key.member_ids():
            link = self._presence.local_link(member)
            if link is not None and self._awaiting_snapshot.get(member) is not link:
                local[member] = link
        self._send_shares(key, local)

    def _send_shares(self, key: GroupKey, links: dict[str, ILink]) -> None:
        """PUBLIC_CHANNEL_KEY_SHARE to local members: each gets the signed part holding its share."""
        for index, part in enumerate(key.parts):
            targets = [links[s["member"]] for s in part["shares"] if s["member"] in links]
            payload = {
                "shares": part["shares"],
                "creator_pub": key.creator_pub,
                "content_sig": part["content_sig"],
                "version": key.version,
                "creator": key.creator,
                "part": index,
                "parts": len(key.parts),
            }
            self._fan_out("PUBLIC_CHANNEL_KEY_SHARE", payload, targets)
            self.counters["key_shares_sent"] += len(targets)

    def _updated_received(self, envelope: wire.Envelope, link: ILink) -> None:
        payload = envelope.payload
        # Relayed keys name their creator; a key sent by its creator may leave it out.
        creator = wire.require_uuid(payload, "creator") if "creator" in payload else envelope.from_
        version = wire.require_int(payload, "version", minimum=1, maximum=MAX_COUNTER)
        raw_wraps = wire.require_list(payload, "wraps", max_len=MAX_EVENTS_PER_FRAME)
        if payload.get("creator_pub") is None or payload.get("content_sig") is None:
            raise wire.MissingField(
                "PUBLIC_CHANNEL_UPDATED without creator_pub/content_sig cannot be checked"
            )
        creator_pub = wire.require_str(payload, "creator_pub", max_len=MAX_KEY_TEXT)
        content_sig = wire.require_str(payload, "content_sig", max_len=2048)
        part = wire.require_int(payload, "part", minimum=0, maximum=MAX_KEY_PARTS) if "part" in payload else 0
        count = (
            wire.require_int(payload, "parts", minimum=1, maximum=MAX_KEY_PARTS) if "parts" in payload else 1
        )
        if part >= count:
            raise wire.BadFieldType("part must be below parts", "part")
        shares = []
        for item in raw_wraps:
            if not isinstance(item, dict):
                raise wire.BadFieldType("each wrap must be an object", "wraps")
            shares.append(
                {
                    "member": wire.require_uuid(item, "member_id"),
                    "wrapped_public_channel_key": _wrapped_of(item),
                }
            )
        pinned = self._peers.server_key(creator)
        try:
            offered = crypto.load_public_key(creator_pub)
        except crypto.BadKey as e:
            raise wire.InvalidSig(f"creator_pub: {e.detail}") from None
        if pinned is None or crypto.encode_public_key(offered) != crypto.encode_public_key(pinned):
            raise wire.InvalidSig(f"creator_pub is not the key pinned for server {creator}")
        if not crypto.verify_content_sig(pinned, crypto.keyshare_preimage(shares, creator_pub), content_sig):
            self.counters["key_invalid_sig"] += 1
            raise wire.InvalidSig("content_sig of the key shares does not verify")
        self._flood(envelope, link)
        if version < self.state.version:
            self.counters["keys_stale"] += 1
            return
        slot = (version, creator)
        pending = self._pending_keys.get(slot)
        if pending is None or pending.count != count or pending.creator_pub != creator_pub:
            while len(self._pending_keys) >= MAX_PENDING_KEYS:
                del self._pending_keys[min(self._pending_keys)]
            pending = self._pending_keys[slot] = _PartialKey(version, creator, creator_pub, count)
        pending.parts[part] = {"shares": shares, "content_sig": content_sig}
        if pending.complete() is not None:
            self._key_check()

    # ------------------------------------------------------------ MSG_PUBLIC_CHANNEL from local users

    def _user_message(self, link: ILink, sender: str, envelope: wire.Envelope) -> Deferred | None:
        """One member's copy of a public message: check it and route it like a DM."""
        if not self.ready:
            if not self.running:
                raise _NotMember("the public channel is not available on this server")
            d: Deferred = Deferred()
            self._waiting.append(lambda: d.callback(None))
            d.addCallback(lambda _: self._user_message(link, sender, envelope))
            return d
        payload = envelope.payload
        recipient = envelope.to
        if recipient == GROUP:
            raise wire.BadFieldType(
                "send MSG_PUBLIC_CHANNEL once per member, to that member's user id, encrypted to its key"
                " (SOCP v1.3 has no group cipher)",
                "to",
            )
        if not wire.is_uuid(recipient):
            raise wire.BadUUID("MSG_PUBLIC_CHANNEL 'to' must be a member's user id", "to")
        fields = extract_fields("MSG_PUBLIC_CHANNEL", payload)
        sender_pub = wire.require_str(payload, "sender_pub", max_len=MAX_KEY_TEXT)
        own = self._users.authenticated_key(sender)
        if own is None or (sender_pub != own and _normalised(sender_pub) != own):
            raise wire.InvalidSig("sender_pub is not the key you authenticated with")
        if not self.state.is_member(recipient):
            self.counters["not_member"] += 1
            raise _NotMember(f"user {recipient} is not a member of the public channel")
        key = crypto.load_public_key(sender_pub)
        preimage = crypto.public_preimage(fields["ciphertext"], sender, envelope.ts)
        if crypto.pss_verify(key, preimage, fields["content_sig"]):  # what conforming clients send
            self._route(link, recipient, fields, envelope.ts, sender, sender_pub)
            return None
        d = self._workers.run(
            verify_user_content, "MSG_PUBLIC_CHANNEL", fields, sender, recipient, envelope.ts, sender_pub
        )
        d.addCallback(lambda _: self._route(link, recipient, fields, envelope.ts, sender, sender_pub))
        return d

    def _route(
        self, link: ILink, recipient: str, fields: dict[str, Any], ts: int, sender: str, sender_pub: str
    ) -> None:
        try:
            self._router.route("MSG_PUBLIC_CHANNEL", recipient, fields, ts, sender, sender_pub)
        except UserNotFound:
            self._users.send_error(
                link,
                "USER_NOT_FOUND",
                f"member {recipient} is not online",
                ref="MSG_PUBLIC_CHANNEL",
                user_id=recipient,
            )
            return
        self.counters["routed"] += 1  # counted, not logged: one copy per member per message


def _normalised(text: str) -> str | None:
    try:
        return crypto.encode_public_key(crypto.load_public_key(text))
    except crypto.BadKey:
        return None
