"""The server key book: pinned keys and addresses (``peers.json``), and the checks against them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from twisted.internet.defer import maybeDeferred

from socp_tw import crypto, wire
from socp_tw.bootstrap import BootstrapEntry
from socp_tw.privatefile import write_private
from socp_tw.services.mesh.state import MAX_KNOWN_SERVERS, KeyRefused, _host_port

PEERS_FILE = "peers.json"


class PinStoreError(Exception):
    """``peers.json`` exists but cannot be read: refuse to start rather than forget pinned keys."""


@dataclass
class KnownServer:
    """What we know of another server: its pinned key and where it listens."""

    server_id: str
    pubkey: str  # normalised: b64u(DER SPKI)
    key: RSAPublicKey
    pem: bool = False  # the server sent its own key as b64u(PEM): mirror that (§8)
    host: str | None = None
    port: int | None = None
    linked: bool = False  # we have had a direct link with it (only those are redialled after a restart)
    acks: bool = False  # it said it confirms deliveries (``ext`` has "deliver-ack")
    link_sets: bool = False  # it sends and reads SERVER_LINKS (``ext`` has "link-set")
    #: Its own signed {host, port, pubkey} (payload, sig), re-sent to new neighbours as a SERVER_ANNOUNCE.
    described: tuple[dict[str, Any], str] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "pubkey": self.pubkey,
            "pem": self.pem,
            "host": self.host,
            "port": self.port,
            "linked": self.linked,
            "acks": self.acks,
            "link_sets": self.link_sets,
        }


class PinStore:
    """``peers.json`` in the data dir: pinned keys and addresses, written atomically, mode 0600."""

    def __init__(self, path: str | Path | None) -> None:
        self.path = Path(path) if path is not None else None

    def load(self) -> dict[str, KnownServer]:
        """Read the file (a missing file is an empty book); raise :class:`PinStoreError` if corrupt."""
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text("utf-8"))
            servers = data["servers"]
            if not isinstance(servers, dict):
                raise TypeError("'servers' is not an object")
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PinStoreError(f"{self.path} is unreadable ({e}); fix or remove it") from None
        known: dict[str, KnownServer] = {}
        for server_id, item in servers.items():
            try:
                if not wire.is_uuid(server_id):
                    raise ValueError("bad server id")
                key = crypto.load_public_key(item["pubkey"])
                host, port = item.get("host"), item.get("port")
                if host is not None and not (isinstance(host, str) and isinstance(port, int)):
                    raise ValueError("bad address")
            except (KeyError, TypeError, ValueError) as e:  # BadKey is a ValueError
                raise PinStoreError(f"{self.path}: entry {server_id!r} is invalid ({e})") from None
            known[server_id] = KnownServer(
                server_id,
                crypto.encode_public_key(key),
                key,
                bool(item.get("pem", False)),
                host,
                port,
                bool(item.get("linked", False)),
                bool(item.get("acks", False)),
                bool(item.get("link_sets", False)),
            )
        return known

    def save(self, snapshot: dict[str, dict[str, Any]]) -> None:
        """Write ``snapshot`` (server_id -> KnownServer.to_json()) atomically."""
        if self.path is None:
            return
        data = json.dumps({"version": 1, "servers": snapshot}, indent=1, sort_keys=True).encode("utf-8")
        write_private(self.path, data)


class PinBook:
    """Mesh part: the bootstrap pins, key checks, first-contact pinning and saving ``peers.json``."""

    def _add_bootstrap(self, entry: BootstrapEntry) -> None:
        norm = crypto.encode_public_key(entry.key)
        self._boot_keys[(entry.host, entry.port)] = norm
        pem = crypto.is_pem_b64u(entry.pubkey)
        if not any((h, p) == (entry.host, entry.port) for h, p, _ in self._introducer_targets):
            self._introducer_targets.append((entry.host, entry.port, pem))
        if entry.server_id is None:
            return
        known = self._known.get(entry.server_id)
        if known is not None and known.pubkey != norm:
            self._log.warn(
                "Bootstrap file pins server {server_id} to key {new}, replacing the key {old} pinned before",
                server_id=entry.server_id,
                new=crypto.fingerprint(entry.key),
                old=crypto.fingerprint(known.key),
            )
            known = None
        if known is None:
            self._known[entry.server_id] = KnownServer(
                entry.server_id, norm, entry.key, pem, entry.host, entry.port
            )

    def _check_key(
        self, server_id: str, key_text: str, source: str, address: tuple[str, int] | None = None
    ) -> tuple[RSAPublicKey, str]:
        """Load a server key and check it against the pins; raise :class:`KeyRefused`."""
        try:
            key = crypto.load_public_key(key_text)
        except crypto.BadKey as e:
            raise KeyRefused("BAD_KEY", f"key of server {server_id} is unusable: {e.detail}") from None
        norm = crypto.encode_public_key(key)
        if norm == self._own_pubkey:
            raise KeyRefused("BAD_KEY", f"{source} offers this server's own key")
        known = self._known.get(server_id)
        if known is not None and known.pubkey != norm:
            self._key_changed(server_id, known.key, key, source)
            raise KeyRefused("BAD_KEY", f"key of server {server_id} differs from the key pinned for it")
        if address is not None:
            expected = self._boot_keys.get(address)
            if expected is not None and expected != norm:
                self._key_changed(
                    server_id, crypto.load_public_key(expected), key, source + " (bootstrap address)"
                )
                raise KeyRefused(
                    "BAD_KEY", f"{_host_port(*address)} is pinned to another key by the bootstrap file"
                )
        return key, norm

    def _key_changed(self, server_id: str, pinned: RSAPublicKey, offered: RSAPublicKey, source: str) -> None:
        self.counters["key_refused"] += 1
        self._log.error(
            "REFUSED changed key for server {server_id} ({source}): pinned {pinned}, offered {offered}",
            server_id=server_id,
            source=source,
            pinned=crypto.fingerprint(pinned),
            offered=crypto.fingerprint(offered),
        )

    def _remember(
        self,
        server_id: str,
        key: RSAPublicKey,
        key_text: str,
        address: tuple[str, int] | None,
        source: str,
        linked: bool = False,
    ) -> KnownServer:
        """Pin ``key`` to ``server_id`` (first contact) and record its address."""
        known = self._known.get(server_id)
        changed = False
        pem = crypto.is_pem_b64u(key_text)
        if known is None:
            if len(self._known) >= MAX_KNOWN_SERVERS:
                raise KeyRefused("BAD_FRAME", f"this server already knows {MAX_KNOWN_SERVERS} servers")
            known = KnownServer(server_id, crypto.encode_public_key(key), key, pem)
            self._known[server_id] = known
            changed = True
            self._log.info(
                "Pinned key {fingerprint} for server {server_id} on first contact ({source})",
                fingerprint=crypto.fingerprint(key),
                server_id=server_id,
                source=source,
            )
        elif known.pem != pem and linked:
            known.pem, changed = pem, True
        if address is not None and (known.host, known.port) != address:
            if known.host is not None:
                self._log.info(
                    "Server {server_id} now listens on {address}",
                    server_id=server_id,
                    address=_host_port(*address),
                )
            known.host, known.port = address
            changed = True
            dialer = self._dialers.get(server_id)
            if dialer is not None:
                dialer.retarget(*address)
        if linked and not known.linked:
            known.linked, changed = True, True
        if changed:
            self._save_pins()
        return known

    # -- persistence ----------------------------------------------------------------------------------

    def _save_pins(self) -> None:
        """Write peers.json (off the reactor thread when we have workers); writes never overlap."""
        if self._pins.path is None:
            return
        if self._saving is not None:
            self._save_again = True
            return
        snapshot = {server_id: known.to_json() for server_id, known in self._known.items()}
        run = self._workers.run if self._workers is not None else maybeDeferred
        saving = self._saving = run(self._pins.save, snapshot)
        saving.addErrback(self._save_failed)
        saving.addBoth(self._saved)

    def _save_failed(self, failure) -> None:
        self._log.failure("Could not write {path}", failure, path=str(self._pins.path))

    def _saved(self, _) -> None:
        self._saving = None
        if self._save_again:
            self._save_again = False
            self._save_pins()
