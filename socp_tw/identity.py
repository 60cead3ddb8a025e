"""The server's persistent identity: its UUID and RSA-4096 key, kept in the data dir.

Created on first start, reused afterwards.  An explicit ``--server-id`` that
contradicts the stored id is refused, because peers have pinned our key to that id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from socp_tw import crypto, wire
from socp_tw.privatefile import write_private

IDENTITY_FILE = "server.json"
KEY_FILE = "server_key.pem"


class IdentityError(Exception):
    """The data dir holds an identity that cannot be used as asked."""


@dataclass(frozen=True)
class ServerIdentity:
    """Who this server is on the mesh."""

    server_id: str
    private_key: RSAPrivateKey
    public_key_text: str  # b64u(DER SPKI), what we send


def load_or_create_identity(data_dir: str | Path, requested_id: str | None = None) -> ServerIdentity:
    """Load the identity from ``data_dir``, creating it (and the dir) on first start.

    Runs at configuration time, before the reactor starts, so the one-off key
    generation (~0.5 s) blocks nobody.
    """
    root = Path(data_dir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    id_path = root / IDENTITY_FILE
    key_path = root / KEY_FILE
    if id_path.exists():
        try:
            stored = json.loads(id_path.read_text("utf-8"))["server_id"]
        except (ValueError, KeyError, TypeError) as e:
            raise IdentityError(f"{id_path} is unreadable: {e}") from e
        if not wire.is_uuid4(stored):
            raise IdentityError(f"{id_path} holds an invalid server id {stored!r}")
        if requested_id is not None and requested_id.lower() != stored.lower():
            raise IdentityError(
                f"--server-id {requested_id} contradicts the id {stored} stored in {id_path};"
                " peers have pinned our key to the stored id (use another --data-dir for a new server)"
            )
        server_id = stored
    else:
        server_id = (requested_id or wire.new_uuid4()).lower()
    if key_path.exists():
        try:
            key = crypto.load_private_key(key_path.read_bytes())
        except Exception as e:
            raise IdentityError(f"{key_path} does not hold a usable RSA-4096 key: {e}") from e
    else:
        if id_path.exists():
            raise IdentityError(f"{id_path} exists but its key {key_path} is missing")
        key = crypto.generate_private_key()
        write_private(
            key_path,
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
    if not id_path.exists():
        write_private(id_path, json.dumps({"server_id": server_id}).encode() + b"\n")
    return ServerIdentity(server_id, key, crypto.encode_public_key(key))
