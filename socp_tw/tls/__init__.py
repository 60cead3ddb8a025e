"""TLS for ``wss://`` listeners and peer links: server contexts, verified client contexts, SPKI pins.

Server side: :func:`server_context_factory` loads a PEM certificate (optionally with
its chain) and key, checks they belong together, and refuses anything older than
TLS 1.2; :func:`server_endpoint` listens with it.

Client side: :func:`client_context` verifies a peer the way browsers do (chain to a
trust root, hostname through ``service_identity``), optionally against one CA file
only, and optionally also requires the leaf certificate's public key to match one of
a set of SHA-256 SPKI pins. With ``pin_only=True`` the pin *replaces* CA and
hostname checks (the tahoe-lafs model: the pin is the peer's identity, so a
self-signed certificate is fine and expiry is not checked); with ``pin_only=False``
(the default) CA, hostname and pin must all pass. :func:`client_endpoint` dials
with it.

Pins are ``"sha256/<base64>"`` (the HPKP / curl ``--pinnedpubkey`` form) or 64 hex
digits, over the DER SubjectPublicKeyInfo of the leaf certificate; a pin survives
certificate renewal as long as the key is kept. :func:`spki_pin` computes one from a
certificate (and the server logs its own at start-up).

Everything here raises :class:`TLSConfigError` with a readable message for bad
files or options, so the command line can turn it into a usage error.

The package, one concern per module (every name is re-exported here):
:mod:`~socp_tw.tls.material` (reading PEM files, :class:`TLSConfigError`, the
TLS 1.2 floor), :mod:`~socp_tw.tls.pins`, :mod:`~socp_tw.tls.server`,
:mod:`~socp_tw.tls.client` and :mod:`~socp_tw.tls.peers` (:class:`PeerTLS`).
"""

from socp_tw.tls.client import client_context, client_endpoint
from socp_tw.tls.material import MIN_TLS_VERSION, TLSConfigError
from socp_tw.tls.peers import PeerTLS
from socp_tw.tls.pins import SPKIPinMismatch, format_pin, parse_pin, spki_pin, spki_sha256
from socp_tw.tls.server import server_context_factory, server_endpoint

__all__ = [
    "MIN_TLS_VERSION",
    "PeerTLS",
    "SPKIPinMismatch",
    "TLSConfigError",
    "client_context",
    "client_endpoint",
    "format_pin",
    "parse_pin",
    "server_context_factory",
    "server_endpoint",
    "spki_pin",
    "spki_sha256",
]
