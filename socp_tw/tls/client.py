"""The client side of ``wss://``: verifying a peer by CA and hostname, by SPKI pin, or both.

With ``pin_only=True`` the pin *replaces* CA and hostname checks (the tahoe-lafs
model: the pin is the peer's identity, so a self-signed certificate is fine and
expiry is not checked); with ``pin_only=False`` (the default) CA, hostname and pin
must all pass.
"""

from __future__ import annotations

import ipaddress
import weakref
from collections.abc import Iterable
from typing import Any

import idna
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet import ssl
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.python.failure import Failure
from zope.interface import implementer

from socp_tw.logs import get_logger
from socp_tw.tls.material import MIN_TLS_VERSION, TLSConfigError, _describe, _load_certs
from socp_tw.tls.pins import SPKIPinMismatch, _spki_digest, format_pin, parse_pin

__all__ = ["client_context", "client_endpoint"]

_log = get_logger("socp_tw.tls")


def _trust_root(ca_file: str | None) -> Any:
    if ca_file is None:
        return ssl.platformTrust()
    certs = _load_certs(ca_file, "CA")
    return ssl.trustRootFromCertificates([ssl.Certificate(crypto.X509.from_cryptography(c)) for c in certs])


def _is_ip(hostname: str) -> bool:
    try:
        ipaddress.ip_address(hostname)
    except ValueError:
        return False
    return True


def _ascii_hostname(hostname: str) -> str:
    if not isinstance(hostname, str) or not hostname:
        raise TLSConfigError("a TLS peer needs a hostname (or IP address) to verify")
    if _is_ip(hostname):
        return hostname
    try:
        return idna.encode(hostname, uts46=True).decode("ascii")
    except idna.IDNAError as e:
        raise TLSConfigError(f"{hostname!r} is not a valid host name: {e}") from None


def client_context(
    hostname: str,
    ca_file: str | None = None,
    spki_pins: Iterable[str] | None = None,
    pin_only: bool = False,
) -> IOpenSSLClientConnectionCreator:
    """How to verify the ``wss://`` peer ``hostname`` (a DNS name or IP literal).

    - no pins: chain to ``ca_file``'s certificates (else the platform's trust
      store) and hostname match through ``service_identity``;
    - ``spki_pins`` and ``pin_only=False``: all of the above, and the leaf's SPKI
      SHA-256 must equal one pin (defence in depth against a mis-issuing CA);
    - ``spki_pins`` and ``pin_only=True``: only the pin counts — CA file, chain,
      hostname and validity dates are ignored (self-signed peers; the pin is the
      identity, as in tahoe-lafs).

    Raises :class:`TLSConfigError` for unreadable files, bad pins, or ``pin_only``
    without pins. A peer that fails verification has its handshake aborted; a pin
    mismatch is logged with the SPKI it presented and surfaces as
    :class:`SPKIPinMismatch`.
    """
    ascii_name = _ascii_hostname(hostname)
    pins = frozenset(parse_pin(p) for p in spki_pins or ())
    if pin_only and not pins:
        raise TLSConfigError(f"pin-only TLS for {hostname!r} needs at least one SPKI pin")
    if pin_only:
        no_ca = ssl.CertificateOptions(raiseMinimumTo=MIN_TLS_VERSION)
        return _PinningClientCreator(ascii_name, no_ca, pins, pin_only=True)
    trust = _trust_root(ca_file)
    if not pins:
        return ssl.optionsForClientTLS(
            ascii_name, trustRoot=trust, extraCertificateOptions={"raiseMinimumTo": MIN_TLS_VERSION}
        )
    options = ssl.CertificateOptions(trustRoot=trust, raiseMinimumTo=MIN_TLS_VERSION)
    return _PinningClientCreator(ascii_name, options, pins, pin_only=False)


@implementer(IOpenSSLClientConnectionCreator)
class _PinningClientCreator:
    """Client connections that require the leaf's SPKI to match a pin (and, unless pin-only, CA + name).

    The check runs in the per-connection OpenSSL verify callback, so a mismatch fails
    the handshake itself (the peer gets an alert, our protocol never sees data);
    the reason goes to ``connectionLost`` through ``failVerification`` as Twisted's
    own hostname check does.
    """

    def __init__(
        self, hostname: str, options: ssl.CertificateOptions, pins: frozenset[bytes], pin_only: bool
    ) -> None:
        self._hostname = hostname
        self._is_ip = _is_ip(hostname)
        self._options = options
        self._pins = pins
        self._pin_only = pin_only
        options.getContext()  # fail now, not on the first dial, if the options are unusable

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._options.getContext(), None)
        if not self._is_ip:
            connection.set_tlsext_host_name(self._hostname.encode("ascii"))
        protocol_ref = weakref.ref(tlsProtocol)  # no cycle connection -> callback -> protocol -> connection

        def verify(conn: SSL.Connection, cert: Any, errno: int, depth: int, ok: int) -> bool:
            try:
                return self._verify(protocol_ref, cert, depth, bool(ok))
            except Exception:
                # An exception escaping an OpenSSL callback is lost; log it and refuse.
                _log.failure("TLS peer {host}: error while verifying its certificate", host=self._hostname)
                return False

        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, verify)
        return connection

    def _verify(self, protocol_ref: weakref.ref, cert: Any, depth: int, ok: bool) -> bool:
        if self._pin_only:
            if depth > 0:
                return True  # the chain is irrelevant: only the leaf's key identifies the peer
        elif not ok:
            return False  # OpenSSL's own chain verdict (unknown CA, expired, ...)
        elif depth > 0:
            return True
        leaf = cert.to_cryptography()
        if not self._pin_only:
            try:
                if self._is_ip:
                    verify_certificate_ip_address(leaf, self._hostname)
                else:
                    verify_certificate_hostname(leaf, self._hostname)
            except (VerificationError, CertificateError):
                self._fail(protocol_ref, Failure())
                return False
        digest = _spki_digest(leaf)
        if digest in self._pins:
            return True
        _log.warn(
            "TLS peer {host} presented key {pin} ({subject}), which matches none of its {count} pins",
            host=self._hostname,
            pin=format_pin(digest),
            subject=_describe(leaf),
            count=len(self._pins),
        )
        mismatch = SPKIPinMismatch(f"{self._hostname}: certificate key {format_pin(digest)} matches no pin")
        self._fail(protocol_ref, Failure(mismatch))
        return False

    @staticmethod
    def _fail(protocol_ref: weakref.ref, reason: Failure) -> None:
        protocol = protocol_ref()
        if protocol is not None:
            protocol.failVerification(reason)


def client_endpoint(
    reactor: Any, host: str, port: int, context: IOpenSSLClientConnectionCreator, timeout: float = 30
) -> IStreamClientEndpoint:
    """Dial ``host:port`` (name or address; every resolved address is tried) and speak TLS with ``context``.

    ``host`` is where to connect; the name verified is the one ``context`` was made
    for, so a peer can be dialled by address and verified by name.
    """
    return wrapClientTLS(context, HostnameEndpoint(reactor, host, port, timeout=timeout))
