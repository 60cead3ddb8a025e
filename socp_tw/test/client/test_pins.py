"""The TOFU pin file: first sight pins, a different key is "changed", atomic 0600 writes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import crypto, wire
from socp_tw.client.options import Options, default_pins_file, normalise_server_url
from socp_tw.client.pins import CHANGED, NEW, SAME, PinFileError, PinStore
from socp_tw.test.keys import test_key

USER = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"
SERVER_ID = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
URL = "ws://127.0.0.1:8765"


def pub(n: int) -> str:
    return crypto.encode_public_key(test_key(n))


class PinStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp()) / "nested" / "socp"
        self.path = self.dir / "pins.json"

    def test_first_sight_then_same_then_changed(self) -> None:
        pins = PinStore(self.path)
        check = pins.check_user(USER, pub(1))
        self.assertEqual(check.status, NEW)
        self.assertEqual(check.fingerprint, crypto.fingerprint(test_key(1)))
        self.assertIsNone(pins.user_key(USER))
        pins.pin_user(USER, pub(1))
        self.assertEqual(pins.check_user(USER, pub(1)).status, SAME)
        changed = pins.check_user(USER, pub(2))
        self.assertEqual(changed.status, CHANGED)
        self.assertEqual(changed.pinned_fingerprint, crypto.fingerprint(test_key(1)))
        self.assertEqual(changed.fingerprint, crypto.fingerprint(test_key(2)))

    def test_keys_compare_as_keys_not_text(self) -> None:
        pins = PinStore(self.path)
        pins.pin_user(USER, pub(1))
        pem_text = (
            test_key(1)
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        self.assertEqual(pins.check_user(USER, pem_text.decode()).status, SAME)
        self.assertEqual(pins.check_user(USER, wire.b64u_encode(pem_text)).status, SAME)
        self.assertEqual(pins.check_user(USER, pub(1) + "==").status, SAME)

    def test_bad_keys_are_refused(self) -> None:
        pins = PinStore(self.path)
        self.assertRaises(crypto.BadKey, pins.check_user, USER, "not a key")
        self.assertRaises(crypto.BadKey, pins.pin_user, USER, "AAAA")
        self.assertFalse(self.path.exists())

    def test_persisted_atomically_with_private_modes(self) -> None:
        pins = PinStore(self.path)
        pins.pin_user(USER, pub(1))
        pins.pin_server(URL, SERVER_ID, pub(0))
        self.assertEqual(stat.S_IMODE(os.stat(self.path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(self.dir).st_mode), 0o700)
        self.assertEqual(sorted(os.listdir(self.dir)), ["pins.json"])  # no temporary file left
        data = json.loads(self.path.read_text())
        self.assertEqual(data["version"], 1)
        self.assertEqual(data["users"][USER]["pubkey"], pub(1))
        self.assertEqual(data["users"][USER]["fingerprint"], crypto.fingerprint(test_key(1)))
        self.assertEqual(data["servers"][URL]["server_id"], SERVER_ID)

        reloaded = PinStore(self.path)
        self.assertEqual(reloaded.user_key(USER), pub(1))
        self.assertEqual(reloaded.user_fingerprint(USER), crypto.fingerprint(test_key(1)))
        self.assertEqual(reloaded.server(URL), (SERVER_ID, pub(0)))
        self.assertEqual(reloaded.check_server(URL, pub(0)).status, SAME)
        self.assertEqual(reloaded.check_server(URL, pub(3)).status, CHANGED)
        self.assertEqual(reloaded.check_server("ws://other:1", pub(0)).status, NEW)

    def test_repin_replaces(self) -> None:
        pins = PinStore(self.path)
        pins.pin_user(USER, pub(1))
        pins.pin_user(USER, pub(2))
        self.assertEqual(PinStore(self.path).check_user(USER, pub(2)).status, SAME)

    def test_failed_write_leaves_old_file(self) -> None:
        pins = PinStore(self.path)
        pins.pin_user(USER, pub(1))
        before = self.path.read_bytes()

        def broken_replace(src, dst):
            raise OSError("disk full")

        self.patch(os, "replace", broken_replace)
        self.assertRaises(OSError, pins.pin_user, USER, pub(2))
        self.assertEqual(self.path.read_bytes(), before)
        self.assertEqual(sorted(os.listdir(self.dir)), ["pins.json"])

    def test_corrupt_files_are_errors_not_overwritten(self) -> None:
        self.dir.mkdir(parents=True)
        cases = [
            b"{not json",
            b"\xff\xfe",
            b"[]",
            b'{"version": 2, "users": {}}',
            b'{"version": 1, "users": []}',
            b'{"version": 1, "users": {"x": {"pubkey": 5}}}',
            b'{"version": 1, "users": {"x": {"pubkey": "AAAA"}}}',
            json.dumps({"version": 1, "servers": {URL: {"pubkey": pub(0), "server_id": "nope"}}}).encode(),
        ]
        for raw in cases:
            self.path.write_bytes(raw)
            self.assertRaises(PinFileError, PinStore, self.path)
            self.assertEqual(self.path.read_bytes(), raw)

    def test_unreadable_file(self) -> None:
        self.path.mkdir(parents=True)  # a directory where the file should be
        self.assertRaises(PinFileError, PinStore, self.path)


class OptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_defaults_and_normalisation(self) -> None:
        options = self.parse("--server", "WS://LocalHost:8765/")
        self.assertEqual(options["server"], "ws://localhost:8765")
        self.assertEqual(options["download-dir"], ".")
        self.assertIsNone(options["password"])
        self.assertEqual(options["pins-file"], default_pins_file())
        self.assertEqual(normalise_server_url("ws://[::1]:80"), "ws://[::1]:80")

    def test_server_is_required_and_checked(self) -> None:
        self.assertRaises(usage.UsageError, self.parse)
        for bad in ("http://x:1", "ws://x", "ws://x:0", "ws://x:70000", "x:1"):
            self.assertRaises(usage.UsageError, self.parse, "--server", bad)

    def test_download_dir_must_exist(self) -> None:
        self.assertRaises(usage.UsageError, self.parse, "--server", URL, "--download-dir", self.mktemp())
        path = self.mktemp()
        os.mkdir(path)
        self.assertEqual(self.parse("--server", URL, "--download-dir", path)["download-dir"], path)

    def test_password_file(self) -> None:
        path = Path(self.mktemp())
        path.write_text("s3cret pass\r\nignored\n")
        self.assertEqual(self.parse("--server", URL, "--password-file", str(path))["password"], "s3cret pass")
        path.write_text("\n")
        self.assertRaises(usage.UsageError, self.parse, "--server", URL, "--password-file", str(path))
        self.assertRaises(usage.UsageError, self.parse, "--server", URL, "--password-file", self.mktemp())

    def test_pins_file_under_xdg(self) -> None:
        self.patch(os, "environ", {**os.environ, "XDG_CONFIG_HOME": "/tmp/xdg-test"})
        self.assertEqual(default_pins_file(), "/tmp/xdg-test/socp/pins.json")
        env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}
        self.patch(os, "environ", env)
        self.assertEqual(default_pins_file(), str(Path.home() / ".socp" / "pins.json"))
        self.assertEqual(self.parse("--server", URL, "--pins-file", "/x/p.json")["pins-file"], "/x/p.json")

    def test_main_reports_usage_errors(self) -> None:
        import io
        import sys

        from socp_tw.client import main

        stderr = io.StringIO()
        self.patch(sys, "stderr", stderr)
        self.assertEqual(main(["--server", "http://nope"]), 2)
        self.assertIn("socp-client: --server: 'http://nope' is not a ws://HOST:PORT URL", stderr.getvalue())
        self.assertIn("Usage:", stderr.getvalue())
