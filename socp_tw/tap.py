"""``twistd socp``: command-line options and the service graph of a SOCP server.

``makeService`` returns a :class:`MultiService` whose children start in dependency
order (workers, store, hub, presence, mesh, router, users, files, listener, status,
outgoing, public) and so stop in reverse: the public channel reports its users' leaves while the
server links are up, then outgoing links and the listener close before the services they feed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet import endpoints
from twisted.python import usage

from socp_tw import tls, wire
from socp_tw.bootstrap import BootstrapError, load_bootstrap
from socp_tw.identity import IdentityError, load_or_create_identity
from socp_tw.limits import DEFAULT_LIMITS, Limits
from socp_tw.logs import LEVEL_NAMES, get_logger, set_log_level
from socp_tw.memory import DEFAULT_INTERVAL as TRIM_INTERVAL
from socp_tw.memory import MemoryTrimmer
from socp_tw.protocols.peer import OutgoingLinks
from socp_tw.protocols.websocket import SOCPServerFactory
from socp_tw.services.files import FileRelay
from socp_tw.services.hub import Hub
from socp_tw.services.mesh import Mesh, PinStoreError
from socp_tw.services.presence import Presence
from socp_tw.services.public import PublicChannel
from socp_tw.services.router import Router
from socp_tw.services.status import StatusReporter
from socp_tw.services.store import DB_FILE, SQLiteStore, StoreError
from socp_tw.services.users import UserSide
from socp_tw.signer import FrameSigner
from socp_tw.workers import ThreadPoolWorkers

_log = get_logger("socp_tw.tap")

_WS_URL = re.compile(r"^(ws|wss)://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.\-]+):(\d{1,5})/?$")


@dataclass(frozen=True)
class BindAddress:
    """Where to listen (an endpoint description) and how to name it (a ws:// URL)."""

    endpoint: str
    scheme: str
    host: str
    port: int

    def url(self, port: int | None = None) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port if port is None else port}"


