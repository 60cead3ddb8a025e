"""The public channel's membership as a CRDT: pure bookkeeping, no I/O, no Twisted.

Each join or leave is an *event* ``(origin server, seq)`` with a Lamport timestamp; the
version is the number of events (the sum of each origin's highest ``seq``) and each
member's state is the newest event about it (last writer wins by ``(lamport, origin, seq)``).
Merging is commutative, associative and idempotent (docs/PUBLIC-CHANNEL.md §3).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from socp_tw import wire

__all__ = [
    "GROUP",
    "MAX_COUNTER",
    "MAX_EVENTS_PER_FRAME",
    "MAX_KEY_TEXT",
    "MAX_MEMBERS",
    "ChannelState",
    "MemberState",
    "chunks",
    "parse_event",
    "parse_origins",
]

GROUP = "public"

MAX_COUNTER = 2**53  # lamport / seq values accepted from peers
MAX_MEMBERS = 100_000  # member states held: gossip is hostile input too
MAX_EVENTS_PER_FRAME = 1000
MAX_ORIGINS_PER_FRAME = 1000
MAX_KEY_TEXT = 16384


def chunks(items: list, size: int) -> list[list]:
    """``items`` in lists of at most ``size``; one empty list for no items (one frame still goes)."""
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]


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
    """The replicated membership (see the module docstring)."""

    def __init__(self, max_members: int = MAX_MEMBERS) -> None:
        self.states: dict[str, MemberState] = {}
        self._members: dict[str, str] = {}  # kept with ``states`` by merge: no scan per event
        self.origins: dict[str, int] = {}
        self.lamport = 0
        self.version = 0
        self.max_members = max_members
        self.refused_full = 0

    def members(self) -> dict[str, str]:
        """Current members: member id -> public key.  The live table, not a copy (a burst of
        departures asks for it once per event): read it, copy it to keep it."""
        return self._members

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
            if event.present:
                self._members[event.member_id] = event.pubkey or ""
            else:
                self._members.pop(event.member_id, None)
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
