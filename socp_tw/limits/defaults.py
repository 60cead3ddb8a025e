"""Every resource limit of a server and its default, in one place: :class:`Limits`."""

from __future__ import annotations

from dataclasses import dataclass, fields

from socp_tw import wire

__all__ = ["DEFAULT_LIMITS", "Limits"]


@dataclass(frozen=True)
class Limits:
    """Every resource limit of a server, with its default. Rates are per second.

    docs/SECURITY.md lists these; services take a ``Limits`` instead of loose numbers.
    The payload-field bounds are checked where each field is parsed (``wire``,
    ``content``, the services); test_limits checks that those constants agree with
    the values here.
    """

    # -- frames and payload fields
    max_frame_bytes: int = wire.MAX_FRAME_BYTES  # largest WebSocket message accepted (bytes)
    max_json_depth: int = wire.MAX_DEPTH  # deepest JSON nesting inside a frame
    max_ciphertext_chars: int = 1024  # one RSA-4096 OAEP block in b64u (683 chars) with slack
    max_pubkey_chars: int = 16384  # a public key as text (b64u DER or PEM)
    max_sig_chars: int = 2048  # a b64u RSA-4096 signature is 683 chars
    max_meta_bytes: int = 4096  # a user's meta object, as canonical JSON
    max_client_name_chars: int = 128  # USER_HELLO "client" string
    max_file_name_chars: int = 1024  # FILE_START name
    max_file_id_chars: int = 128  # FILE_* file_id
    max_error_detail_chars: int = 512  # detail of an ERROR we send (longer ones are cut)
    frame_timeout: float = 30.0  # seconds a started WebSocket frame (fragmented message) may take to arrive

    # -- per-connection limits (user links, before and after login; the hub)
    conn_rate: float = 50.0  # frames per second, sustained, per connection
    conn_burst: float = 200.0  # frames a connection may send at once (a 64-part DM, 100 key lookups)
    conn_strike_limit: int = 20  # rate-limited frames within conn_strike_window that close the link
    conn_strike_window: float = 10.0  # seconds a rate-limit strike counts
    max_fanout: int = 1024  # MSG_PUBLIC_CHANNEL frames of one message (same ts) charged as one frame
    identify_timeout: float = 30.0  # seconds a new connection has to send its identifying first frame
    auth_timeout: float = 300.0  # seconds a connection may stay unauthenticated (login in progress)
    error_rate: float = 20.0  # ERROR frames per second signed for one user connection; more are dropped
    error_burst: float = 100.0  # ERROR frames one user connection may be sent at once
    max_connections: int = 10_000  # open WebSocket connections (users + servers + pending)
    max_pending_connections: int = 1000  # connections not yet authenticated (hello/login in progress)
    max_pending_per_address: int = 250  # of those, from one address (IPv4, IPv6 /64); NAT'd users share one
    max_unidentified_per_address: int = 100  # connections from one address with no identifying frame yet

    # -- per-user limits
    user_rate: float = 20.0  # frames per second, sustained, per logged-in user (all their links)
    user_burst: float = 200.0  # frames a user may send at once
    max_local_users: int = 10_000  # users connected here at once (max_connections bounds it; sizes tables)

    # -- login (PROTOCOL-EXTENSIONS.md §4, §5)
    login_free_failures: int = 3  # consecutive wrong proofs before the lockout starts
    login_lockout_max: float = 900.0  # seconds; the f-th failure locks for min(2**(f-4), this)
    login_attempt_ttl: float = 60.0  # seconds an SRP attempt (USER_LOGIN_START state) stays valid
    hello_nonce_ttl: float = 60.0  # seconds a USER_HELLO nonce stays valid
    max_auth_attempts: int = 32  # registrations, login starts, nonce requests and hellos per connection
    max_login_failure_entries: int = 100_000  # user ids with a failure counter kept in memory

    # -- per-peer (server link) limits
    peer_rate: float = 2000.0  # frames per second, sustained, per server link (faster: read slower)
    peer_burst: float = 4000.0  # frames a peer may send at once
    max_peers: int = 1000  # servers remembered (pinned keys and addresses)
    max_remote_users: int = 100_000  # presence entries learnt from other servers
    max_gossip_user_pins: int = 200_000  # user keys pinned from other servers' adverts (docs/SECURITY.md)
    delivery_timeout: float = 10.0  # seconds a DM sent to another server may wait for its delivery ACK
    max_pending_deliveries: int = 100_000  # DMs sent to other servers awaiting their ACK
    max_unknown_type_replies: int = 64  # distinct unknown frame types answered per server link
    forged_limit: int = 10  # frames with bad signatures within forged_window that cut a server link
    forged_window: float = 60.0  # seconds a bad signature counts against its link

    # -- replay protection
    ts_window: float = 300.0  # seconds user content ts may differ from our clock (±)
    seen_ids_max: int = 100_000  # entries in each seen_ids cache (user content; server frames)
    seen_ids_ttl: float = 600.0  # seconds an entry stays in seen_ids (>= 2 * ts_window)

    # -- queues and buffers
    max_send_queue: int = 20_000  # frames waiting to be written to one link before it is closed
    max_send_queue_bytes: int = 32 * 1024 * 1024  # bytes buffered for one link before it is closed
    max_backlog: int = 128  # frames of one user link waiting behind a slow one (more: RATE_LIMITED)
    max_cached_adverts: int = 10_000  # USER_ADVERTISE frames replayed to a user after its hello

    # -- files
    max_file_bytes: int = 64 * 1024 * 1024  # FILE_START size
    max_transfers_per_user: int = 4  # concurrent FILE_START..FILE_END per sending user
    transfer_idle_timeout: float = 120.0  # seconds without a chunk before a transfer is dropped

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise ValueError(f"limit {field.name} must be a positive number, not {value!r}")
        if self.conn_burst < 1 or self.user_burst < 1 or self.peer_burst < 1:
            raise ValueError("bursts must allow at least one frame")
        if self.seen_ids_ttl < 2 * self.ts_window:
            raise ValueError(
                "seen_ids_ttl must be >= 2 * ts_window, or a replayed frame can outlive its seen_ids entry"
            )

    @property
    def ts_window_ms(self) -> int:
        """:attr:`ts_window` in milliseconds, for :func:`check_ts_window`."""
        return round(self.ts_window * 1000)


#: The defaults, for code that has no configuration of its own.
DEFAULT_LIMITS = Limits()
