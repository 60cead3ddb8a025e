"""``socp-client`` over ``wss://``: --tls-ca, --server-pin, --pin-only.

Option checks, the wording of TLS failures, and end to end against real ``wss://``
servers on 127.0.0.1 with a throw-away PKI made at test time (socp_tw.test.tls_certs).
Clients are built from parsed options by :func:`app_from_options`, as ``main`` does.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionLost
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from socp_tw import tls
from socp_tw.auth.scrypt import TEST_SCRYPT
from socp_tw.client.app import app_from_options
from socp_tw.client.connection import tls_failure_reason
from socp_tw.client.options import Options
from socp_tw.test import tls_certs
from socp_tw.test.keys import test_key
from socp_tw.test.servers import RunningServer
from socp_tw.test.tls_certs import shared_pki, write_pem
from socp_tw.test.ui import PASSWORD, RecordingUI
from socp_tw.test.waiting import wait_until

WSS = "wss://127.0.0.1:8443"
HEX_PIN = "ab" * 32


class _Files:
    """The test PKI's certificates, keys and CA in files under ``base``."""

    def __init__(self, base: Path) -> None:
        pki = shared_pki()
        self.ca = write_pem(base / "ca.pem", pki.root.cert_pem)
        self.cert = write_pem(base / "cert.pem", pki.server.cert_pem)
        self.key = write_pem(base / "key.pem", pki.server.key_pem)
        self.pin = tls.spki_pin(pki.server.cert_pem)
        # A self-signed certificate that names neither localhost nor 127.0.0.1.
        self_signed = tls_certs._issue(
            "chat.invalid",
            ec.generate_private_key(ec.SECP256R1()),
            None,
            False,
            (x509.DNSName("chat.invalid"),),
        )
        self.self_signed_cert = write_pem(base / "self.pem", self_signed.cert_pem)
        self.self_signed_key = write_pem(base / "self-key.pem", self_signed.key_pem)
        self.self_signed_pin = tls.spki_pin(self_signed.cert_pem)
        # Signed by the test CA, but for another name.
        elsewhere = tls_certs._issue(
            "elsewhere.invalid",
            ec.generate_private_key(ec.SECP256R1()),
            pki.root,
            False,
            (x509.DNSName("elsewhere.invalid"), x509.IPAddress(ipaddress.ip_address("127.0.0.2"))),
        )
        self.elsewhere_cert = write_pem(base / "elsewhere.pem", elsewhere.cert_pem)
        self.elsewhere_key = write_pem(base / "elsewhere-key.pem", elsewhere.key_pem)


class OptionTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(self.mktemp())
        self.base.mkdir(parents=True)
        self.pins_file = str(self.base / "pins.json")
        self.files = _Files(self.base / "pki")

    def parse(self, *args: str) -> Options:
        config = Options()
        config.parseOptions(["--download-dir", str(self.base), "--pins-file", self.pins_file, *args])
        return config

    def refused(self, *args: str) -> str:
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(*args)
        return str(caught.exception)

    def test_tls_options_need_a_wss_server(self) -> None:
        for extra in (
            ["--tls-ca", self.files.ca],
            ["--server-pin", self.files.pin],
            ["--server-pin", self.files.pin, "--pin-only"],
        ):
            message = self.refused("--server", "ws://127.0.0.1:8765", *extra)
            self.assertEqual(message, "--tls-ca, --server-pin and --pin-only need a wss:// --server")

    def test_pin_only_needs_a_pin_and_no_ca(self) -> None:
        self.assertEqual(
            self.refused("--server", WSS, "--pin-only"), "--pin-only needs at least one --server-pin"
        )
        message = self.refused(
            "--server", WSS, "--pin-only", "--server-pin", self.files.pin, "--tls-ca", self.files.ca
        )
        self.assertIn("--tls-ca and --pin-only exclude each other", message)

    def test_bad_pins(self) -> None:
        for pin in ("sha256/not*base64", "sha256/" + "A" * 20, "ab" * 31, "md5/abc", ""):
            message = self.refused("--server", WSS, "--server-pin", pin)
            self.assertTrue(message.startswith("--server-pin: SPKI pin "), message)

    def test_unreadable_or_garbled_ca_file(self) -> None:
        missing = str(self.base / "missing.pem")
        message = self.refused("--server", WSS, "--tls-ca", missing)
        self.assertTrue(message.startswith(f"--tls-ca: cannot read TLS CA file {missing!r}"), message)
        garbled = write_pem(self.base / "garbled.pem", b"-----BEGIN CERTIFICATE-----\nnot base64\n")
        message = self.refused("--server", WSS, "--tls-ca", garbled)
        self.assertEqual(message, f"--tls-ca: TLS CA file {garbled!r} holds no PEM certificate")
        key_only = write_pem(self.base / "key-only.pem", shared_pki().server.key_pem)
        self.assertIn("holds no PEM certificate", self.refused("--server", WSS, "--tls-ca", key_only))

    def test_good_options(self) -> None:
        plain = self.parse("--server", "ws://127.0.0.1:8765")
        self.assertIsNone(plain["tls-context"])
        default = self.parse("--server", WSS)
        self.assertIsNotNone(default["tls-context"])
        self.assertEqual((default["tls-ca"], default["server-pin"], default["pin-only"]), (None, [], 0))
        config = self.parse(
            "--server",
            WSS,
            "--tls-ca",
            self.files.ca,
            "--server-pin",
            self.files.pin,
            "--server-pin",
            HEX_PIN,
        )
        self.assertEqual(config["tls-ca"], self.files.ca)
        self.assertEqual(config["server-pin"], [self.files.pin, HEX_PIN])
        self.assertIsNotNone(config["tls-context"])
        pinned = self.parse("--server", WSS, "--server-pin", f" {self.files.pin} ", "--pin-only")
        self.assertEqual((pinned["server-pin"], pinned["pin-only"]), ([self.files.pin], 1))

    def test_unusable_host_name_is_a_usage_error(self) -> None:
        message = self.refused("--server", "wss://-bad-.example:443")
        self.assertTrue(message.startswith("--server: "), message)


class FailureReasonTests(SynchronousTestCase):
    """The reason shown in ``[DISCONNECTED] cannot connect to URL (REASON)`` for each TLS failure."""

    def test_reasons(self) -> None:
        mismatch = tls.SPKIPinMismatch("127.0.0.1: certificate key sha256/abc matches no pin")
        self.assertEqual(
            tls_failure_reason(Failure(mismatch), "127.0.0.1"),
            "TLS: 127.0.0.1: certificate key sha256/abc matches no pin (--server-pin)",
        )
        untrusted = SSL.Error([("SSL routines", "", "certificate verify failed")])
        self.assertEqual(
            tls_failure_reason(Failure(untrusted), "127.0.0.1"),
            "TLS: the server's certificate is not trusted (certificate verify failed); "
            "see --tls-ca and --server-pin",
        )
        other = SSL.Error([("SSL routines", "", "wrong version number")])
        self.assertEqual(
            tls_failure_reason(Failure(other), "h"), "TLS handshake failed: wrong version number"
        )
        self.assertIsNone(tls_failure_reason(Failure(ConnectionLost("gone")), "h"))


