"""How this server dials its peers over TLS: :class:`PeerTLS`, one verified context per address."""

from __future__ import annotations

from collections.abc import Iterable

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator

from socp_tw.tls.client import _trust_root, client_context
from socp_tw.tls.material import TLSConfigError
from socp_tw.tls.pins import parse_pin

__all__ = ["PeerTLS"]


class PeerTLS:
    """How this server dials its peers: which addresses speak TLS, and how each is verified.

    A peer is dialled over ``wss://`` when its ``--peer`` URL says so, when a pin is
    configured for its host, or, for peers learnt from gossip or the bootstrap file
    (whose addresses carry no scheme), when ``default`` is set (``makeService`` sets it
    when this server itself listens on ``wss://``: a mesh is all TLS or all plain).
    Verification: ``ca_file`` (else the platform's trust store) plus hostname, and the
    SPKI pins configured for the host, if any; with ``pin_only`` a pinned host is
    verified by its pin alone. Contexts are built once per address.
    """

    def __init__(
        self,
        default: bool = False,
        ca_file: str | None = None,
        pins: dict[str, Iterable[str]] | None = None,
        pin_only: bool = False,
        tls_addresses: Iterable[tuple[str, int]] = (),
        plain_addresses: Iterable[tuple[str, int]] = (),
    ) -> None:
        self.default = default
        self.ca_file = ca_file
        self.pins = {key.lower(): tuple(values) for key, values in (pins or {}).items()}
        self.pin_only = pin_only
        self.tls_addresses = frozenset(tls_addresses)
        self.plain_addresses = frozenset(plain_addresses)
        self._contexts: dict[tuple[str, int], IOpenSSLClientConnectionCreator] = {}

    def check(self) -> None:
        """Fail now (:class:`TLSConfigError`) rather than at the first dial: bad pins, unreadable CA."""
        for host, values in self.pins.items():
            for value in values:
                parse_pin(value)
            if not values:
                raise TLSConfigError(f"no SPKI pin given for {host}")
        if self.ca_file is not None:
            _trust_root(self.ca_file)
        if self.pin_only and not self.pins:
            raise TLSConfigError("--pin-only needs at least one --peer-pin")

    def pins_for(self, host: str, port: int) -> tuple[str, ...]:
        """The pins configured for ``host:port`` (exact address first, then the host alone)."""
        host = host.lower()
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return self.pins.get(address) or self.pins.get(host) or ()

    def uses_tls(self, host: str, port: int) -> bool:
        if (host, port) in self.tls_addresses or self.pins_for(host, port):
            return True
        if (host, port) in self.plain_addresses:
            return False
        return self.default

    def scheme(self, host: str, port: int) -> str:
        return "wss" if self.uses_tls(host, port) else "ws"

    def context(self, host: str, port: int) -> IOpenSSLClientConnectionCreator:
        """The (cached) client context verifying the peer at ``host:port``."""
        context = self._contexts.get((host, port))
        if context is None:
            pins = self.pins_for(host, port)
            context = client_context(host, self.ca_file, pins or None, pin_only=self.pin_only and bool(pins))
            self._contexts[(host, port)] = context
        return context
