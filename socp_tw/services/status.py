"""The operator's status line: which servers are live, how many users, how much was refused.

Logged every ``--status-interval`` seconds and at once (coalesced to one line per
reactor turn) whenever the set of linked servers changes::

    Status: Known servers: 3f2504e0-... 7c9e6679-... | users local=2 total=5 | links=2
      | rejected: server frames=0, server links=0        (one line in the log)

"server frames": frames of identified server links we dropped (bad or missing signature,
changed key, bad presence gossip; a link cut off for bad signatures counts too);
"server links": connections that tried to identify as a server and were refused (a refused
HELLO/JOIN/LINK, a refused WELCOME, refusals of a backed-off address).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall

from socp_tw.interfaces import IPeerLinks, IPresence
from socp_tw.logs import get_logger
from socp_tw.timers import repeating, stop_repeating

#: Mesh counters that mean "a peer sent something we refused" (see docs/MESH.md).
REJECTED_COUNTERS = ("verify_failed", "key_refused", "dropped.bad_gossip", "cut_off")
#: Mesh counters of refused server connections.
REFUSED_PREFIXES = ("refused.", "welcome.refused")


def user_counts(presence: Any) -> tuple[int, int]:
    """(local users, users online anywhere) from any IPresence."""
    counts = getattr(presence, "counts", None)
    if counts is not None:
        return counts()
    return len(presence.local_entries()), len(presence.online_users())


class StatusReporter(Service):
    """Log the status line periodically and on every membership change."""

    name = "status"
    _log = get_logger("socp_tw.status")

    def __init__(
        self,
        peers: IPeerLinks,
        presence: IPresence,
        interval: float = 30.0,
        clock: IReactorTime | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self._peers = IPeerLinks(peers)
        self._presence = IPresence(presence)
        self.interval = interval
        self._clock = clock
        self._loop: LoopingCall | None = None
        self._pending: IDelayedCall | None = None
        self._peers.add_change_observer(self.membership_changed)

    def line(self) -> str:
        """The status text (without the ``Status:`` prefix)."""
        servers = " ".join(self._peers.connected_servers()) or "(none)"
        local, total = user_counts(self._presence)
        counters = getattr(self._peers, "counters", {})
        rejected = sum(counters.get(name, 0) for name in REJECTED_COUNTERS)
        refused = sum(v for k, v in counters.items() if k.startswith(REFUSED_PREFIXES))
        links = len(self._peers.connected_servers())
        users = f"users local={local} total={total}"
        return (
            f"Known servers: {servers} | {users} | links={links}"
            f" | rejected: server frames={rejected}, server links={refused}"
        )

    def report(self) -> None:
        self._log.info("Status: {status}", status=self.line())

    def membership_changed(self) -> None:
        """A server came or went: report once, at the end of this reactor turn."""
        if self.running and (self._pending is None or not self._pending.active()):
            self._pending = self._clock.callLater(0, self._report_change)

    def _report_change(self) -> None:
        self._pending = None
        self.report()

    def startService(self) -> None:
        super().startService()
        self._loop = repeating(self._clock, self.interval, self.report)

    def stopService(self) -> None:
        super().stopService()
        stop_repeating(self._loop)
        self._loop = None
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
