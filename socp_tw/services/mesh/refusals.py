"""Refusing a connection that tried to identify as a server, cheaply when it keeps coming.

One peer reconnected with no delay after every refusal: 7,361 refused links in 47 s, each
logged and answered with a freshly signed ERROR (issue 15).  Now, per remote address:

- the first :data:`SIGNED_REFUSALS` (``Mesh(signed_refusals=...)``) refusals in
  :data:`REFUSAL_WINDOW` seconds get a signed ``ERROR`` and a close once it is written (the
  peer learns why);
- later ones cost no signature: nothing is sent, and the connection is held for
  :data:`REFUSAL_HOLD` seconds before it is closed, so a peer that redials on close is slowed
  to one attempt per hold per connection; frames it sends meanwhile are dropped;
- the log says it once a minute per address, with the count.

Only refusals are slowed: a valid HELLO from the same address (other servers on one host) is
accepted as always.
"""

from __future__ import annotations

from socp_tw import wire
from socp_tw.interfaces import ILink
from socp_tw.services.mesh.state import CLOSE_POLICY

SIGNED_REFUSALS = 10
REFUSAL_WINDOW = 60.0
REFUSAL_HOLD = 5.0


def peer_host(peer: str) -> str:
    """The address part of a printable ``host:port`` (IPv6 kept whole)."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer


class Refusals:
    """Mesh part: refusals of pending server links, backed off per address."""

    def _refuse(self, link: ILink, code: str, detail: str) -> None:
        """Refuse a pending link that tried to identify as a server (see the module docstring)."""
        self.counters["refused." + code] += 1
        host = peer_host(str(link.peer))
        backed_off = self._refused_hosts.count(host) >= self._refused_hosts.limit
        self._refused_hosts.strike(host)
        count = self._refusals.hit(("link-refused", host))
        if count is not None:
            self._log.warn(
                "Refused server link {link} from {peer} ({code}): {detail}{more}",
                link=link.link_id,
                peer=link.peer,
                code=code,
                detail=detail,
                more=f" ({count} refused links from {host} in the last minute)" if count > 1 else "",
            )
        if backed_off:
            self.counters["refused.backed_off"] += 1
            self._refused_links.add(link.link_id)  # held open: whatever else it sends is dropped
            self._clock.callLater(REFUSAL_HOLD, self._close_refused, link, detail)
            return
        # The ERROR is signed on the pool: close only once it has been written, or it is lost.
        frame = self._signer.frame("ERROR", "*", wire.error_payload(code, detail))
        link.send(frame)
        frame.addBoth(lambda _: self._close_refused(link, detail))

    def _close_refused(self, link: ILink, detail: str) -> None:
        link.close(CLOSE_POLICY, detail[:120])
