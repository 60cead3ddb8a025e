"""Command-line options of ``socp-client``."""

from __future__ import annotations

import os
import re
from pathlib import Path

from twisted.python import usage

_WS_URL = re.compile(r"^(ws|wss)://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):(\d{1,5})/?$", re.IGNORECASE)


def parse_server_url(text: str) -> tuple[str, str, int]:
    """Split ``ws://HOST:PORT`` (or ``wss://``) into (scheme, host, port); ``ValueError`` otherwise."""
    match = _WS_URL.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a ws://HOST:PORT URL")
    scheme, host, port = match.group(1), match.group(2).strip("[]"), int(match.group(3))
    if not 0 < port <= 65535:
        raise ValueError(f"port {port} is out of range")
    return scheme.lower(), host.lower(), port


def normalise_server_url(text: str) -> str:
    """The canonical spelling of a server URL, the key of its server-key pin."""
    scheme, host, port = parse_server_url(text)
    return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}"


def default_pins_file() -> str:
    """``$XDG_CONFIG_HOME/socp/pins.json`` when that variable is set, else ``~/.socp/pins.json``."""
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg:
        return str(Path(xdg) / "socp" / "pins.json")
    return str(Path.home() / ".socp" / "pins.json")


class Options(usage.Options):
    """Options of ``socp-client``."""

    synopsis = (
        "Usage: socp-client --server ws://HOST:PORT [--download-dir DIR] [--password-file F] [--pins-file F]"
    )
    longdesc = (
        "A terminal client for a SOCP v1.3 server: register, log in, list online users and "
        "exchange end-to-end encrypted direct messages. Type /help once connected."
    )
    optParameters = [
        ["server", "s", None, "The server to connect to: ws://HOST:PORT (required)."],
        ["download-dir", None, ".", "Directory where received files are saved."],
        [
            "password-file",
            None,
            None,
            "Read the password from the first line of this file instead of asking.",
        ],
        [
            "pins-file",
            None,
            None,
            "Where keys of users and servers are pinned (default: " + default_pins_file() + ").",
        ],
        ["log-file", None, None, "Write the client's diagnostic log (no secrets) to this file."],
    ]

    def opt_version(self) -> None:
        """Print the socp-tw version and exit."""
        from socp_tw import __version__

        print(f"socp-client (socp-tw) {__version__}")
        raise SystemExit(0)

    def postOptions(self) -> None:
        if not self["server"]:
            raise usage.UsageError("--server ws://HOST:PORT is required")
        try:
            self["server"] = normalise_server_url(self["server"])
        except ValueError as e:
            raise usage.UsageError(f"--server: {e}") from None
        download_dir = Path(self["download-dir"]).expanduser()
        if not download_dir.is_dir():
            raise usage.UsageError(f"--download-dir: {str(download_dir)!r} is not a directory")
        if not os.access(download_dir, os.W_OK | os.X_OK):
            raise usage.UsageError(f"--download-dir: {str(download_dir)!r} is not writable")
        self["download-dir"] = str(download_dir)
        self["password"] = None
        if self["password-file"] is not None:
            self["password"] = read_password_file(self["password-file"])
        if self["pins-file"] is None:
            self["pins-file"] = default_pins_file()
        self["pins-file"] = str(Path(self["pins-file"]).expanduser())


def read_password_file(path: str) -> str:
    """The first line of ``path`` (without its line ending); ``UsageError`` if unreadable or empty."""
    try:
        with open(Path(path).expanduser(), encoding="utf-8") as handle:
            line = handle.readline(4097)
    except (OSError, UnicodeDecodeError) as e:
        raise usage.UsageError(f"--password-file: cannot read {path!r}: {e}") from None
    password = line.rstrip("\r\n")
    if not password:
        raise usage.UsageError(f"--password-file: {path!r} has an empty first line")
    if len(password) > 4096:
        raise usage.UsageError(f"--password-file: the password in {path!r} is longer than 4096 characters")
    return password
