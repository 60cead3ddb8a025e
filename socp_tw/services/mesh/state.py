"""What every part of the mesh shares: constants, the per-link state, payload helpers."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import LoopingCall

from socp_tw import wire
from socp_tw.interfaces import IDialer, ILink

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008

#: First frames of an incoming server link (PROTOCOL.md §1).
CLAIMED_TYPES = ("SERVER_HELLO_JOIN", "SERVER_HELLO_LINK", "SERVER_ANNOUNCE")
#: Gossip: flooded to every link but the arrival one, de-duplicated by ``seen_ids``.
GOSSIP_TYPES = frozenset({"USER_ADVERTISE", "USER_REMOVE", "SERVER_ANNOUNCE"})
#: Frames a server link never answers, whatever happens (PROTOCOL.md §5).
NEVER_ANSWERED = frozenset({"ERROR", "ACK"})

#: Our profile's capabilities, listed in ``ext`` of our own {host, port, pubkey} payloads
#: (docs/PROTOCOL-EXTENSIONS.md): "deliver-ack": we confirm each delivered SERVER_DELIVER;
#: "link-set": we send and read SERVER_LINKS (our direct links, for the relay rule, §14).
EXT_DELIVER_ACK = "deliver-ack"
EXT_LINK_SET = "link-set"
OUR_EXTENSIONS = [EXT_DELIVER_ACK, EXT_LINK_SET]

MAX_KNOWN_SERVERS = 1000
#: Seconds the dialler of a losing duplicate link waits before closing it (pending frames leave).
DUPLICATE_CLOSE_DELAY = 0.25
MAX_META_BYTES = 4096
MAX_ANSWERED_TYPES = 64
MAX_HOST_CHARS = 255
_HOST_RE = re.compile(r"[A-Za-z0-9._\-]+|[0-9A-Fa-f:.]+")  # a host name, IPv4 or IPv6 literal


class KeyRefused(Exception):
    """A server key or identity was refused; ``code`` is the ERROR code for a pending link."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


# -- links ---------------------------------------------------------------------------------


@dataclass(eq=False)
class _LinkState:
    """The mesh's view of one server link."""

    link: ILink
    dialer: IDialer | None = None  # the dialer that owns an outgoing link
    server_id: str | None = None
    joining: bool = False  # outgoing, SERVER_HELLO_JOIN sent, waiting for SERVER_WELCOME
    up: bool = False  # the registered link of server_id
    retired: bool = False  # lost a duplicate-link tie-break, or dropped: closing
    healthy: bool = False  # a verified frame from the peer arrived on it
    opened_with: str | None = None  # our first frame on an outgoing LINK dial (INTEROP.md row 11)
    pending_welcome: Any = None  # a signed WELCOME without the introducer's key (INTEROP.md row 8)
    welcome_refused: str | None = None  # why we refused the WELCOME that arrived on this join link
    last_seen: float = 0.0
    heartbeat: LoopingCall | None = None
    dead_timer: IDelayedCall | None = None
    answered_types: set = field(default_factory=set)
    said_goodbye: bool = False
    throttled: bool = False  # paced for going over peer_rate at least once (logged once)
    claims: frozenset | None = None  # the servers the peer says it is linked to (SERVER_LINKS)
    claims_seq: int | None = None  # the ``seq`` of those claims
    told_links: int | None = None  # the ``seq`` of the last link set we sent on this link

    @property
    def direction(self) -> str:
        return "outgoing" if self.link.outgoing else "incoming"


def _parse_address_payload(payload: dict[str, Any]) -> tuple[str, int, str]:
    """``{host, port, pubkey}`` of HELLO_JOIN / HELLO_LINK / ANNOUNCE, tolerantly typed."""
    host = wire.require_str(payload, "host", max_len=MAX_HOST_CHARS).strip().strip("[]")
    if not _HOST_RE.fullmatch(host):
        raise wire.BadFieldType("payload field 'host' must be a host name or address", "host")
    port = payload.get("port")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    port = wire.require_int({"port": port}, "port", minimum=1, maximum=65535)
    pubkey = wire.require_str(payload, "pubkey", max_len=16384, allow_empty=True)  # "" is a BAD_KEY
    return host, port, pubkey


def _says_it_acks(payload: dict[str, Any]) -> bool:
    """True if a server's own {host, port, pubkey} payload lists the ``deliver-ack`` extension."""
    ext = payload.get("ext")
    return isinstance(ext, list) and EXT_DELIVER_ACK in ext


def _note_ext(known: Any, payload: dict[str, Any]) -> None:
    """Record on ``known`` (a KnownServer) the extensions its own payload lists in ``ext``."""
    ext = payload.get("ext")
    ext = ext if isinstance(ext, list) else []
    known.acks = EXT_DELIVER_ACK in ext
    known.link_sets = EXT_LINK_SET in ext


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def envelope_list(payload: dict[str, Any], name: str) -> list[Any]:
    """``payload[name]`` if it is a list, else ``[]`` (tolerant reading of SERVER_WELCOME)."""
    value = payload.get(name)
    return value if isinstance(value, list) else []
