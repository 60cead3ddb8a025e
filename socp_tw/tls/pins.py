"""SPKI pins: SHA-256 over a certificate's DER SubjectPublicKeyInfo, as text and back.

Pins are ``"sha256/<base64>"`` (the HPKP / curl ``--pinnedpubkey`` form) or 64 hex
digits; a pin survives certificate renewal as long as the key is kept.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from cryptography import x509

from socp_tw.tls.material import _DER, _SPKI, TLSConfigError

__all__ = ["SPKIPinMismatch", "format_pin", "parse_pin", "spki_pin", "spki_sha256"]

_DIGEST_BYTES = 32
_HEX_PIN = re.compile(r"[0-9a-fA-F]{64}")


class SPKIPinMismatch(Exception):
    """The peer's leaf certificate key matches none of the pins configured for it.

    Reported as the ``reason`` of the aborted connection's ``connectionLost``.
    """


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
