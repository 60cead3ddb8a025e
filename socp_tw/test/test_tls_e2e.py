"""Real servers over ``wss://`` on 127.0.0.1, with a test CA made during the run (no committed keys).

Listener: ``--bind wss://`` with ``--tls-cert``/``--tls-key``.  Peers: dialled over TLS,
verified against ``--tls-ca`` and the host name (service_identity), optionally pinned
(``--peer-pin``, ``--pin-only``).
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from socp_tw import crypto, tls, wire
from socp_tw.test.keys import test_key
from socp_tw.test.servers import MeshServer, reactor, settled
from socp_tw.test.tls_certs import shared_pki, write_pem
from socp_tw.test.waiting import wait_until
from socp_tw.testing import CollectingClientFactory, verify_server_frame


class TLSMeshTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        pki = shared_pki()
        base = Path(self.mktemp())
        self.files = {
            "cert": write_pem(base / "cert.pem", pki.server.cert_pem),
            "key": write_pem(base / "key.pem", pki.server.key_pem),
            "ca": write_pem(base / "ca.pem", pki.root.cert_pem),
            "other_ca": write_pem(base / "other-ca.pem", pki.other_root.cert_pem),
            "rogue_cert": write_pem(base / "rogue.pem", pki.rogue_server.cert_pem),
            "rogue_key": write_pem(base / "rogue-key.pem", pki.rogue_server.key_pem),
        }
        self.pin = tls.spki_pin(pki.server.cert_pem)
        self.rogue_pin = tls.spki_pin(pki.rogue_server.cert_pem)
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events]

    def server(self, key_index: int, *args: str, cert: str = "cert", key: str = "key") -> MeshServer:
        tls_args = ["--tls-cert", self.files[cert], "--tls-key", self.files[key]]
        return MeshServer(self, key_index, [*tls_args, *args], bind="wss://127.0.0.1:0")

    @inlineCallbacks
    def test_mesh_forms_over_tls_and_users_connect(self):
        a = self.server(0, "--tls-ca", self.files["ca"])
        self.assertTrue(a.url.startswith("wss://127.0.0.1:"))
        b = self.server(
            1, "--tls-ca", self.files["ca"], "--peer", a.url, "--peer-pin", f"127.0.0.1={self.pin}"
        )
        pair = [a, b]
        yield wait_until(lambda: settled(pair), pair, what="a mesh of two over wss://")
        lines = self.lines()
        self.assertIn(f"Connected to peer {a.url}", lines)
        self.assertTrue(any(line.startswith("TLS certificate CN=localhost loaded") for line in lines))
        # A user connects over wss:// (CA + name checked by the client) and says hello.
        client = yield self.connect(a.url, tls.client_context("127.0.0.1", self.files["ca"]))
        user_id = wire.new_uuid4()
        pubkey = crypto.encode_public_key(test_key(6))
        client.send(
            wire.encode_frame(
                "USER_HELLO", user_id, "*", wire.now_ms(), {"client": "t", "pubkey": pubkey}, ""
            )
        )
        ack = yield client.messages.get()
        self.assertEqual(ack["type"], "ACK", ack)
        self.assertTrue(verify_server_frame(ack, a.public_key_text))
        yield wait_until(lambda: b.presence.lookup(user_id) is not None, pair, what="the user known on B")

    @inlineCallbacks
    def test_plain_websocket_to_a_tls_port_fails(self):
        a = self.server(0)
        factory = CollectingClientFactory(a.url.replace("wss://", "ws://"))
        protocol = yield TCP4ClientEndpoint(reactor, "127.0.0.1", a.port).connect(factory)
        with self.assertRaises(ConnectionError):
            yield factory.opened
        protocol.transport.abortConnection()

    @inlineCallbacks
    def test_wrong_pin_is_refused(self):
        a = self.server(0, "--tls-ca", self.files["ca"])
        c = self.server(
            2,
            "--tls-ca",
            self.files["ca"],
            "--peer",
            a.url,
            "--peer-pin",
            f"127.0.0.1:{a.port}={self.rogue_pin}",
        )
        yield wait_until(
            lambda: any("matches none of its 1 pins" in line for line in self.lines()),
            [a, c],
            what="the pin mismatch",
        )
        self.assertEqual(c.mesh.connected_servers(), [])
        self.assertEqual(a.mesh.connected_servers(), [])
        self.assertEqual(a.mesh.known_servers(), [])

    @inlineCallbacks
    def test_untrusted_ca_is_refused(self):
        a = self.server(0, "--tls-ca", self.files["ca"])
        d = self.server(3, "--tls-ca", self.files["other_ca"], "--peer", a.url)
        dialer = d.outgoing.dialers[0]
        yield wait_until(lambda: dialer.failures >= 2, [a, d], what="two refused dials")
        self.assertEqual(d.mesh.connected_servers(), [])
        self.assertEqual(a.mesh.known_servers(), [])

    @inlineCallbacks
    def test_pin_only_accepts_a_certificate_no_ca_vouches_for(self):
        rogue = self.server(0, "--tls-ca", self.files["ca"], cert="rogue_cert", key="rogue_key")
        e = self.server(
            4,
            "--tls-ca",
            self.files["ca"],
            "--peer",
            rogue.url,
            "--peer-pin",
            f"127.0.0.1={self.rogue_pin}",
            "--pin-only",
        )
        # E reaches the rogue-certified server by its pin; the reverse dial (CA checked) fails.
        yield wait_until(
            lambda: rogue.server_id in e.mesh.connected_servers(), [rogue, e], what="pinned link"
        )

    def connect(self, url: str, context):
        """A raw user connection to ``url`` (wss://127.0.0.1:PORT) over TLS, closed at cleanup."""
        factory = CollectingClientFactory(url)
        port = int(url.rsplit(":", 1)[1])
        d = tls.client_endpoint(reactor, "127.0.0.1", port, context).connect(factory)

        def opened(protocol):
            self.addCleanup(self.close, factory, protocol)
            return factory.opened.addCallback(lambda _: factory)

        return d.addCallback(opened)

    @inlineCallbacks
    def close(self, factory, protocol):
        if not factory.closed.called:
            protocol.sendClose(1000)
            yield factory.closed
