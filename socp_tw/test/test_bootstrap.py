"""The bootstrap file (bootstrap.py): YAML or JSON, errors naming the entry."""

from __future__ import annotations

import json

from twisted.trial.unittest import SynchronousTestCase

from socp_tw.bootstrap import BootstrapError, load_bootstrap, parse_bootstrap
from socp_tw.test.services.mesh.support import (
    S1,
    S2,
    pub,
)


class BootstrapFileTests(SynchronousTestCase):
    def test_yaml_and_json(self) -> None:
        yaml_text = f"- host: 127.0.0.1\n  port: 8765\n  pubkey: {pub(S1)}\n  server_id: {S1}\n"
        [entry] = parse_bootstrap(yaml_text)
        self.assertEqual(
            (entry.host, entry.port, entry.server_id, entry.url),
            ("127.0.0.1", 8765, S1, "ws://127.0.0.1:8765"),
        )
        json_text = json.dumps({"servers": [{"host": "::1", "port": "8766", "pubkey": pub(S2)}]})
        [entry] = parse_bootstrap(json_text)
        self.assertEqual(
            (entry.host, entry.port, entry.server_id, entry.url), ("::1", 8766, None, "ws://[::1]:8766")
        )

    def test_errors_name_the_entry(self) -> None:
        for text, message in (
            ("{{{", "not valid YAML"),
            ("just a string", "must hold a list"),
            ("- 5", "entry 0 must be a mapping"),
            (f"- {{host: h, port: 0, pubkey: {pub(S1)}}}", "entry 0: 'port'"),
            ("- {host: h, port: 1, pubkey: nope}", "entry 0: 'pubkey' is unusable"),
            (f"- {{host: h, port: 1, pubkey: {pub(S1)}, server_id: x}}", "'server_id' must be a UUID"),
            (
                f"- {{host: h, port: 1, pubkey: {pub(S1)}}}\n- {{host: h, port: 1, pubkey: {pub(S2)}}}",
                "two keys",
            ),
        ):
            with self.assertRaises(BootstrapError) as caught:
                parse_bootstrap(text)
            self.assertIn(message, str(caught.exception))

    def test_missing_file(self) -> None:
        with self.assertRaises(BootstrapError):
            load_bootstrap(self.mktemp())
