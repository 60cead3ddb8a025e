"""Reading TLS material (PEM certificates, keys, CA files), its error, and the protocol floor.

Every problem with a file or option raises :class:`TLSConfigError` with a readable
message, so the command line can turn it into a usage error.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from twisted.internet import ssl

__all__ = ["MIN_TLS_VERSION", "TLSConfigError"]

#: Oldest protocol version either side negotiates.
MIN_TLS_VERSION = ssl.TLSVersion.TLSv1_2

_MAX_PEM_BYTES = 1024 * 1024  # a certificate chain or key file is a few kB; don't slurp /dev/zero
_SPKI = serialization.PublicFormat.SubjectPublicKeyInfo
_DER = serialization.Encoding.DER
_TLS_KEY_TYPES = (
    rsa.RSAPrivateKey,
    ec.EllipticCurvePrivateKey,
    ed25519.Ed25519PrivateKey,
    ed448.Ed448PrivateKey,
)


class TLSConfigError(ValueError):
    """A TLS certificate, key, CA file, pin or option is missing, unreadable or inconsistent."""


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
