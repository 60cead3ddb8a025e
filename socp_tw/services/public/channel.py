"""The :class:`PublicChannel` service: life cycle, persistence and the events of local users.

The facade of the package (see ``socp_tw/services/public/__init__.py``): it owns the
replicated state and the collaborators, makes this server's events (a join at a user's
hello, a leave when it disconnects), persists them before they are gossiped, and passes
each change on to the parts: :class:`Pushes` (local users), :class:`Rekeying` (group keys),
:class:`Gossip` (other servers), :class:`Sweeper` (clean-up) and :class:`Messages`
(``MSG_PUBLIC_CHANNEL``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from zope.interface import implementer

from socp_tw.interfaces import (
    IPeerLinks,
    IPresence,
    IPresenceObserver,
    IRouter,
    ISigner,
    IStore,
    IUserFrames,
    IUserKeys,
    IWorkers,
)
from socp_tw.logs import get_logger
from socp_tw.services.public.gossip import Gossip
from socp_tw.services.public.keys import GroupKey
from socp_tw.services.public.messages import Messages
from socp_tw.services.public.pushes import Pushes
from socp_tw.services.public.rekey import Rekeying
from socp_tw.services.public.state import GROUP, MAX_MEMBERS, ChannelState, MemberState, chunks
from socp_tw.services.public.sweep import Sweeper
from socp_tw.timers import repeating, stop_repeating

__all__ = ["Change", "PublicChannel"]

#: One membership change to make an event of: (member id, present, host server id, pubkey).
Change = tuple[str, bool, str, str | None]


@implementer(IPresenceObserver)
class PublicChannel(Service):
    """The public channel of this server (docs/PUBLIC-CHANNEL.md)."""

    name = "public"
    _log = get_logger("socp_tw.public")

    def __init__(
        self,
        store: IStore,
        presence: IPresence,
        peers: IPeerLinks,
        router: IRouter,
        users: IUserFrames,
        signer: ISigner,
        workers: IWorkers,
        clock: Any = None,
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
        user_keys: IUserKeys | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.store = IStore(store)
        self.presence = IPresence(presence)
        self.peers = IPeerLinks(peers)
        self.router = IRouter(router)
        self.users = IUserFrames(users)
        self.signer = ISigner(signer)
        self.workers = IWorkers(workers)
        #: Server-side user key pins: a member event with another key is dropped (docs/SECURITY.md).
        self.user_keys = IUserKeys(user_keys) if user_keys is not None else None
        self.clock = clock
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
        self.key: GroupKey | None = None  # the key of the current version, once there is one
        self.ready = False
        self._waiting: list[Callable[[], None]] = []  # work that arrived before the state was loaded
        self._sweeper: LoopingCall | None = None
        self._loading: Deferred | None = None
        #: Local joins (the presence entry) and leaves (None) of this reactor turn, made into
        #: events together at its end: a burst of arrivals or departures is one emit.
        self._pending: dict[str, Any] = {}
        self._pending_call: Any = None

        self.pushes = Pushes(self)
        self.rekeying = Rekeying(self)
        self.sweeper = Sweeper(self)
        self.presence.add_observer(self)
        self.gossip = Gossip(self)
        self.messages = Messages(self)

    @property
    def server_id(self) -> str:
        return self.signer.server_id

    def live(self) -> bool:
        """True once the state is loaded and while the service runs: the parts may act."""
        return self.ready and self.running

    def is_leader(self) -> bool:
        """The lowest server id among this server and its live peers cleans up and makes keys."""
        return self.server_id.lower() == min(
            s.lower() for s in [self.server_id, *self.peers.connected_servers()]
        )

    # ------------------------------------------------------------ service

    def startService(self) -> None:
        super().startService()
        self._loading = self.store.load_group(GROUP)
        self._loading.addCallback(self._loaded)
        self._loading.addErrback(self._load_failed)

    def stopService(self) -> None:
        super().stopService()
        if self._pending_call is not None and self._pending_call.active():
            self._pending_call.cancel()  # what they would add is covered by the leaves below
        self._pending_call, self._pending = None, {}
        stop_repeating(self._sweeper)
        self.rekeying.stop()
        self.pushes.stop()
        if self.ready:
            # Our users go offline with us: tell the mesh now, while its links are still up.
            leaving = [
                s.member_id
                for s in self.state.states.values()
                if s.present and s.host_id == self.server_id and self.presence.local_link(s.member_id)
            ]
            if leaving:
                self.emit([(m, False, self.server_id, None) for m in leaving], urgent=True)
        self.ready = False

    def _loaded(self, group: dict[str, Any] | None) -> None:
        if group is None:
            self._log.error("The store has no {group!r} group: the public channel is disabled", group=GROUP)
            return
        states = [MemberState.from_store(row) for row in group["states"]]
        self.state.merge(states, group["origins"])
        self.pushes.loaded()
        self._log.info(
            "Public channel loaded: version {version}, {members} current member(s)",
            version=self.state.version,
            members=len(self.pushes.pushed),
        )
        if not self.running:
            return
        self.ready = True
        waiting, self._waiting = self._waiting, []
        for work in waiting:
            self._safely(work)
        self.sweeper.sweep()
        self._sweeper = repeating(self.clock, self.sweep_interval, self.sweeper.sweep)
        self.gossip.mesh_changed()

    def _load_failed(self, failure: Failure) -> None:
        self._log.failure("Could not load the public channel: it is disabled", failure)

    def when_ready(self, work: Callable[[], None]) -> None:
        """Run ``work`` now if the state is loaded, or once it is (dropped if the service stopped)."""
        if self.ready:
            work()
        elif self.running:
            self._waiting.append(work)

    def _safely(self, work: Callable[[], None]) -> None:
        try:
            work()
        except Exception:
            self._log.failure("Public channel work failed")

    # ------------------------------------------------------------ events and persistence

    def emit(self, changes: list[Change], urgent: bool = False) -> None:
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
        if not events:
            return
        if len(events) == 1:
            self._log.info(
                "Public channel: {member} {what} (version {version})",
                member=events[0].member_id,
                what="joined" if events[0].present else "left",
                version=self.state.version,
            )
        else:
            joined = sum(1 for e in events if e.present)
            self._log.info(
                "Public channel: {joined} joined and {left} left at once (version {version})",
                joined=joined,
                left=len(events) - joined,
                version=self.state.version,
            )
        own = {self.server_id: self.state.origins[self.server_id]}
        self.counters["events_made"] += len(events)
        payloads = [self.add_payload(chunk, own, before) for chunk in chunks(events, self.states_per_frame)]
        saved = self.store.save_group_state(GROUP, [e.to_store() for e in events], own)
        if urgent:
            saved.addErrback(self.persist_failed)
            for payload in payloads if self.peers.connected_servers() else ():
                self.peers.broadcast(self.signer.frame_now("PUBLIC_CHANNEL_ADD", "*", payload))
        else:
            # Persisted first: a restart must never reuse a sequence number already sent.
            saved.addCallbacks(self._broadcast_adds, self.persist_failed, callbackArgs=(payloads,))
        self.changed(events)

    def add_payload(
        self, events: list[MemberState], origins: dict[str, int], if_version: int
    ) -> dict[str, Any]:
        """The payload of a PUBLIC_CHANNEL_ADD carrying ``events`` and ``origins``."""
        return {
            "add": [e.member_id for e in events if e.present],
            "remove": [e.member_id for e in events if not e.present],
            "if_version": if_version,
            "version": self.state.version,
            "events": [e.to_wire() for e in events],
            "counters": dict(origins),
        }

    def _broadcast_adds(self, _: object, payloads: list[dict[str, Any]]) -> None:
        """Gossip our new events; with no server linked, nothing is signed: a server that links
        later gets them in our whole state (``gossip.mesh_changed``)."""
        if not self.peers.connected_servers():
            return
        for payload in payloads:
            self.peers.broadcast(self.signer.frame("PUBLIC_CHANNEL_ADD", "*", payload))

    def persist(self, states: list[MemberState], origins: dict[str, int]) -> None:
        """Save merged member states and raised counters (errors are logged and counted)."""
        if states or origins:
            d = self.store.save_group_state(GROUP, [s.to_store() for s in states], origins)
            d.addErrback(self.persist_failed)

    def persist_failed(self, failure: Failure) -> None:
        self.counters["persist_failed"] += 1
        self._log.failure("Could not save the public channel state", failure)

    def changed(self, states: list[MemberState]) -> None:
        """Member states changed (or only the version): re-join our users, tell them, re-key."""
        rejoin = []
        for state in states:
            if not state.present:
                entry = self.presence.lookup(state.member_id)
                if entry is not None and entry.local:
                    rejoin.append((state.member_id, True, self.server_id, entry.pubkey))
        if rejoin and self.running:
            self.counters["rejoined"] += len(rejoin)
            self.emit(rejoin)  # calls changed again, with joins only
            return
        self.pushes.push_when_due()
        self.rekeying.check()

    # ------------------------------------------------------------ presence (IPresenceObserver)

    def user_online(self, entry: Any) -> None:
        if not entry.local:
            return
        self.pushes.user_arrived(entry.user_id, entry.link)
        self.when_ready(lambda: self._local_join(entry))

    def user_offline(self, entry: Any) -> None:
        if not entry.local:
            return
        self.pushes.user_left(entry.user_id, entry.link)
        self.when_ready(lambda: self._local_leave(entry.user_id))

    def _local_join(self, entry: Any) -> None:
        if self.running:
            self._queue(entry.user_id, entry)

    def _local_leave(self, user_id: str) -> None:
        if self.running:
            self._queue(user_id, None)

    def _queue(self, user_id: str, entry: Any) -> None:
        """Keep the last change of ``user_id`` for the end of this reactor turn."""
        self._pending.pop(user_id, None)
        self._pending[user_id] = entry
        if self._pending_call is None:
            self._pending_call = self.clock.callLater(0, self._emit_pending)

    def flush_pending(self) -> None:
        """Make the events of this turn's joins and leaves now (a snapshot about to go out
        must hold its own user's join)."""
        if self._pending_call is not None and self._pending_call.active():
            self._pending_call.cancel()
            self._emit_pending()

    def _emit_pending(self) -> None:
        """One emit for the turn's joins and leaves, each checked against presence now."""
        self._pending_call = None
        pending, self._pending = self._pending, {}
        if not self.running:
            return
        changes: list[Change] = []
        for user_id, entry in pending.items():
            link = self.presence.local_link(user_id)
            if entry is not None:
                if link is entry.link:
                    changes.append((user_id, True, self.server_id, entry.pubkey))
                continue
            state = self.state.states.get(user_id)
            if state is not None and state.present and state.host_id == self.server_id and link is None:
                changes.append((user_id, False, self.server_id, None))
        if changes:
            self.emit(changes)
