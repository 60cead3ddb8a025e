"""Command-line options of ``socp-client``."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from twisted.python import usage

from socp_tw import tls

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
        "Usage: socp-client --server ws[s]://HOST:PORT [--download-dir DIR] [--password-file F]"
        " [--pins-file F] [--tls-ca PEM] [--server-pin PIN ...] [--pin-only]"
    )
    longdesc = (
        "A terminal client for a SOCP v1.3 server: register, log in, list online users and "
        "exchange end-to-end encrypted direct messages. Type /help once connected."
    )
    optParameters = [
        ["server", "s", None, "The server to connect to: ws://HOST:PORT or wss://HOST:PORT (required)."],
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
        [
            "tls-ca",
            None,
            None,
            "Trust only this PEM CA file for a wss:// server (default: the system's trust store).",
        ],
    ]
    optFlags = [
        [
            "pin-only",
            None,
            "With --server-pin: the pin alone identifies the wss:// server (self-signed certificates;"
            " CA, hostname and dates are not checked).",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["server-pin"] = []

    def opt_server_pin(self, pin: str) -> None:
        """Repeatable: the wss:// server's TLS key must match one of these SPKI pins (sha256/... or hex)."""
        try:
            tls.parse_pin(pin)
        except tls.TLSConfigError as e:
            raise usage.UsageError(f"--server-pin: {e}") from None
        self["server-pin"].append(pin.strip())

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
        self["tls-context"] = self._tls_context()

    def _tls_context(self) -> Any:
        """How to verify a wss:// server (``None`` for ws://); ``UsageError`` for bad TLS options."""
        scheme, host, _ = parse_server_url(self["server"])
        ca_file, pins, pin_only = self["tls-ca"], self["server-pin"], self["pin-only"]
        if scheme != "wss":
            if ca_file or pins or pin_only:
                raise usage.UsageError("--tls-ca, --server-pin and --pin-only need a wss:// --server")
            return None
        if pin_only and not pins:
            raise usage.UsageError("--pin-only needs at least one --server-pin")
        if pin_only and ca_file:
            raise usage.UsageError(
                "--tls-ca and --pin-only exclude each other (with --pin-only the pin alone identifies"
                " the server)"
            )
        if ca_file:
            ca_file = str(Path(ca_file).expanduser())
        try:
            return tls.client_context(host, ca_file, pins or None, pin_only=pin_only)
        except tls.TLSConfigError as e:
            raise usage.UsageError(f"--tls-ca: {e}" if ca_file else f"--server: {e}") from None


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
