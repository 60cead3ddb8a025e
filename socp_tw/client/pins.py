"""Trust on first use: the public keys of users and servers, pinned in a local JSON file.

The first key seen for a user id (or a server URL) is written down; every later key
is compared with it, as a key (DER), not as text, so PEM/DER or padding differences
don't matter.  A different key is never accepted silently: the session refuses to
show messages signed by it and to encrypt to it until the user runs ``/trust``.

The file is rewritten atomically (temporary file, fsync, rename) with mode 0600 in
a directory created with mode 0700.  A file that exists but does not parse is an
error, never silently replaced: that would erase every pin.

Format (version 1)::

    {"version": 1,
     "users":   {"<user uuid>": {"pubkey": "<b64u DER>", "fingerprint": "ab12:cd34:ef56:7890",
                                 "pinned_at": <unix ms>}},
     "servers": {"ws://host:port": {"server_id": "<uuid>", "pubkey": "...", "fingerprint": "...",
                                    "pinned_at": <unix ms>}},
     "names":   {"<user uuid>": "<your name for them (/name)>"}}

``names`` is optional (written only when you named somebody).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from socp_tw import crypto, wire
from socp_tw.privatefile import write_private
from socp_tw.usernames import clean_name

PINS_VERSION = 1
_MAX_FILE_BYTES = 16 * 1024 * 1024

NEW = "new"
SAME = "same"
CHANGED = "changed"


class PinFileError(Exception):
    """The pins file exists but cannot be read or does not parse."""


@dataclass(frozen=True)
class PinCheck:
    """How a presented key compares with the pin: ``status`` is "new", "same" or "changed"."""

    status: str
    fingerprint: str
    pinned_fingerprint: str | None = None


def canonical_key(pubkey_text: str) -> str:
    """A key's one true text, b64u(DER SPKI); raises :class:`crypto.BadKey` for a bad key."""
    return crypto.encode_public_key(crypto.load_public_key(pubkey_text))