class EndToEndTests(TestCase):
    """A real client (options -> app -> connection) against a real wss:// server on 127.0.0.1."""

    timeout = 60

    def setUp(self) -> None:
        self.base = Path(self.mktemp())
        self.base.mkdir(parents=True)
        self.files = _Files(self.base / "pki")

    def start_server(self, cert: str, key: str) -> RunningServer:
        server = RunningServer(
            self, 0, extra_args=["--bind", "wss://127.0.0.1:0", "--tls-cert", cert, "--tls-key", key]
        )
        self.addCleanup(server.stop)
        self.assertTrue(server.url.startswith("wss://127.0.0.1:"), server.url)
        return server

    def start_client(self, server: RunningServer, *args: str):
        config = Options()
        config.parseOptions(
            ["--server", server.url, "--download-dir", str(self.base), "--pins-file", self.mktemp(), *args]
        )
        ui = RecordingUI()
        app = app_from_options(
            config,
            ui,
            reactor,
            scrypt_params=TEST_SCRYPT,
            key_factory=lambda: test_key(1),
            retry_policy=lambda attempt: 0.1,
        )
        app.startService()
        self.addCleanup(app.quit)
        return app, ui

    @inlineCallbacks
    def refused(self, server: RunningServer, *args: str):
        """Start a client that must not connect; return its first ``cannot connect`` reason."""
        app, ui = self.start_client(server, *args)
        prefix = f"[DISCONNECTED] cannot connect to {server.url} ("
        line = yield wait_until(
            lambda: ui.find("^" + prefix.replace("[", r"\[").replace("(", r"\(")), what="refusal"
        )
        self.assertIsNone(ui.find(r"^\[CONNECTED\]"), ui.lines)
        self.assertIsNone(app.connection.protocol)
        return line[len(prefix) : line.rindex("); retrying in ")]

    @inlineCallbacks
    def test_tls_ca_connects_and_logs_in(self):
        server = self.start_server(self.files.cert, self.files.key)
        app, ui = self.start_client(server, "--tls-ca", self.files.ca)
        yield app.connection.when_open()
        ui.passwords.extend([PASSWORD, PASSWORD])
        yield app.session.register()
        self.assertIsNotNone(ui.find(r"^\[LOGIN SUCCESS\] "), ui.lines)
        self.assertIn(f"[CONNECTED] {server.url}", ui.lines)

    @inlineCallbacks
    def test_tls_ca_and_the_right_pin_connect(self):
        server = self.start_server(self.files.cert, self.files.key)
        app, ui = self.start_client(server, "--tls-ca", self.files.ca, "--server-pin", self.files.pin)
        yield app.connection.when_open()
        self.assertIn(f"[CONNECTED] {server.url}", ui.lines)

    @inlineCallbacks
    def test_pin_only_connects_to_a_self_signed_server(self):
        server = self.start_server(self.files.self_signed_cert, self.files.self_signed_key)
        app, ui = self.start_client(server, "--server-pin", self.files.self_signed_pin, "--pin-only")
        yield app.connection.when_open()
        self.assertIn(f"[CONNECTED] {server.url}", ui.lines)

    @inlineCallbacks
    def test_wrong_pin_is_refused(self):
        server = self.start_server(self.files.cert, self.files.key)
        reason = yield self.refused(server, "--tls-ca", self.files.ca, "--server-pin", HEX_PIN)
        self.assertEqual(
            reason, f"TLS: 127.0.0.1: certificate key {self.files.pin} matches no pin (--server-pin)"
        )

    @inlineCallbacks
    def test_wrong_pin_is_refused_with_pin_only(self):
        server = self.start_server(self.files.self_signed_cert, self.files.self_signed_key)
        reason = yield self.refused(server, "--server-pin", self.files.pin, "--pin-only")
        self.assertEqual(
            reason,
            f"TLS: 127.0.0.1: certificate key {self.files.self_signed_pin} matches no pin (--server-pin)",
        )

    @inlineCallbacks
    def test_private_ca_is_not_trusted_without_tls_ca(self):
        server = self.start_server(self.files.cert, self.files.key)
        reason = yield self.refused(server)
        self.assertEqual(
            reason,
            "TLS: the server's certificate is not trusted (certificate verify failed); "
            "see --tls-ca and --server-pin",
        )

    @inlineCallbacks
    def test_self_signed_is_not_trusted_with_a_pin_but_no_pin_only(self):
        server = self.start_server(self.files.self_signed_cert, self.files.self_signed_key)
        reason = yield self.refused(server, "--server-pin", self.files.self_signed_pin)
        self.assertIn("is not trusted (certificate verify failed)", reason)

    @inlineCallbacks
    def test_hostname_mismatch_is_refused(self):
        server = self.start_server(self.files.elsewhere_cert, self.files.elsewhere_key)
        reason = yield self.refused(server, "--tls-ca", self.files.ca)
        self.assertEqual(reason, "TLS: the server's certificate is not valid for 127.0.0.1")
        # Also with a matching pin: only --pin-only waives the name check.
        elsewhere_pin = tls.spki_pin(Path(self.files.elsewhere_cert).read_bytes())
        reason = yield self.refused(server, "--tls-ca", self.files.ca, "--server-pin", elsewhere_pin)
        self.assertEqual(reason, "TLS: the server's certificate is not valid for 127.0.0.1")
