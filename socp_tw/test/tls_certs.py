"""A throw-away PKI made at test time, for TLS tests (no key is ever committed).

:func:`shared_pki` builds, once per process: a test root CA, an intermediate under
it, an unrelated second CA, and server certificates for ``localhost`` /
``127.0.0.1`` — one signed by the root (RSA-2048), one by the intermediate, one by
the unrelated CA. :func:`write_pem` puts any of them in files for
``--tls-cert``/``--tls-key``/CA options.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_LOCAL_NAMES: tuple[x509.GeneralName, ...] = (
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
)


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: Any

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


@dataclass(frozen=True)
class PKI:
    root: Issued  # "socp test root CA"
    intermediate: Issued  # CA under root
    other_root: Issued  # an unrelated CA
    server: Issued  # localhost + 127.0.0.1, signed by root, RSA-2048
    chained_server: Issued  # localhost + 127.0.0.1, signed by intermediate
    rogue_server: Issued  # localhost + 127.0.0.1, signed by other_root


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _issue(
    subject: str,
    key: Any,
    issuer: Issued | None,
    is_ca: bool,
    sans: tuple[x509.GeneralName, ...] = (),
) -> Issued:
    now = datetime.datetime.now(datetime.UTC)
    public = key.public_key()
    signer_key = issuer.key if issuer else key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.cert.subject if issuer else _name(subject))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False
        )
    )
    if is_ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return Issued(builder.sign(signer_key, hashes.SHA256()), key)


def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


_cache: list[PKI] = []


def shared_pki() -> PKI:
    """The test PKI, generated on first use and cached for the process (~0.1 s)."""
    if not _cache:
        root = _issue("socp test root CA", _ec_key(), None, True)
        intermediate = _issue("socp test intermediate CA", _ec_key(), root, True)
        other_root = _issue("socp unrelated CA", _ec_key(), None, True)
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _cache.append(
            PKI(
                root=root,
                intermediate=intermediate,
                other_root=other_root,
                server=_issue("localhost", rsa_key, root, False, _LOCAL_NAMES),
                chained_server=_issue("localhost", _ec_key(), intermediate, False, _LOCAL_NAMES),
                rogue_server=_issue("localhost", _ec_key(), other_root, False, _LOCAL_NAMES),
            )
        )
    return _cache[0]


def write_pem(path: str | Path, *parts: bytes) -> str:
    """Write the concatenated PEM ``parts`` to ``path`` (mode 0600); return the path as text."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"".join(parts))
    target.chmod(0o600)
    return str(target)