class PinStore:
    """Pinned keys of users (by id) and servers (by URL), persisted in ``path``."""

    def __init__(self, path: str | os.PathLike[str], clock_ms=wire.now_ms) -> None:
        self.path = Path(path)
        self._clock_ms = clock_ms
        self._users: dict[str, dict[str, Any]] = {}
        self._servers: dict[str, dict[str, Any]] = {}
        self._names: dict[str, str] = {}  # user id -> your own name for them (/name)
        self._load()

    # ------------------------------------------------------------------ users

    def user_key(self, user_id: str) -> str | None:
        """The pinned key of ``user_id`` (b64u DER), or None."""
        entry = self._users.get(user_id)
        return entry["pubkey"] if entry else None

    def user_fingerprint(self, user_id: str) -> str | None:
        entry = self._users.get(user_id)
        return entry["fingerprint"] if entry else None

    def check_user(self, user_id: str, pubkey_text: str) -> PinCheck:
        """Compare ``pubkey_text`` with the pin of ``user_id`` (raises ``BadKey`` if unreadable)."""
        return self._check(self._users.get(user_id), pubkey_text)

    def pin_user(self, user_id: str, pubkey_text: str) -> str:
        """Pin (or re-pin) ``user_id`` to ``pubkey_text``; return its fingerprint."""
        key = canonical_key(pubkey_text)
        fp = crypto.fingerprint(key)
        self._users[user_id] = {"pubkey": key, "fingerprint": fp, "pinned_at": self._clock_ms()}
        self._save()
        return fp

    def user_ids(self) -> list[str]:
        """The ids of every pinned user."""
        return list(self._users)

    # --------------------------------------------------------------- petnames

    def petname(self, user_id: str) -> str | None:
        """Your own name for ``user_id`` (``/name``), or None."""
        return self._names.get(user_id)

    def petnames(self) -> dict[str, str]:
        return dict(self._names)

    def set_petname(self, user_id: str, name: str | None) -> None:
        """Set (or with None forget) your name for ``user_id``, persisted at once."""
        if name is None:
            if self._names.pop(user_id, None) is None:
                return
        else:
            self._names[user_id] = name
        self._save()

    # ---------------------------------------------------------------- servers

    def server(self, url: str) -> tuple[str, str] | None:
        """(server_id, pubkey) pinned for ``url``, or None."""
        entry = self._servers.get(url)
        return (entry["server_id"], entry["pubkey"]) if entry else None

    def check_server(self, url: str, pubkey_text: str) -> PinCheck:
        return self._check(self._servers.get(url), pubkey_text)

    def pin_server(self, url: str, server_id: str, pubkey_text: str) -> str:
        """Pin the server at ``url`` (its id and key); return the key's fingerprint."""
        key = canonical_key(pubkey_text)
        fp = crypto.fingerprint(key)
        self._servers[url] = {
            "server_id": server_id,
            "pubkey": key,
            "fingerprint": fp,
            "pinned_at": self._clock_ms(),
        }
        self._save()
        return fp

    # ---------------------------------------------------------------- helpers

    @staticmethod
    def _check(entry: dict[str, Any] | None, pubkey_text: str) -> PinCheck:
        key = canonical_key(pubkey_text)
        fp = crypto.fingerprint(key)
        if entry is None:
            return PinCheck(NEW, fp)
        if entry["pubkey"] == key:
            return PinCheck(SAME, fp, entry["fingerprint"])
        return PinCheck(CHANGED, fp, entry["fingerprint"])

    def _load(self) -> None:
        try:
            with open(self.path, "rb") as handle:
                raw = handle.read(_MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            return
        except OSError as e:
            raise PinFileError(f"cannot read the pins file {str(self.path)!r}: {e.strerror}") from None
        if len(raw) > _MAX_FILE_BYTES:
            raise PinFileError(f"the pins file {str(self.path)!r} is larger than {_MAX_FILE_BYTES} bytes")
        try:
            data = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise PinFileError(f"the pins file {str(self.path)!r} is not valid JSON: {e}") from None
        if not isinstance(data, dict) or data.get("version") != PINS_VERSION:
            raise PinFileError(f"the pins file {str(self.path)!r} is not a version {PINS_VERSION} pins file")
        users = data.get("users", {})
        servers = data.get("servers", {})
        if not isinstance(users, dict) or not isinstance(servers, dict):
            raise PinFileError(f"the pins file {str(self.path)!r}: 'users' and 'servers' must be objects")
        for user_id, entry in users.items():
            self._users[user_id] = self._read_entry(user_id, entry, need_server_id=False)
        for url, entry in servers.items():
            self._servers[url] = self._read_entry(url, entry, need_server_id=True)
        names = data.get("names", {})
        if not isinstance(names, dict):
            raise PinFileError(f"the pins file {str(self.path)!r}: 'names' must be an object")
        for user_id, name in names.items():
            cleaned = clean_name(name)
            if not wire.is_uuid(user_id) or cleaned is None:
                raise PinFileError(f"the pins file {str(self.path)!r}: bad name entry {user_id!r}")
            self._names[user_id] = cleaned

    def _read_entry(self, name: str, entry: object, need_server_id: bool) -> dict[str, Any]:
        where = f"the pins file {str(self.path)!r}, entry {name!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("pubkey"), str):
            raise PinFileError(f"{where}: must be an object with a 'pubkey' string")
        try:
            key = canonical_key(entry["pubkey"])
        except crypto.BadKey as e:
            raise PinFileError(f"{where}: {e.detail}") from None
        result: dict[str, Any] = {
            "pubkey": key,
            "fingerprint": crypto.fingerprint(key),
            "pinned_at": entry.get("pinned_at") if isinstance(entry.get("pinned_at"), int) else 0,
        }
        if need_server_id:
            server_id = entry.get("server_id")
            if not wire.is_uuid(server_id):
                raise PinFileError(f"{where}: 'server_id' must be a UUID")
            result["server_id"] = server_id
        return result

    def _save(self) -> None:
        data: dict[str, Any] = {"version": PINS_VERSION, "users": self._users, "servers": self._servers}
        if self._names:
            data["names"] = self._names
        text = json.dumps(data, indent=1, sort_keys=True) + "\n"
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_private(self.path, text.encode("utf-8"))
