"""Forgetting servers: ``socpctl forget-peer`` and ``--forget-after`` (issue 16).

The mesh redials every server it once linked with, for ever.  :func:`forget_server` stops
that: the dialer goes, the pin goes (``peers.json`` is rewritten), a live link is closed.  A
server still alive may be learnt again from another server's gossip; that is by design.

:class:`PeerSweeper` records when each known server was last linked (``peers-seen.json`` in
the data dir, mode 0600: the mesh keeps no such time across restarts) and forgets those not
linked for ``forget_after`` seconds, once an hour, logging each.  A server never linked since
this file appeared counts from the moment it was first noticed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.application.service import Service

from socp_tw.logs import get_logger
from socp_tw.privatefile import write_private
from socp_tw.timers import repeating, stop_repeating

SEEN_FILE = "peers-seen.json"
#: Default of ``--forget-after``: 30 days.
DEFAULT_FORGET_AFTER = 30 * 86400.0
#: Seconds between sweeps.
SWEEP_INTERVAL = 3600.0

_log = get_logger("socp_tw.admin")


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``30d``, ``12h``, ``90m``, ``45s`` or bare seconds; ValueError otherwise (0: never)."""
    text = text.strip().lower()
    scale = _UNITS.get(text[-1:], None)
    number = text[:-1] if scale is not None else text
    value = float(number) * (scale or 1)
    if not 0 <= value <= 100 * 365 * 86400:
        raise ValueError(f"{text!r} is out of range")
    return value


def forget_server(mesh: Any, server_id: str, why: str) -> bool:
    """Stop redialling ``server_id``, unpin its key, close a live link; False if it was unknown.

    The mesh has no public "forget" yet, so this reaches into its key book and dialers.
    """
    known = mesh._known.pop(server_id, None)
    dialer = mesh._dialers.pop(server_id, None)
    if dialer is not None:
        dialer.pause()
        if mesh._outgoing is not None:
            mesh._outgoing.remove(dialer)
    link = mesh.link_to(server_id)
    if known is None and dialer is None and link is None:
        return False
    if link is not None:
        link.close(1000, "forgotten by this server's operator")
    mesh._save_pins()
    mesh._changed()
    _log.warn(
        "Forgot server {server_id} ({why}): no longer dialled, key unpinned", server_id=server_id, why=why
    )
    return True


class PeerSweeper(Service):
    """Last-linked times of known servers, and forgetting those gone longer than ``forget_after``."""

    name = "peer-sweeper"

    def __init__(self, mesh: Any, data_dir: str | Path, forget_after: float, clock: Any) -> None:
        self._mesh = mesh
        self._path = Path(data_dir) / SEEN_FILE
        self.forget_after = forget_after
        self._clock = clock
        self._loop = None
        self.seen: dict[str, float] = self._load()
        mesh.add_change_observer(self.note)

    def _load(self) -> dict[str, float]:
        try:
            data = json.loads(self._path.read_text("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            _log.warn("Ignoring unreadable {path}: {error}", path=str(self._path), error=str(e))
            return {}
        return {str(k): float(v) for k, v in data.items() if isinstance(v, int | float)}

    def _save(self) -> None:
        try:
            write_private(self._path, json.dumps(self.seen, sort_keys=True).encode())
        except OSError as e:
            _log.warn("Could not write {path}: {error}", path=str(self._path), error=str(e))

    def note(self) -> None:
        """Record now as the last-linked time of every linked server (and first sight of new ones)."""
        now = self._clock.seconds()
        connected = set(self._mesh.connected_servers())
        known = set(self._mesh.known_servers())
        changed = False  # membership changed: worth a write (times alone wait for the sweep)
        for server_id in connected:
            changed = changed or server_id not in self.seen
            self.seen[server_id] = now
        for server_id in known - self.seen.keys():
            self.seen[server_id] = now
            changed = True
        for server_id in set(self.seen) - known - connected:
            del self.seen[server_id]
            changed = True
        if changed and self.running:
            self._save()

    def sweep(self) -> list[str]:
        """Forget every known server not linked for ``forget_after`` seconds; return their ids."""
        self.note()
        now = self._clock.seconds()
        connected = set(self._mesh.connected_servers())
        gone = [
            server_id
            for server_id in self._mesh.known_servers()
            if server_id not in connected and now - self.seen.get(server_id, now) > self.forget_after
        ]
        for server_id in gone:
            days = (now - self.seen[server_id]) / 86400
            forget_server(self._mesh, server_id, f"unreachable for {days:.1f} days, --forget-after")
            self.seen.pop(server_id, None)
        self._save()
        return gone

    def startService(self) -> None:
        super().startService()
        self._loop = repeating(self._clock, SWEEP_INTERVAL, self.sweep)

    def stopService(self) -> None:
        super().stopService()
        stop_repeating(self._loop)
        self._loop = None
        self.note()
        self._save()
