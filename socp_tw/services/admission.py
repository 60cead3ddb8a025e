"""Fair admission: who may open one more not-yet-authenticated connection (docs/SECURITY.md §4).

A connection is *pending* until it authenticates (its role leaves ``"pending"``), and
*unidentified* until it has sent an identifying first frame.  Both are cheap for a client
to hold open and cost the server a slot, so they are bounded per source address as well as
in total:

- at most ``max_unidentified_per_address`` unidentified and ``max_pending_per_address``
  pending connections from one address; a connection beyond that is refused;
- at most ``max_pending_connections`` pending in all.  When that is reached the newcomer is
  refused only if its address already holds the most pending connections; otherwise the
  address holding the most gives up its oldest (unidentified first), so one address, or a
  few, can never lock out everyone else.

Addresses are compared as IPv4 addresses or IPv6 /64 networks (one host usually holds a
whole /64).  Loopback is an address like any other.  Users behind one NAT share an address:
the per-address caps are well above the logins a NAT sees at once (a login takes one round
trip), and a user past them is told to try again (1013).

A link stops being pending when its role changes, which the hub is not told of: the table
drops such links lazily (:meth:`Admission.prune`, O(pending)) before it counts.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass

from socp_tw.interfaces import ILink
from socp_tw.limits import Limits

__all__ = ["Admission", "Verdict", "source_address"]


def source_address(peer: str) -> str:
    """The address a link's ``peer`` (``host:port``, ``tcp6:host:port``, ``[host]:port``) is
    counted under: the IPv4 address, the IPv6 /64, or the text itself if it is neither."""
    text = peer.removeprefix("tcp6:").removeprefix("tcp:")
    if text.startswith("[") and "]" in text:
        host = text[1 : text.index("]")]
    elif ":" in text:
        host = text.rsplit(":", 1)[0]  # the port goes; "::1:5555" (Autobahn's tcp6) -> "::1"
    else:
        host = text
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


@dataclass(eq=False)
class _Entry:
    link: ILink
    address: str
    identified: bool = False


@dataclass(frozen=True)
class Verdict:
    """The answer for a new connection: admit it (after closing ``evict``, if set) or refuse it."""

    admit: bool
    why: str = ""
    evict: ILink | None = None
    counter: str = "full"  # refused.<counter>: "full" (the total) or "address" (a per-address cap)


class Admission:
    """The pending connections, oldest first, counted by source address."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._entries: dict[str, _Entry] = {}  # by link_id, in the order they opened
        self._pending: Counter[str] = Counter()
        self._unidentified: Counter[str] = Counter()

    def pending(self) -> int:
        """Connections not yet authenticated."""
        self.prune()
        return len(self._entries)

    def pending_from(self, address: str) -> tuple[int, int]:
        """(pending, unidentified) connections from ``address`` (after :meth:`prune`)."""
        return self._pending[address], self._unidentified[address]

    def check(self, link: ILink) -> Verdict:
        """May ``link``, just opened, join the pending connections?"""
        self.prune()
        limits = self.limits
        address = source_address(link.peer)
        pending, unidentified = self._pending[address], self._unidentified[address]
        if unidentified >= limits.max_unidentified_per_address:
            why = f"too many connections from {address} not identified yet ({unidentified}); try again"
            return Verdict(False, why, counter="address")
        if pending >= limits.max_pending_per_address:
            why = f"too many connections from {address} logging in ({pending}); try again"
            return Verdict(False, why, counter="address")
        if len(self._entries) < limits.max_pending_connections:
            return Verdict(True)
        heaviest, most = self._pending.most_common(1)[0]
        if pending >= most:
            return Verdict(
                False, f"too many connections logging in ({limits.max_pending_connections}); try again"
            )
        victim = self._oldest_of(heaviest)
        return Verdict(
            True,
            f"too many connections logging in ({limits.max_pending_connections}), "
            f"the most ({most}) from {heaviest}; try again",
            victim,
        )

    def add(self, link: ILink) -> None:
        entry = self._entries[link.link_id] = _Entry(link, source_address(link.peer))
        self._pending[entry.address] += 1
        self._unidentified[entry.address] += 1

    def identified(self, link: ILink) -> None:
        """``link`` sent an identifying frame (a login has started)."""
        entry = self._entries.get(link.link_id)
        if entry is not None and not entry.identified:
            entry.identified = True
            self._decrement(self._unidentified, entry.address)

    def remove(self, link: ILink) -> None:
        entry = self._entries.pop(link.link_id, None)
        if entry is not None:
            self._drop(entry)

    def prune(self) -> None:
        """Forget the links that have authenticated (as a user or a server) since they opened."""
        done = [link_id for link_id, entry in self._entries.items() if entry.link.role != "pending"]
        for link_id in done:
            self._drop(self._entries.pop(link_id))

    def _oldest_of(self, address: str) -> ILink:
        oldest = None
        for entry in self._entries.values():
            if entry.address == address:
                if not entry.identified:
                    return entry.link
                oldest = oldest or entry
        assert oldest is not None  # the address was counted
        return oldest.link

    def _drop(self, entry: _Entry) -> None:
        self._decrement(self._pending, entry.address)
        if not entry.identified:
            self._decrement(self._unidentified, entry.address)

    @staticmethod
    def _decrement(counter: Counter[str], key: str) -> None:
        counter[key] -= 1
        if counter[key] <= 0:
            del counter[key]
