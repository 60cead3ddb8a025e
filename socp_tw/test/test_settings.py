"""The limits and peer TLS policy built from option values."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from socp_tw import tls
from socp_tw.limits import DEFAULT_LIMITS
from socp_tw.settings import peer_tls_policy, server_limits


class ServerLimitsTests(SynchronousTestCase):
    def test_defaults_give_the_default_limits(self) -> None:
        self.assertEqual(
            server_limits(
                DEFAULT_LIMITS.max_frame_bytes, DEFAULT_LIMITS.ts_window, DEFAULT_LIMITS.identify_timeout
            ),
            DEFAULT_LIMITS,
        )

    def test_what_follows_from_the_values(self) -> None:
        limits = server_limits(4096, DEFAULT_LIMITS.seen_ids_ttl, DEFAULT_LIMITS.auth_timeout + 1)
        self.assertEqual(limits.max_frame_bytes, 4096)
        self.assertEqual(limits.seen_ids_ttl, 2 * DEFAULT_LIMITS.seen_ids_ttl)
        self.assertEqual(limits.auth_timeout, limits.identify_timeout)
        short = server_limits(4096, 1.0, 1.0)
        self.assertEqual(
            (short.seen_ids_ttl, short.auth_timeout),
            (DEFAULT_LIMITS.seen_ids_ttl, DEFAULT_LIMITS.auth_timeout),
        )


class PeerTLSPolicyTests(SynchronousTestCase):
    def test_schemes(self) -> None:
        policy = peer_tls_policy("ws", [("wss", "a.example", 1), ("ws", "b.example", 2)])
        self.assertEqual((policy.scheme("a.example", 1), policy.scheme("b.example", 2)), ("wss", "ws"))
        self.assertEqual(policy.scheme("gossip.example", 3), "ws")
        self.assertEqual(peer_tls_policy("wss", []).scheme("gossip.example", 3), "wss")

    def test_checked_now(self) -> None:
        e = self.assertRaises(tls.TLSConfigError, peer_tls_policy, "ws", [], pin_only=True)
        self.assertIn("--pin-only needs", str(e))
        self.assertRaises(tls.TLSConfigError, peer_tls_policy, "ws", [], pins={"a.example": ["nope"]})
