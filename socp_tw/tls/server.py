"""The server side of ``wss://``: a listener's TLS options from PEM files, and its endpoint."""

from __future__ import annotations

import datetime
from typing import Any

from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator, IStreamServerEndpoint

from socp_tw.logs import get_logger
from socp_tw.tls.material import (
    _DER,
    _SPKI,
    MIN_TLS_VERSION,
    TLSConfigError,
    _describe,
    _load_certs,
    _load_key,
)
from socp_tw.tls.pins import _spki_digest, format_pin

__all__ = ["server_context_factory", "server_endpoint"]

_log = get_logger("socp_tw.tls")


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
