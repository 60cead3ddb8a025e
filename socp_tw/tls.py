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
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import ipaddress
import re
import weakref
from collections.abc import Iterable
from typing import Any

import idna
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from OpenSSL import SSL, crypto
from service_identity import CertificateError, VerificationError
from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address
from twisted.internet import ssl
from twisted.internet.endpoints import HostnameEndpoint, SSL4ServerEndpoint, wrapClientTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.python.failure import Failure
from zope.interface import implementer

from socp_tw.logs import get_logger

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

#: Oldest protocol version either side negotiates.
MIN_TLS_VERSION = ssl.TLSVersion.TLSv1_2

_MAX_PEM_BYTES = 1024 * 1024  # a certificate chain or key file is a few kB; don't slurp /dev/zero
_DIGEST_BYTES = 32
_HEX_PIN = re.compile(r"[0-9a-fA-F]{64}")
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
_DER = serialization.Encoding.DER
_TLS_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)

_log = get_logger("socp_tw.tls")


class TLSConfigError(ValueError):
    """A TLS certificate, key, CA file, pin or option is missing, unreadable or inconsistent."""


class SPKIPinMismatch(Exception):
    """The peer's leaf certificate key matches none of the pins configured for it.

    Reported as the ``reason`` of the aborted connection's ``connectionLost``.
    """


# -- pins ---------------------------------------------------------------------------------------------


def _spki_digest(cert: x509.Certificate) -> bytes:
    """SHA-256 over the DER SubjectPublicKeyInfo of ``cert``."""
    return hashlib.sha256(cert.public_key().public_bytes(_DER, _SPKI)).digest()


def _load_one_cert(data: bytes) -> x509.Certificate:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise TLSConfigError(f"not a PEM or DER X.509 certificate: {e}") from None


def spki_sha256(cert_pem_or_der: bytes) -> str:
    """Hex SHA-256 of the certificate's DER SubjectPublicKeyInfo (the first certificate of a PEM)."""
    return _spki_digest(_load_one_cert(cert_pem_or_der)).hex()


def format_pin(digest: bytes) -> str:
    """The ``"sha256/<base64>"`` text of a 32-byte SPKI digest (what logs and docs show)."""
    return "sha256/" + base64.b64encode(digest).decode("ascii")


def spki_pin(cert_pem_or_der: bytes) -> str:
    """The ``"sha256/<base64>"`` pin of a certificate, ready to give to a peer's operator."""
    return format_pin(_spki_digest(_load_one_cert(cert_pem_or_der)))


def parse_pin(text: str) -> bytes:
    """Decode a pin to its 32-byte SHA-256 digest.

    Accepts ``sha256/<base64>`` (also curl's ``sha256//<base64>``; standard or URL-safe
    alphabet, padding optional) and 64 hex digits (colons allowed, any case).
    """
    if not isinstance(text, str):
        raise TLSConfigError(f"an SPKI pin must be text, not {type(text).__name__}")
    pin = text.strip()
    if pin.lower().startswith("sha256/"):
        b64 = pin[len("sha256/") :]
        if b64.startswith("/") and len(b64.rstrip("=")) == 44:
            # curl's "sha256//<base64>"; a digest's own base64 may also start with "/",
            # so only a length of 43 characters after the extra slash says which it is.
            b64 = b64[1:]
        b64 = b64.translate(str.maketrans("-_", "+/"))
        b64 += "=" * (-len(b64) % 4)
        try:
            digest = base64.b64decode(b64, validate=True)
        except (binascii.Error, ValueError):
            raise TLSConfigError(f"SPKI pin {text!r}: the part after sha256/ is not base64") from None
    elif _HEX_PIN.fullmatch(hex_text := pin.replace(":", "")):
        digest = bytes.fromhex(hex_text)
    else:
        raise TLSConfigError(f"SPKI pin {text!r} is neither sha256/<base64> nor 64 hex digits")
    if len(digest) != _DIGEST_BYTES:
        raise TLSConfigError(f"SPKI pin {text!r} is {len(digest)} bytes; a SHA-256 pin is {_DIGEST_BYTES}")
    return digest


# -- files --------------------------------------------------------------------------------------------


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_PEM_BYTES + 1)
    except OSError as e:
        raise TLSConfigError(f"cannot read TLS {what} file {path!r}: {e.strerror or e}") from None
    if len(data) > _MAX_PEM_BYTES:
        raise TLSConfigError(f"TLS {what} file {path!r} is over {_MAX_PEM_BYTES} bytes")
    return data


def _load_certs(path: str, what: str) -> list[x509.Certificate]:
    data = _read(path, what)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise TLSConfigError(f"TLS {what} file {path!r} holds no PEM certificate")
    return certs


def _load_key(path: str) -> Any:
    data = _read(path, "key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise TLSConfigError(
            f"TLS key file {path!r} is encrypted; give an unencrypted key (protect it with file permissions)"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise TLSConfigError(f"TLS key file {path!r} holds no usable PEM private key: {e}") from None
    if not isinstance(key, _TLS_KEY_TYPES):
        raise TLSConfigError(f"TLS key file {path!r}: {type(key).__name__} keys are not supported")
    return key


def _describe(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


# -- server -------------------------------------------------------------------------------------------


def server_context_factory(
    cert_path: str, key_path: str, chain_path: str | None = None
) -> IOpenSSLServerConnectionCreator:
    """TLS options for a ``wss://`` listener from PEM files.

    ``cert_path`` holds the server certificate first, optionally followed by its
    intermediates (a "fullchain" file); ``chain_path`` may hold (more)
    intermediates. The key must be unencrypted PEM and match the certificate.
    Logs the certificate's subject, expiry and SPKI pin (public data) so the operator
    can hand the pin to peers. Raises :class:`TLSConfigError`.
    """
    certs = _load_certs(cert_path, "certificate")
    key = _load_key(key_path)
    leaf, chain = certs[0], certs[1:]
    if chain_path is not None:
        chain += _load_certs(chain_path, "chain")
    if key.public_key().public_bytes(_DER, _SPKI) != leaf.public_key().public_bytes(_DER, _SPKI):
        raise TLSConfigError(f"TLS key {key_path!r} does not belong to the certificate in {cert_path!r}")
    options = ssl.CertificateOptions(
        privateKey=key, certificate=leaf, extraCertChain=chain, raiseMinimumTo=MIN_TLS_VERSION
    )
    try:
        options.getContext()  # builds (and caches) the context now, so bad material fails at start-up
    except SSL.Error as e:
        raise TLSConfigError(f"OpenSSL refused certificate {cert_path!r} / key {key_path!r}: {e}") from None
    now = datetime.datetime.now(datetime.UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        _log.warn(
            "TLS certificate {subject} is not valid now (valid {start} to {end})",
            subject=_describe(leaf),
            start=leaf.not_valid_before_utc.isoformat(),
            end=leaf.not_valid_after_utc.isoformat(),
        )
    _log.info(
        "TLS certificate {subject} loaded ({chain} chain certificates), expires {end}, pin {pin}",
        subject=_describe(leaf),
        chain=len(chain),
        end=leaf.not_valid_after_utc.isoformat(),
        pin=format_pin(_spki_digest(leaf)),
    )
    return options


def server_endpoint(
    reactor: Any, host: str, port: int, context_factory: IOpenSSLServerConnectionCreator
) -> IStreamServerEndpoint:
    """A TLS listening endpoint on ``host`` (the interface address) and ``port``."""
    return SSL4ServerEndpoint(reactor, port, context_factory, interface=host)


# -- client -------------------------------------------------------------------------------------------


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


# -- peer links -----------------------------------------------------------------------------------------


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
