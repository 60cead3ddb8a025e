"""Checks a ``twistd socp`` start makes before it creates anything (issue 16).

A start that cannot succeed (a bad option, a log file that cannot be opened, a data dir that
cannot be written, a port in use) should end with one line on stderr and exit code 1, and
leave no new server identity behind.  twistd itself prints the whole help above a usage
error and opens its log file only after ``makeService``; so these checks run while the
options are parsed (data dir, log file) or first thing in ``makeService`` (the port), and a
failure is raised as :class:`SystemExit`, which twistd lets through to Python's one-line exit.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from socp_tw.listener import BindAddress, parse_bind

#: The line that follows a usage error under twistd, in place of its 45 lines of help.
HELP_HINT = "(twistd socp --help lists the options)"


class StartupError(Exception):
    """A start that cannot succeed; its text is the whole message."""


def usage_exit(error: Exception) -> SystemExit:
    """The :class:`SystemExit` that ends a ``twistd socp`` start on a bad option, in one line."""
    return SystemExit(f"twistd socp: {error} {HELP_HINT}")


def check_data_dir(path: str | os.PathLike) -> None:
    """Raise :class:`StartupError` unless ``path`` is, or can be created as, a writable directory.

    Nothing is created: the nearest existing ancestor must be a directory we may write into.
    """
    target = Path(path).absolute()
    probe = target
    while not probe.exists():
        if probe.is_symlink():
            raise StartupError(f"--data-dir {target}: {probe} is a dangling symbolic link")
        probe = probe.parent
    if not probe.is_dir():
        raise StartupError(f"--data-dir {target}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        what = "the data dir" if probe == target else f"cannot create it in {probe}:"
        raise StartupError(f"--data-dir {target}: {what} not writable by this user")
    if probe == target:
        for name in os.listdir(target):
            entry = target / name
            if entry.is_file() and not os.access(entry, os.R_OK | os.W_OK):
                raise StartupError(f"--data-dir {target}: {name} is not readable and writable by this user")


def check_log_file(logfile: str | None) -> None:
    """Raise :class:`StartupError` unless twistd's ``--logfile`` can be opened for appending."""
    if not logfile or logfile == "-":
        return
    path = Path(logfile).absolute()
    if path.exists():
        if path.is_dir():
            raise StartupError(f"--logfile {path}: is a directory")
        if not os.access(path, os.W_OK):
            raise StartupError(f"--logfile {path}: not writable by this user")
        return
    parent = path.parent
    if not parent.is_dir():
        raise StartupError(f"--logfile {path}: the directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise StartupError(f"--logfile {path}: the directory {parent} is not writable by this user")


def check_metrics_endpoint(text: str) -> BindAddress | None:
    """Raise :class:`usage.UsageError` unless ``--metrics TEXT`` is a server endpoint string.

    Returns the address to probe before listening for a ``tcp:`` endpoint, else None.
    """
    from twisted.internet import endpoints
    from twisted.internet.testing import MemoryReactor
    from twisted.python import usage

    try:
        endpoints.serverFromString(MemoryReactor(), text)
        return parse_bind(text) if text.startswith("tcp:") else None
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError(f"--metrics: {text!r} is not a Twisted endpoint string ({e})") from None


def check_can_listen(address: BindAddress, what: str = "") -> None:
    """Raise :class:`StartupError` if ``address``'s port cannot be bound right now.

    A probe socket is bound (with ``SO_REUSEADDR``, as Twisted's own listening port) and
    closed at once.  Port 0 always succeeds, so it is not probed.
    """
    if address.port == 0:
        return
    where = f"{what} tcp:{address.port}:interface={address.host}" if what else address.url()
    try:
        infos = socket.getaddrinfo(
            address.host or None, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        raise StartupError(f"cannot listen on {where}: {address.host!r} does not resolve ({e.strerror})")
    family, kind, proto, _name, sockaddr = infos[0]
    probe = socket.socket(family, kind, proto)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(sockaddr)
    except OSError as e:
        reason = {
            errno.EADDRINUSE: "the port is in use (another server?)",
            errno.EACCES: "permission denied (ports below 1024 need privileges)",
            errno.EADDRNOTAVAIL: "no such local address",
        }.get(e.errno, e.strerror or str(e))
        raise StartupError(f"cannot listen on {where}: {reason}") from None
    finally:
        probe.close()