def parse_ws_url(text: str) -> tuple[str, str, int]:
    """Split ``ws://host:port`` into (scheme, host, port); raise ValueError otherwise."""
    match = _WS_URL.match(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a ws://HOST:PORT URL")
    scheme, host, port = match.group(1), match.group(2).strip("[]"), int(match.group(3))
    if port > 65535:
        raise ValueError(f"port {port} is out of range")
    return scheme, host, port


def parse_bind(text: str) -> BindAddress:
    """Accept a ``ws://HOST:PORT`` or ``wss://HOST:PORT`` URL, or a Twisted ``tcp:`` endpoint string.

    For ``wss://`` the endpoint is built by :func:`makeService` from ``--tls-cert``/``--tls-key``.
    """
    if text.startswith(("ws://", "wss://")):
        scheme, host, port = parse_ws_url(text)
        interface = host.replace(":", "\\:")
        endpoint = f"tcp:{port}:interface={interface}" if scheme == "ws" else ""
        return BindAddress(endpoint, scheme, host, port)
    if text.startswith("tcp:"):
        parts = re.split(r"(?<!\\):", text)
        try:
            port = int(parts[1] if "=" not in parts[1] else dict(p.split("=", 1) for p in parts[1:])["port"])
        except (IndexError, KeyError, ValueError):
            raise ValueError(f"endpoint {text!r} names no port") from None
        host = "0.0.0.0"
        for part in parts[1:]:
            if part.startswith("interface="):
                host = part.split("=", 1)[1].replace("\\:", ":")
        return BindAddress(text, "ws", host, port)
    raise ValueError(f"--bind takes ws://HOST:PORT or a tcp: endpoint string, not {text!r}")


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

    def opt_peer(self, url: str) -> None:
        """Another server to join through (repeatable): ws://HOST:PORT or wss://HOST:PORT."""
        try:
            parse_ws_url(url)
        except ValueError as e:
            raise usage.UsageError(f"--peer: {e}") from None
        self["peer"].append(url)

    opt_p = opt_peer

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
        if self["log-level"] not in LEVEL_NAMES:
            raise usage.UsageError(f"--log-level must be one of {', '.join(LEVEL_NAMES)}")
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

    def _post_security_options(self) -> None:
        """--ts-window, --identify-timeout, TLS for the listener (--tls-*) and for peers."""
        window = self._seconds("ts-window", 1.0, 86400.0)
        identify_timeout = self._seconds("identify-timeout", 1.0, 3600.0)
        self["limits"] = replace(
            DEFAULT_LIMITS,
            max_frame_bytes=self["max-frame-bytes"],
            ts_window=window,
            seen_ids_ttl=max(DEFAULT_LIMITS.seen_ids_ttl, 2 * window),
            identify_timeout=identify_timeout,
            auth_timeout=max(DEFAULT_LIMITS.auth_timeout, identify_timeout),
        )
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
        schemes = [parse_ws_url(url) for url in self["peer"]]
        self["peer_tls"] = tls.PeerTLS(
            default=address.scheme == "wss",
            ca_file=self["tls-ca"],
            pins=self["peer-pin"],
            pin_only=bool(self["pin-only"]),
            tls_addresses=[(host, port) for scheme, host, port in schemes if scheme == "wss"],
            plain_addresses=[(host, port) for scheme, host, port in schemes if scheme == "ws"],
        )
        try:
            self["peer_tls"].check()
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


class ListeningService(StreamServerEndpointService):
    """Listen on an endpoint, fail start-up if the port is busy, log the URL once listening."""

    def __init__(self, endpoint, factory, address: BindAddress, server_id: str) -> None:
        super().__init__(endpoint, factory)
        self._raiseSynchronously = True
        self.address = address
        self.server_id = server_id
        self.port = None
        self.url: str | None = None

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._waitingForPort.addCallback(self._listening)

    def _listening(self, port):
        self.port = port
        self.url = self.address.url(port.getHost().port)
        self.factory.setSessionParameters(url=self.url, server=self.factory.server)
        _log.info("Server {server_id} listening on {url}", server_id=self.server_id, url=self.url)
        return port


def makeService(config: Options, reactor=None) -> MultiService:
    """Build the server's service graph from parsed ``config``."""
    if reactor is None:
        from twisted.internet import reactor
    set_log_level(config["log-level"])
    data_dir = Path(config["data-dir"])
    try:
        identity = load_or_create_identity(data_dir, config["server-id"])
    except (IdentityError, OSError) as e:
        raise SystemExit(f"socp: {e}") from None

    top = MultiService()
    workers = ThreadPoolWorkers(reactor=reactor)
    workers.setServiceParent(top)
    try:
        # Migrates the schema now, before anything listens (see socp_tw.services.store).
        store = SQLiteStore(data_dir / DB_FILE, reactor=reactor)
    except (StoreError, OSError) as e:
        raise SystemExit(f"socp: database: {e}") from None
    store.setServiceParent(top)
    signer = FrameSigner(identity, workers)
    limits: Limits = config["limits"]
    hub = Hub(signer, clock=reactor, limits=limits)
    hub.setServiceParent(top)
    presence = Presence(identity.server_id, max_remote_users=limits.max_remote_users)
    presence.setServiceParent(top)
    address: BindAddress = config["bind_address"]

    def advertised() -> tuple[str, int]:
        # The bind address with the port actually listened on (port 0 in tests).
        if config["advertise_address"] is not None:
            return config["advertise_address"]
        port = listener.port.getHost().port if listener.port is not None else address.port
        return address.host, port

    if config["advertise_address"] is None and address.host in ("0.0.0.0", "::", ""):
        _log.warn("Listening on all interfaces: pass --advertise ws://HOST:PORT so peers can reach us")
    try:
        mesh = Mesh(
            signer,
            hub,
            presence,
            reactor=reactor,
            data_dir=data_dir,
            peers=config["peer_addresses"],
            bootstrap=config["bootstrap_entries"],
            advertise=advertised,
            workers=workers,
            seen_max=limits.seen_ids_max,
            seen_max_age=limits.seen_ids_ttl,
            forged_limit=limits.forged_limit,
            forged_window=limits.forged_window,
            limits=limits,
        )
    except PinStoreError as e:
        raise SystemExit(f"socp: {e}") from None
    mesh.setServiceParent(top)
    router = Router(
        presence, signer, mesh, ts_window=limits.ts_window, now_ms=lambda: int(reactor.seconds() * 1000)
    )
    router.setServiceParent(top)
    users = UserSide(hub, presence, router, store, signer, workers, clock=reactor, limits=limits)
    users.setServiceParent(top)
    public = PublicChannel(store, presence, mesh, router, users, signer, workers, clock=reactor)
    files = FileRelay(
        users,
        presence,
        router,
        workers,
        mesh,
        clock=reactor,
        limits=limits,
        max_file_bytes=config["max-file-bytes"],
    )
    files.setServiceParent(top)

    # Port 0 (tests) is only known once listening; ListeningService sets the URL then.
    factory = SOCPServerFactory(
        address.url() if address.port else None, hub, max_frame_bytes=config["max-frame-bytes"], limits=limits
    )
    if address.scheme == "wss":
        endpoint = tls.server_endpoint(reactor, address.host, address.port, config["tls_context"])
    else:
        endpoint = endpoints.serverFromString(reactor, address.endpoint)
    listener = ListeningService(endpoint, factory, address, identity.server_id)
    listener.setName("listener")
    listener.setServiceParent(top)
    StatusReporter(mesh, presence, config["status-interval"], clock=reactor).setServiceParent(top)
    if config["memory-trim-interval"] > 0:
        MemoryTrimmer(clock=reactor, interval=config["memory-trim-interval"]).setServiceParent(top)
    # Outgoing links start once the listener knows its port (we announce it) and stop first.
    OutgoingLinks(
        mesh, reactor, max_frame_bytes=config["max-frame-bytes"], tls_policy=config["peer_tls"], limits=limits
    ).setServiceParent(top)
    # Last, so it stops first: its users' leaves go out while every server link is still up.
    public.setServiceParent(top)
    top.identity = identity
    return top
