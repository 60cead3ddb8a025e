"""The ``--bootstrap FILE`` list: introducers whose keys are pinned before first contact.

The file is YAML (JSON is valid YAML) holding a list of entries::

    - host: 127.0.0.1
      port: 8765
      pubkey: MIICIjANBgkqhkiG9w0BAQEFAAOCAg8AMIICCgKCAgEA...   # b64u(DER SPKI), or PEM
      server_id: 3f2504e0-4f89-41d3-9a0c-0305e82c3301          # optional

or a mapping with that list under ``servers`` (or ``bootstrap``).  Each entry is an
introducer the server joins through (like ``--peer ws://host:port``); its key must
be the one that signs the introducer's SERVER_WELCOME.  With ``server_id`` the key
is pinned to that id as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from socp_tw import crypto, wire

MAX_BOOTSTRAP_BYTES = 1024 * 1024
MAX_ENTRIES = 1000


class BootstrapError(ValueError):
    """The bootstrap file is unreadable or one of its entries is wrong (the message says which)."""


@dataclass(frozen=True)
class BootstrapEntry:
    """One introducer: where it listens and the key it must sign with."""

    host: str
    port: int
    pubkey: str  # as written in the file (the PEM/DER form is remembered for §8 mirroring)
    key: RSAPublicKey
    server_id: str | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"


def parse_entry(index: int, raw: Any) -> BootstrapEntry:
    """Validate one entry (``index`` is only used in error messages)."""
    where = f"bootstrap entry {index}"
    if not isinstance(raw, dict):
        raise BootstrapError(f"{where} must be a mapping with host, port and pubkey")
    host = raw.get("host")
    if not isinstance(host, str) or not host.strip() or len(host) > 255:
        raise BootstrapError(f"{where}: 'host' must be a non-empty host name or address")
    port = raw.get("port")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BootstrapError(f"{where}: 'port' must be an integer between 1 and 65535")
    pubkey = raw.get("pubkey")
    if not isinstance(pubkey, str):
        raise BootstrapError(f"{where}: 'pubkey' must be the server's public key (b64u DER or PEM)")
    try:
        key = crypto.load_public_key(pubkey)
    except crypto.BadKey as e:
        raise BootstrapError(f"{where}: 'pubkey' is unusable: {e.detail}") from None
    server_id = raw.get("server_id")
    if server_id is not None and not wire.is_uuid(server_id):
        raise BootstrapError(f"{where}: 'server_id' must be a UUID")
    return BootstrapEntry(
        host.strip().strip("[]"), port, pubkey.strip(), key, server_id and server_id.lower()
    )


def parse_bootstrap(text: str) -> list[BootstrapEntry]:
    """Parse the text of a bootstrap file; raise :class:`BootstrapError` with a precise message."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise BootstrapError(f"bootstrap file is not valid YAML/JSON: {e}") from None
    if isinstance(data, dict):
        for name in ("servers", "bootstrap"):
            if name in data:
                data = data[name]
                break
    if not isinstance(data, list):
        raise BootstrapError("bootstrap file must hold a list of {host, port, pubkey} entries")
    if len(data) > MAX_ENTRIES:
        raise BootstrapError(f"bootstrap file has more than {MAX_ENTRIES} entries")
    entries = [parse_entry(i, raw) for i, raw in enumerate(data)]
    seen: dict[tuple[str, int], BootstrapEntry] = {}
    for i, entry in enumerate(entries):
        other = seen.setdefault((entry.host, entry.port), entry)
        if other is not entry and crypto.fingerprint(other.key) != crypto.fingerprint(entry.key):
            raise BootstrapError(f"bootstrap entry {i}: {entry.host}:{entry.port} is listed with two keys")
    return entries


def load_bootstrap(path: str | Path) -> list[BootstrapEntry]:
    """Read and parse a bootstrap file (at most 1 MiB)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BOOTSTRAP_BYTES + 1)
    except OSError as e:
        raise BootstrapError(f"cannot read bootstrap file {path}: {e.strerror or e}") from None
    if len(raw) > MAX_BOOTSTRAP_BYTES:
        raise BootstrapError(f"bootstrap file {path} is larger than {MAX_BOOTSTRAP_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BootstrapError(f"bootstrap file {path} is not UTF-8") from None
    return parse_bootstrap(text)
