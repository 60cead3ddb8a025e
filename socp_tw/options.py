"""The options of ``twistd socp``: every value checked and turned into a setting while
twistd parses them (before ``makeService``), with the factories next to what they build
(:mod:`socp_tw.settings`, :mod:`socp_tw.listener`, :mod:`socp_tw.tls`)."""

from __future__ import annotations

import json
from pathlib import Path

from twisted.python import usage

from socp_tw import tls, wire
from socp_tw.admin.peers import parse_duration
from socp_tw.bootstrap import BootstrapError, load_bootstrap
from socp_tw.gcpolicy import DEFAULT_THAW_INTERVAL
from socp_tw.identity import IDENTITY_FILE
from socp_tw.limits import DEFAULT_LIMITS
from socp_tw.listener import BindAddress, parse_bind, parse_ws_url
from socp_tw.logs import LEVEL_NAMES
from socp_tw.memory import DEFAULT_INTERVAL as TRIM_INTERVAL
from socp_tw.ops import logformat, startup
from socp_tw.settings import peer_tls_policy, server_limits

#: The pidfile's name in ``--data-dir`` when twistd is given no ``--pidfile``.
PIDFILE = "twistd.pid"


class Options(usage.Options):
    """Options of ``twistd socp``."""

    synopsis = (
        "[--bind ws://HOST:PORT | --bind wss://HOST:PORT --tls-cert PEM --tls-key PEM]"
        " [--server-id UUID] [--peer ws[s]://HOST:PORT ...] [--data-dir DIR]"
    )
    longdesc = (
        "Run a SOCP v1.3 server: users and peer servers connect to one WebSocket port. "
        "The server id and RSA-4096 key are created in --data-dir on first start and reused afterwards."
    )
    optParameters = [
        ["bind", "b", "ws://127.0.0.1:8765", "Listen address: ws://HOST:PORT, wss://HOST:PORT or tcp:..."],
        ["server-id", None, None, "This server's UUID v4 (default: the stored one, or a new one)."],
        ["data-dir", "d", "./socp-data", "Directory for the server key, id and database."],
        ["log-level", None, "info", f"Minimum level of socp events: {', '.join(LEVEL_NAMES)}."],
        ["log-format", None, "text", "Log lines: text ([mesh#info] tags) or json (one object per line)."],
        [
            "log-rotate-bytes",
            None,
            str(logformat.ROTATE_BYTES),
            "Rotate --logfile at this size (0: only on SIGUSR1).",
        ],
        [
            "forget-after",
            None,
            "30d",
            "Forget servers unreachable this long: 30d, 12h, 90m, seconds; 0: never.",
        ],
        [
            "metrics",
            None,
            None,
            "Serve /health and /metrics over HTTP on this endpoint (tcp:9100:interface=...).",
        ],
        ["max-frame-bytes", None, str(wire.MAX_FRAME_BYTES), "Largest WebSocket message accepted (bytes)."],
        ["bootstrap", None, None, "YAML/JSON list of introducers {host, port, pubkey}, keys pinned."],
        ["status-interval", None, "30", "Seconds between status lines (also logged on every mesh change)."],
        ["advertise", None, None, "ws://HOST:PORT announced to peers (default: the bind URL, actual port)."],
        [
            "max-file-bytes",
            None,
            str(DEFAULT_LIMITS.max_file_bytes),
            "Largest file (FILE_START size, bytes) this server relays for its users.",
        ],
        ["tls-cert", None, None, "PEM certificate (optionally followed by its chain) for --bind wss://."],
        ["tls-key", None, None, "PEM private key (unencrypted) of --tls-cert."],
        ["tls-chain", None, None, "PEM file of intermediate certificates to send after --tls-cert."],
        ["tls-ca", None, None, "Trust only this PEM CA file when dialling wss:// peers (default: system)."],
        [
            "ts-window",
            None,
            str(DEFAULT_LIMITS.ts_window),
            "Seconds a user frame's ts may differ from our clock before it is refused (BAD_TS).",
        ],
        [
            "identify-timeout",
            None,
            str(DEFAULT_LIMITS.identify_timeout),
            "Seconds a new connection has to send its first (identifying) frame.",
        ],
        [
            "memory-trim-interval",
            None,
            f"{TRIM_INTERVAL:g}",
            "Seconds between checks that return memory freed after a burst to the OS (glibc; 0: never).",
        ],
        [
            "gc-thaw-interval",
            None,
            f"{DEFAULT_THAW_INTERVAL:g}",
            "Longest seconds the survivors of a full garbage collection stay frozen (short GC pauses"
            " with many users; 0: plain CPython collection).",
        ],
        ["hold-days", None, "7", "Days a DM for an offline or unreachable user is held before it expires."],
    ]
    optFlags = [
        ["pin-only", None, "A peer with a --peer-pin is verified by its pin alone (self-signed certs)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["peer"] = []
        self["peer-pin"] = {}

    def opt_peer_pin(self, text: str) -> None:
        """HOST[:PORT]=PIN (repeatable): that peer's TLS key must match this SPKI pin; implies wss://."""
        host, sep, pin = text.partition("=")
        host = host.strip().lower()
        if not sep or not host or not pin.strip():
            raise usage.UsageError(f"--peer-pin takes HOST=PIN, not {text!r}")
        try:
            tls.parse_pin(pin)
        except tls.TLSConfigError as e:
            raise usage.UsageError(f"--peer-pin: {e}") from None
        self["peer-pin"].setdefault(host, []).append(pin.strip())

    def opt_version(self) -> None:
        """Print the socp-tw version (not Twisted's) and exit."""
        from socp_tw import __version__

        print(f"twistd socp (socp-tw) {__version__}")
        raise SystemExit(0)

    def opt_peer(self, url: str) -> None:
        """Another server to join through (repeatable): ws://HOST:PORT or wss://HOST:PORT."""
        try:
            parse_ws_url(url)
        except ValueError as e:
            raise usage.UsageError(f"--peer: {e}") from None
        self["peer"].append(url)

    opt_p = opt_peer

    def parseOptions(self, options: list[str] | None = None) -> None:
        """Under twistd, a usage error ends the start in one line, without twistd's full help."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            raise startup.usage_exit(e) from None

    def postOptions(self) -> None:
        try:
            self["bind_address"] = parse_bind(self["bind"])
        except ValueError as e:
            raise usage.UsageError(f"--bind: {e}") from None
        server_id = self["server-id"]
        if server_id is not None and not wire.is_uuid4(server_id):
            raise usage.UsageError(
                f"--server-id must be a UUID v4 (like {wire.new_uuid4()}), not {server_id!r}"
            )
        self._post_data_dir()
        if self["log-level"] not in LEVEL_NAMES:
            raise usage.UsageError(f"--log-level must be one of {', '.join(LEVEL_NAMES)}")
        if self["log-format"] not in logformat.FORMATS:
            raise usage.UsageError(f"--log-format must be one of {', '.join(logformat.FORMATS)}")
        try:
            self["log-rotate-bytes"] = int(self["log-rotate-bytes"])
        except ValueError:
            raise usage.UsageError("--log-rotate-bytes must be an integer") from None
        if self["log-rotate-bytes"] < 0:
            raise usage.UsageError("--log-rotate-bytes must be 0 (only on SIGUSR1) or more")
        if getattr(self, "parent", None) is not None:
            logformat.apply_to_twistd(self.parent, self["log-format"], self["log-rotate-bytes"])
        try:
            self["max-frame-bytes"] = int(self["max-frame-bytes"])
        except ValueError:
            raise usage.UsageError("--max-frame-bytes must be an integer") from None
        if not 1024 <= self["max-frame-bytes"] <= 64 * 1024 * 1024:
            raise usage.UsageError("--max-frame-bytes must be between 1024 and 67108864")
        self._post_mesh_options()
        self._post_file_options()
        self._post_security_options()
        self._seconds("memory-trim-interval", 0, 86400, low_means="off")
        self._seconds("gc-thaw-interval", 0, 86400, low_means="off")
        try:
            self["hold-days"] = float(self["hold-days"])
        except ValueError:
            raise usage.UsageError("--hold-days must be a number of days") from None
        if not 0.001 <= self["hold-days"] <= 365:
            raise usage.UsageError("--hold-days must be between 0.001 and 365 days")
        self._post_startup_checks()
        if self["metrics"] is not None:
            self["metrics_address"] = startup.check_metrics_endpoint(self["metrics"])
        try:
            self["forget-after"] = parse_duration(self["forget-after"])
        except ValueError:
            raise usage.UsageError("--forget-after takes 30d, 12h, 90m, 45s or seconds (0: never)") from None
        self._post_pidfile()

    def _post_data_dir(self) -> None:
        """``--server-id`` without ``--data-dir``: that server's own ``./socp-data/<id>``, so that
        servers started side by side from one directory (the integration guide's recipe) each
        keep their own key, database and pidfile.  ``./socp-data`` itself stays the data dir of
        the server whose identity it already holds, and of a server started with neither."""
        server_id = self["server-id"]
        default = self.defaults["data-dir"]
        if server_id is None or self["data-dir"] is not default:
            return
        try:
            stored = json.loads((Path(default) / IDENTITY_FILE).read_text("utf-8")).get("server_id")
        except (OSError, ValueError, AttributeError):
            stored = None
        if stored != server_id:
            self["data-dir"] = str(Path(default) / server_id)

    def _post_startup_checks(self) -> None:
        """The data dir (and under twistd its --logfile) must be writable: fail now, create nothing."""
        parent = getattr(self, "parent", None)
        try:
            startup.check_data_dir(self["data-dir"])
            if parent is not None and "logfile" in parent:
                startup.check_log_file(parent["logfile"])
        except startup.StartupError as e:
            if parent is not None:  # not a usage error: no pointer to --help
                raise SystemExit(f"socp: {e}") from None
            raise usage.UsageError(str(e)) from None

    def _seconds(self, name: str, low: float, high: float, low_means: str = "") -> float:
        """Turn option ``--name`` into a number of seconds in ``[low, high]`` (a usage error if not)."""
        try:
            value = float(self[name])
        except ValueError:
            raise usage.UsageError(f"--{name} must be a number of seconds") from None
        if not low <= value <= high:
            lowest = f"{low:g} ({low_means})" if low_means else f"{low:g}"
            raise usage.UsageError(f"--{name} must be between {lowest} and {high:g} seconds")
        self[name] = value
        return value

    def _post_pidfile(self) -> None:
        """Under ``twistd`` with no ``--pidfile``, keep the pidfile in our own data dir.

        twistd's default is ``./twistd.pid``, so a second server started from the same
        directory would stop with "Another twistd server is running".  twistd checks the
        pidfile before ``makeService``, so it is moved here, while options are parsed (the
        parent makes it absolute after us).  twistd records no "given" flag: its default
        is the very string object in ``parent.defaults``, a command-line argument is
        another object even when spelled the same, so an explicit ``--pidfile twistd.pid``
        (or ``--pidfile ''``, none) is kept as asked.
        """
        parent = getattr(self, "parent", None)
        if parent is None or "pidfile" not in parent.defaults:
            return
        if parent["pidfile"] is parent.defaults["pidfile"]:
            # The dir itself is made by makeService, after the early checks (twistd writes
            # the pidfile after makeService and only reads it before).
            parent["pidfile"] = str(Path(self["data-dir"]) / PIDFILE)

    def _post_security_options(self) -> None:
        """--ts-window, --identify-timeout, TLS for the listener (--tls-*) and for peers."""
        window = self._seconds("ts-window", 1.0, 86400.0)
        identify_timeout = self._seconds("identify-timeout", 1.0, 3600.0)
        self["limits"] = server_limits(self["max-frame-bytes"], window, identify_timeout)
        address: BindAddress = self["bind_address"]
        self["tls_context"] = None
        if address.scheme == "wss":
            if not self["tls-cert"] or not self["tls-key"]:
                raise usage.UsageError("--bind wss://... needs --tls-cert and --tls-key")
            try:
                self["tls_context"] = tls.server_context_factory(
                    self["tls-cert"], self["tls-key"], self["tls-chain"]
                )
            except tls.TLSConfigError as e:
                raise usage.UsageError(f"--tls-cert/--tls-key: {e}") from None
        elif self["tls-cert"] or self["tls-key"] or self["tls-chain"]:
            raise usage.UsageError("--tls-cert/--tls-key/--tls-chain need --bind wss://HOST:PORT")
        try:
            self["peer_tls"] = peer_tls_policy(
                address.scheme,
                map(parse_ws_url, self["peer"]),
                ca_file=self["tls-ca"],
                pins=self["peer-pin"],
                pin_only=bool(self["pin-only"]),
            )
        except tls.TLSConfigError as e:
            raise usage.UsageError(f"peer TLS: {e}") from None

    def _post_file_options(self) -> None:
        """--max-file-bytes (the file relay's limit)."""
        try:
            self["max-file-bytes"] = int(self["max-file-bytes"])
        except ValueError:
            raise usage.UsageError("--max-file-bytes must be an integer") from None
        if not 0 <= self["max-file-bytes"] <= 2**40:
            raise usage.UsageError("--max-file-bytes must be between 0 and 1099511627776")

    def _post_mesh_options(self) -> None:
        """--peer, --bootstrap, --advertise, --status-interval (the mesh's options)."""
        self["peer_addresses"] = [parse_ws_url(url)[1:] for url in self["peer"]]
        self["bootstrap_entries"] = []
        if self["bootstrap"] is not None:
            try:
                self["bootstrap_entries"] = load_bootstrap(self["bootstrap"])
            except BootstrapError as e:
                raise usage.UsageError(f"--bootstrap: {e}") from None
        self._seconds("status-interval", 0.01, 86400)
        if self["advertise"] is not None:
            try:
                _, host, port = parse_ws_url(self["advertise"])
            except ValueError as e:
                raise usage.UsageError(f"--advertise: {e}") from None
            if port == 0:
                raise usage.UsageError("--advertise needs a real port, not 0")
            self["advertise_address"] = (host, port)
        else:
            self["advertise_address"] = None
