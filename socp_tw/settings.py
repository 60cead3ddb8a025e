"""Server settings built from ``twistd socp`` option values: its limits and peer TLS policy.

Plain values in, the objects the services take out, so that ``tap.Options`` only
validates and ``makeService`` only wires.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from socp_tw import tls
from socp_tw.limits import DEFAULT_LIMITS, Limits


def server_limits(
    max_frame_bytes: int, ts_window: float, identify_timeout: float, base: Limits = DEFAULT_LIMITS
) -> Limits:
    """``base`` with these option values, and what follows from them.

    Message ids are remembered for at least twice the ``ts`` window (a replay the
    window still admits is caught), and the login deadline is never shorter than the
    deadline for the first frame.
    """
    return replace(
        base,
        max_frame_bytes=max_frame_bytes,
        ts_window=ts_window,
        seen_ids_ttl=max(base.seen_ids_ttl, 2 * ts_window),
        identify_timeout=identify_timeout,
        auth_timeout=max(base.auth_timeout, identify_timeout),
    )


def peer_tls_policy(
    listen_scheme: str,
    peers: Iterable[tuple[str, str, int]],
    *,
    ca_file: str | None = None,
    pins: dict[str, list[str]] | None = None,
    pin_only: bool = False,
) -> tls.PeerTLS:
    """How to dial peers, checked now: ``peers`` are the ``--peer`` (scheme, host, port)s.

    Peers with no scheme of their own (gossip, bootstrap) speak TLS when we listen on
    ``wss://``. Raises :class:`tls.TLSConfigError` for bad pins or an unreadable CA file.
    """
    peers = list(peers)
    policy = tls.PeerTLS(
        default=listen_scheme == "wss",
        ca_file=ca_file,
        pins=pins,
        pin_only=pin_only,
        tls_addresses=[(host, port) for scheme, host, port in peers if scheme == "wss"],
        plain_addresses=[(host, port) for scheme, host, port in peers if scheme == "ws"],
    )
    policy.check()
    return policy
