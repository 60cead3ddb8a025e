"""systemd's notify protocol: ``READY=1`` once listening, ``STOPPING=1``, watchdog pings.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``, a UNIX datagram socket (a path, or an
abstract name written ``@name``); each message is one datagram of ``KEY=VALUE`` lines.  With
``WatchdogSec=`` it also passes ``$WATCHDOG_USEC`` (and ``$WATCHDOG_PID``): the server must send
``WATCHDOG=1`` more often than that, from the reactor thread, so a wedged reactor gets the
service restarted.  These are the few lines the protocol takes (``sd_notify(3)``); without
``$NOTIFY_SOCKET`` everything here does nothing.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from typing import Any

from twisted.application.service import Service

from socp_tw.logs import get_logger
from socp_tw.timers import repeating, stop_repeating

_log = get_logger("socp_tw.systemd")


def notify_address(env: Mapping[str, str]) -> str | bytes | None:
    """Where ``$NOTIFY_SOCKET`` points (``@name``: the abstract ``\\0name``), or None."""
    path = env.get("NOTIFY_SOCKET", "")
    if not path:
        return None
    if path.startswith("@"):
        return b"\0" + path[1:].encode()
    if not path.startswith("/"):
        return None  # vsock and friends: not supported here
    return path


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one notify datagram; True if sent (False: no socket, or it failed, logged)."""
    address = notify_address(os.environ if env is None else env)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as e:
        _log.warn("Could not notify systemd ({message!r}): {error}", message=message, error=str(e))
        return False
    return True


def watchdog_interval(env: Mapping[str, str], pid: int | None = None) -> float | None:
    """Seconds between ``WATCHDOG=1`` pings (half of ``$WATCHDOG_USEC``), or None without a watchdog."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    watched = env.get("WATCHDOG_PID")
    if usec <= 0 or (watched and watched != str(os.getpid() if pid is None else pid)):
        return None
    return usec / 2e6


class SystemdNotifier(Service):
    """Tell systemd when the server is ready (once the listener listens) and when it stops.

    Started after the listener, so its port is bound; ``READY=1`` goes out at the first reactor
    turn, as the server starts serving.  Stopped first, so ``STOPPING=1`` comes before the rest.
    """

    name = "systemd"

    def __init__(self, listener: Any, clock: Any, env: Mapping[str, str] | None = None) -> None:
        self._listener = listener
        self._clock = clock
        self._env = dict(os.environ if env is None else env)
        self._loop = None
        self._ready_call = None

    @property
    def enabled(self) -> bool:
        return notify_address(self._env) is not None

    def startService(self) -> None:
        super().startService()
        if not self.enabled:
            return
        self._ready_call = self._clock.callLater(0, self._ready)
        interval = watchdog_interval(self._env)
        if interval is not None:
            self._loop = repeating(self._clock, interval, self.ping)

    def _ready(self) -> None:
        self._ready_call = None
        url = getattr(self._listener, "url", None) or "?"
        notify(f"READY=1\nSTATUS=Listening on {url}\nMAINPID={os.getpid()}", self._env)

    def ping(self) -> None:
        notify("WATCHDOG=1", self._env)

    def stopService(self) -> None:
        super().stopService()
        if self._ready_call is not None and self._ready_call.active():
            self._ready_call.cancel()
        self._ready_call = None
        stop_repeating(self._loop)
        self._loop = None
        if self.enabled:
            notify("STOPPING=1\nSTATUS=Shutting down", self._env)
