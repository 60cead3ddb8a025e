"""The server key book (services/mesh/pins.py): bootstrap pins and peers.json across restarts."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import crypto, wire
from socp_tw.bootstrap import BootstrapEntry
from socp_tw.services.mesh import PEERS_FILE, PinStoreError
from socp_tw.test.keys import test_key
from socp_tw.test.services.mesh.support import (
    HERE,
    KEYS,
    S1,
    S2,
    Node,
    pub,
)
from socp_tw.testing import FakeLink


class BootstrapPinTests(SynchronousTestCase):
    def test_bootstrap_address_key_is_enforced(self) -> None:
        clock = Clock()
        entry = BootstrapEntry("127.0.0.1", 9101, pub(S1), test_key(KEYS[S1]).public_key())
        node = Node(self, HERE, clock, bootstrap=[entry])
        # The introducer is dialled with SERVER_HELLO_JOIN...
        [dialer] = node.outgoing.dialers
        self.assertEqual(
            (dialer.host, dialer.port, dialer.join, dialer.resumed), ("127.0.0.1", 9101, True, [0.0])
        )
        # ...and nobody else may claim its address with another key.
        link = FakeLink("in-1")
        node.hub.link_opened(link)
        payload = {"host": "127.0.0.1", "port": 9101, "pubkey": pub(S2)}
        sig = crypto.sign_payload(test_key(KEYS[S2]), payload)
        node.hub.frame_received(link, wire.Envelope("SERVER_HELLO_LINK", S2, HERE, 1, payload, sig))
        self.assertEqual(link.closed[0], 1008)

    def test_bootstrap_server_id_is_pinned_in_advance(self) -> None:
        entry = BootstrapEntry("127.0.0.1", 9101, pub(S1), test_key(KEYS[S1]).public_key(), S1)
        node = Node(self, HERE, Clock(), bootstrap=[entry])
        self.assertEqual(crypto.encode_public_key(node.mesh.server_key(S1)), pub(S1))


class PinPersistenceTests(SynchronousTestCase):
    def test_pins_survive_a_restart(self) -> None:
        data_dir = Path(self.mktemp())
        data_dir.mkdir()
        clock = Clock()
        node = Node(self, HERE, clock, data_dir=data_dir)
        link = FakeLink("in-1")
        node.hub.link_opened(link)
        payload = {"host": "127.0.0.1", "port": 9101, "pubkey": pub(S1)}
        sig = crypto.sign_payload(test_key(KEYS[S1]), payload)
        node.hub.frame_received(
            link, wire.Envelope("SERVER_HELLO_LINK", S1, HERE, node.now_ms(), payload, sig)
        )
        path = data_dir / PEERS_FILE
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        stored = json.loads(path.read_text())["servers"][S1]
        self.assertEqual((stored["pubkey"], stored["port"], stored["linked"]), (pub(S1), 9101, True))
        # A new process: the pin and the address are back, and the server is redialled.
        again = Node(self, HERE, clock, data_dir=data_dir)
        self.assertEqual(crypto.encode_public_key(again.mesh.server_key(S1)), pub(S1))
        [dialer] = again.outgoing.for_server(S1)
        self.assertEqual((dialer.port, dialer.join, dialer.resumed), (9101, False, [0.0]))

    def test_corrupt_pins_stop_the_start(self) -> None:
        data_dir = Path(self.mktemp())
        data_dir.mkdir()
        (data_dir / PEERS_FILE).write_text("{not json")
        with self.assertRaises(PinStoreError):
            Node(self, HERE, Clock(), data_dir=data_dir)
        (data_dir / PEERS_FILE).write_text(json.dumps({"servers": {S1: {"pubkey": "weak"}}}))
        with self.assertRaises(PinStoreError):
            Node(self, HERE, Clock(), data_dir=data_dir)
