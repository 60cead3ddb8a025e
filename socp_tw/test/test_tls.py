"""socp_tw.tls: config errors, pins, and real wss:// handshakes on loopback with a test-time PKI."""

from __future__ import annotations

import base64
import hashlib
import os

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto
from service_identity import VerificationError
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IOpenSSLServerConnectionCreator
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from socp_tw import tls
from socp_tw.test.tls_certs import PKI, Issued, shared_pki, write_pem

PING = b"ping over tls"


def _pin(issued: Issued) -> str:
    return tls.spki_pin(issued.cert_pem)


class _Files:
    """PEM files of the test PKI under one temp directory."""

    def __init__(self, base: str, pki: PKI) -> None:
        def path(name: str) -> str:
            return os.path.join(base, name)

        self.root_ca = write_pem(path("root.pem"), pki.root.cert_pem)
        self.other_ca = write_pem(path("other.pem"), pki.other_root.cert_pem)
        self.both_cas = write_pem(path("both.pem"), pki.other_root.cert_pem, pki.root.cert_pem)
        self.server_cert = write_pem(path("server.pem"), pki.server.cert_pem)
        self.server_key = write_pem(path("server.key"), pki.server.key_pem)
        self.chained_cert = write_pem(path("chained.pem"), pki.chained_server.cert_pem)
        self.chained_full = write_pem(
            path("chained-full.pem"), pki.chained_server.cert_pem, pki.intermediate.cert_pem
        )
        self.chained_key = write_pem(path("chained.key"), pki.chained_server.key_pem)
        self.intermediate = write_pem(path("intermediate.pem"), pki.intermediate.cert_pem)
        self.rogue_cert = write_pem(path("rogue.pem"), pki.rogue_server.cert_pem)
        self.rogue_key = write_pem(path("rogue.key"), pki.rogue_server.key_pem)


# -- pins and helpers ---------------------------------------------------------------------------------


class PinTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = shared_pki()
        cert = self.pki.server.cert
        self.der = cert.public_bytes(serialization.Encoding.DER)
        # Independent computation through pyOpenSSL's own SPKI encoder.
        spki = crypto.dump_publickey(
            crypto.FILETYPE_ASN1, crypto.load_certificate(crypto.FILETYPE_ASN1, self.der).get_pubkey()
        )
        self.digest = hashlib.sha256(spki).digest()

    def test_spki_sha256_pem_and_der(self) -> None:
        self.assertEqual(tls.spki_sha256(self.pki.server.cert_pem), self.digest.hex())
        self.assertEqual(tls.spki_sha256(self.der), self.digest.hex())

    def test_spki_sha256_is_the_key_not_the_certificate(self) -> None:
        self.assertNotEqual(tls.spki_sha256(self.der), hashlib.sha256(self.der).hexdigest())
        self.assertNotEqual(tls.spki_sha256(self.pki.rogue_server.cert_pem), self.digest.hex())

    def test_spki_sha256_garbage(self) -> None:
        self.assertRaises(tls.TLSConfigError, tls.spki_sha256, b"-----BEGIN CERTIFICATE-----\nnope\n")
        self.assertRaises(tls.TLSConfigError, tls.spki_sha256, b"\x30\x03\x02\x01\x00")

    def test_parse_pin_forms(self) -> None:
        b64 = base64.b64encode(self.digest).decode()
        url = base64.urlsafe_b64encode(self.digest).decode()
        hex_digest = self.digest.hex()
        forms = [
            tls.spki_pin(self.pki.server.cert_pem),
            "sha256/" + b64,
            "SHA256/" + b64,
            "sha256//" + b64,  # curl --pinnedpubkey
            "sha256/" + b64.rstrip("="),
            "sha256/" + url,
            f"  sha256/{b64}\n",
            hex_digest,
            hex_digest.upper(),
            ":".join(hex_digest[i : i + 2] for i in range(0, 64, 2)),
        ]
        for form in forms:
            self.assertEqual(tls.parse_pin(form), self.digest, form)
        self.assertEqual(tls.format_pin(self.digest), "sha256/" + b64)

    def test_parse_pin_base64_starting_with_slash(self) -> None:
        """A digest whose base64 starts with "/" is not mistaken for curl's "sha256//" form."""
        digest = bytes([0xFC]) + bytes(range(31))
        b64 = base64.b64encode(digest).decode()
        self.assertTrue(b64.startswith("/"))
        for text in ("sha256/" + b64, "sha256//" + b64, "sha256/" + b64.rstrip("=")):
            self.assertEqual(tls.parse_pin(text), digest)

    def test_parse_pin_rejects(self) -> None:
        short = base64.b64encode(self.digest[:20]).decode()
        for bad in [
            "",
            "sha256/",
            "sha256/!!!!",
            "sha1/" + short,
            "sha256/" + short,
            "ab" * 31,
            "ab" * 33,
            "zz" * 32,
        ]:
            with self.assertRaises(tls.TLSConfigError, msg=bad) as caught:
                tls.parse_pin(bad)
            self.assertIn("pin", str(caught.exception))
        self.assertRaises(tls.TLSConfigError, tls.parse_pin, self.digest)


# -- configuration errors -----------------------------------------------------------------------------


class ServerConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = shared_pki()
        self.base = self.mktemp()
        self.files = _Files(self.base, self.pki)

    def assertConfigError(self, fragment: str, *args: str | None) -> str:
        with self.assertRaises(tls.TLSConfigError) as caught:
            tls.server_context_factory(*args)
        message = str(caught.exception)
        self.assertIn(fragment, message)
        return message

    def test_valid_files(self) -> None:
        options = tls.server_context_factory(self.files.server_cert, self.files.server_key)
        self.assertTrue(verifyObject(IOpenSSLServerConnectionCreator, options))

    def test_tls_1_2_minimum(self) -> None:
        context = tls.server_context_factory(self.files.server_cert, self.files.server_key).getContext()
        current = context.set_options(0)  # adds nothing, returns the options in force
        self.assertTrue(current & SSL.OP_NO_TLSv1)
        self.assertTrue(current & SSL.OP_NO_TLSv1_1)
        self.assertFalse(current & SSL.OP_NO_TLSv1_2)

    def test_logs_subject_and_pin(self) -> None:
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        tls.server_context_factory(self.files.server_cert, self.files.server_key)
        lines = [formatEvent(e) for e in events if e.get("log_namespace") == "socp_tw.tls"]
        self.assertEqual(len(lines), 1, lines)
        self.assertIn("CN=localhost", lines[0])
        self.assertIn(_pin(self.pki.server), lines[0])
        self.assertNotIn("PRIVATE", lines[0])

    def test_missing_files(self) -> None:
        missing = os.path.join(self.base, "nope.pem")
        message = self.assertConfigError("cannot read TLS certificate file", missing, self.files.server_key)
        self.assertIn(missing, message)
        self.assertIn("No such file", message)
        self.assertConfigError("cannot read TLS key file", self.files.server_cert, missing)
        self.assertConfigError(
            "cannot read TLS chain file", self.files.server_cert, self.files.server_key, missing
        )
        self.assertConfigError("cannot read TLS certificate file", self.base, self.files.server_key)

    def test_garbage_files(self) -> None:
        garbage = write_pem(os.path.join(self.base, "garbage"), b"hello, not PEM\n")
        empty = write_pem(os.path.join(self.base, "empty"), b"")
        self.assertConfigError("holds no PEM certificate", garbage, self.files.server_key)
        self.assertConfigError("holds no PEM certificate", empty, self.files.server_key)
        self.assertConfigError("holds no PEM certificate", self.files.server_key, self.files.server_key)
        self.assertConfigError("holds no usable PEM private key", self.files.server_cert, garbage)
        self.assertConfigError(
            "holds no usable PEM private key", self.files.server_cert, self.files.server_cert
        )
        self.assertConfigError(
            "holds no PEM certificate", self.files.server_cert, self.files.server_key, garbage
        )

    def test_oversize_file(self) -> None:
        big = write_pem(os.path.join(self.base, "big"), self.pki.server.cert_pem * 2000)
        self.assertConfigError("is over", big, self.files.server_key)

    def test_mismatched_key(self) -> None:
        message = self.assertConfigError("does not belong to", self.files.server_cert, self.files.rogue_key)
        self.assertIn(self.files.server_cert, message)

    def test_encrypted_key(self) -> None:
        encrypted = self.pki.server.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        path = write_pem(os.path.join(self.base, "enc.key"), encrypted)
        self.assertConfigError("is encrypted", self.files.server_cert, path)


class ClientConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.pki = shared_pki()
        self.base = self.mktemp()
        self.files = _Files(self.base, self.pki)

    def test_creators_provide_the_interface(self) -> None:
        pin = _pin(self.pki.server)
        for context in [
            tls.client_context("localhost", self.files.root_ca),
            tls.client_context("localhost"),
            tls.client_context("localhost", self.files.root_ca, {pin}),
            tls.client_context("127.0.0.1", None, {pin}, pin_only=True),
        ]:
            self.assertTrue(verifyObject(IOpenSSLClientConnectionCreator, context))

    def test_bad_ca_file(self) -> None:
        with self.assertRaises(tls.TLSConfigError) as caught:
            tls.client_context("localhost", os.path.join(self.base, "missing.pem"))
        self.assertIn("cannot read TLS CA file", str(caught.exception))
        garbage = write_pem(os.path.join(self.base, "garbage"), b"junk")
        with self.assertRaises(tls.TLSConfigError) as caught:
            tls.client_context("localhost", garbage)
        self.assertIn("holds no PEM certificate", str(caught.exception))

    def test_bad_pins(self) -> None:
        self.assertRaises(tls.TLSConfigError, tls.client_context, "localhost", None, {"sha256/short"})
        self.assertRaises(
            tls.TLSConfigError, tls.client_context, "localhost", None, {"md5:aa"}, pin_only=True
        )

    def test_pin_only_needs_pins(self) -> None:
        for pins in (None, set()):
            with self.assertRaises(tls.TLSConfigError) as caught:
                tls.client_context("localhost", None, pins, pin_only=True)
            self.assertIn("needs at least one SPKI pin", str(caught.exception))

    def test_bad_hostnames(self) -> None:
        for bad in ["", "bad..name", "-x-.example", "a" * 300]:
            self.assertRaises(tls.TLSConfigError, tls.client_context, bad, self.files.root_ca)


# -- real handshakes on loopback ----------------------------------------------------------------------


class _EchoServerProtocol(WebSocketServerProtocol):
    def connectionMade(self) -> None:
        self.lost: Deferred[None] = Deferred()
        self.factory.connections.append(self)
        super().connectionMade()

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.messages.append(payload)
        self.sendMessage(payload, isBinary)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.lost.callback(None)


class _ProbeClientProtocol(WebSocketClientProtocol):
    """Opens, sends PING, closes after the echo; reports (echo, tls version, reason) when gone."""

    echo: bytes | None = None
    tls_version: str | None = None

    def onOpen(self) -> None:
        self.tls_version = self.transport.getHandle().get_protocol_version_name()
        self.sendMessage(PING, isBinary=True)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.echo = payload
        self.sendClose(1000)

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        self.factory.done.callback((self.echo, self.tls_version, reason))


class LoopbackTests(TestCase):
    timeout = 30

    def setUp(self) -> None:
        self.pki = shared_pki()
        self.files = _Files(self.mktemp(), self.pki)
        self.server_factories: list[WebSocketServerFactory] = []

    @inlineCallbacks
    def listen(self, cert: str, key: str, chain: str | None = None):
        factory = WebSocketServerFactory("wss://localhost")
        factory.protocol = _EchoServerProtocol
        factory.setProtocolOptions(openHandshakeTimeout=10, closeHandshakeTimeout=2)
        factory.connections = []
        factory.messages = []
        endpoint = tls.server_endpoint(reactor, "127.0.0.1", 0, tls.server_context_factory(cert, key, chain))
        port = yield endpoint.listen(factory)
        self.addCleanup(self._stop, port, factory)
        self.assertEqual(port.getHost().host, "127.0.0.1")
        self.server_factories.append(factory)
        return port.getHost().port

    @inlineCallbacks
    def _stop(self, port, factory):
        for protocol in factory.connections:
            if protocol.transport is not None and not protocol.lost.called:
                protocol.transport.abortConnection()
        yield gatherResults([p.lost for p in factory.connections])
        yield port.stopListening()

    @inlineCallbacks
    def probe(self, port: int, context, host: str = "127.0.0.1"):
        """Dial with ``context``; fire with (echo, tls version, connectionLost reason)."""
        factory = WebSocketClientFactory(f"wss://localhost:{port}")
        factory.protocol = _ProbeClientProtocol
        factory.done = Deferred()
        yield tls.client_endpoint(reactor, host, port, context, timeout=10).connect(factory)
        result = yield factory.done
        return result

    @inlineCallbacks
    def assertAccepted(self, port: int, context, host: str = "127.0.0.1"):
        echo, version, _reason = yield self.probe(port, context, host)
        self.assertEqual(echo, PING)
        self.assertIn(version, ("TLSv1.2", "TLSv1.3"))

    @inlineCallbacks
    def assertRefused(self, port: int, context, *errors: type[BaseException]):
        seen_before = [len(f.messages) for f in self.server_factories]
        echo, version, reason = yield self.probe(port, context)
        self.assertIsNone(echo)
        self.assertIsNone(version, "the WebSocket must never open")
        self.assertTrue(reason.check(*errors), reason)
        self.assertEqual([len(f.messages) for f in self.server_factories], seen_before)
        return reason.value  # (returning the Failure itself would fail this Deferred)

    @inlineCallbacks
    def test_right_ca_and_hostname(self):
        port = yield self.listen(self.files.server_cert, self.files.server_key)
        yield self.assertAccepted(port, tls.client_context("localhost", self.files.root_ca))
        yield self.assertAccepted(port, tls.client_context("127.0.0.1", self.files.root_ca))
        yield self.assertAccepted(port, tls.client_context("localhost", self.files.both_cas))
        yield self.assertAccepted(port, tls.client_context("localhost", self.files.root_ca), host="localhost")

    @inlineCallbacks
    def test_wrong_ca(self):
        port = yield self.listen(self.files.server_cert, self.files.server_key)
        yield self.assertRefused(port, tls.client_context("localhost", self.files.other_ca), SSL.Error)

    @inlineCallbacks
    def test_platform_trust_does_not_know_the_test_ca(self):
        port = yield self.listen(self.files.server_cert, self.files.server_key)
        yield self.assertRefused(port, tls.client_context("localhost"), SSL.Error)

    @inlineCallbacks
    def test_wrong_hostname(self):
        port = yield self.listen(self.files.server_cert, self.files.server_key)
        yield self.assertRefused(
            port, tls.client_context("example.org", self.files.root_ca), VerificationError
        )
        yield self.assertRefused(port, tls.client_context("127.0.0.2", self.files.root_ca), VerificationError)

    @inlineCallbacks
    def test_pin_with_ca(self):
        port = yield self.listen(self.files.server_cert, self.files.server_key)
        pin = _pin(self.pki.server)
        other = _pin(self.pki.rogue_server)
        yield self.assertAccepted(port, tls.client_context("localhost", self.files.root_ca, {other, pin}))
        hex_pin = tls.spki_sha256(self.pki.server.cert_pem)
        yield self.assertAccepted(port, tls.client_context("127.0.0.1", self.files.root_ca, {hex_pin}))

    @inlineCallbacks
    def test_pin_with_ca_still_checks_ca_and_hostname(self):
        port = yield self.listen(self.files.server_cert, self.files.server_key)
        pins = {_pin(self.pki.server)}
        yield self.assertRefused(port, tls.client_context("localhost", self.files.other_ca, pins), SSL.Error)
        yield self.assertRefused(
            port, tls.client_context("example.org", self.files.root_ca, pins), VerificationError
        )

    @inlineCallbacks
    def test_pin_only_ignores_ca_and_hostname(self):
        port = yield self.listen(self.files.rogue_cert, self.files.rogue_key)
        pins = {_pin(self.pki.rogue_server)}
        yield self.assertAccepted(port, tls.client_context("localhost", None, pins, pin_only=True))
        yield self.assertAccepted(
            port, tls.client_context("example.org", self.files.root_ca, pins, pin_only=True)
        )

    @inlineCallbacks
    def test_pin_only_ignores_an_untrusted_chain(self):
        """Chain errors above the leaf (an unknown root behind a sent intermediate) don't matter."""
        port = yield self.listen(self.files.chained_full, self.files.chained_key)
        pins = {_pin(self.pki.chained_server)}
        yield self.assertAccepted(port, tls.client_context("localhost", None, pins, pin_only=True))
        yield self.assertRefused(port, tls.client_context("localhost", None, pins), SSL.Error)

    @inlineCallbacks
    def test_pin_mismatch(self):
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        port = yield self.listen(self.files.server_cert, self.files.server_key)
        wrong = {_pin(self.pki.rogue_server)}
        reason = yield self.assertRefused(
            port, tls.client_context("localhost", self.files.root_ca, wrong), tls.SPKIPinMismatch
        )
        self.assertIn(_pin(self.pki.server), str(reason))
        yield self.assertRefused(
            port, tls.client_context("localhost", None, wrong, pin_only=True), tls.SPKIPinMismatch
        )
        warnings = [formatEvent(e) for e in events if e.get("log_namespace") == "socp_tw.tls"]
        self.assertEqual(len([w for w in warnings if "matches none of its 1 pins" in w]), 2, warnings)

    @inlineCallbacks
    def test_pin_is_on_the_leaf_not_the_ca(self):
        port = yield self.listen(self.files.server_cert, self.files.server_key)
        ca_pin = {_pin(self.pki.root)}
        yield self.assertRefused(
            port, tls.client_context("localhost", self.files.root_ca, ca_pin), tls.SPKIPinMismatch
        )
        yield self.assertRefused(
            port, tls.client_context("localhost", None, ca_pin, pin_only=True), tls.SPKIPinMismatch
        )

    @inlineCallbacks
    def test_intermediate_from_chain_file(self):
        port = yield self.listen(self.files.chained_cert, self.files.chained_key, self.files.intermediate)
        yield self.assertAccepted(port, tls.client_context("localhost", self.files.root_ca))

    @inlineCallbacks
    def test_intermediate_from_fullchain_cert_file(self):
        port = yield self.listen(self.files.chained_full, self.files.chained_key)
        yield self.assertAccepted(port, tls.client_context("localhost", self.files.root_ca))

    @inlineCallbacks
    def test_missing_intermediate_is_refused(self):
        port = yield self.listen(self.files.chained_cert, self.files.chained_key)
        yield self.assertRefused(port, tls.client_context("localhost", self.files.root_ca), SSL.Error)

    @inlineCallbacks
    def test_plain_client_gets_nothing(self):
        """A ws:// (cleartext) client on a wss:// port never reaches the WebSocket layer."""
        from twisted.internet.endpoints import TCP4ClientEndpoint

        port = yield self.listen(self.files.server_cert, self.files.server_key)
        factory = WebSocketClientFactory(f"ws://127.0.0.1:{port}")
        factory.protocol = _ProbeClientProtocol
        factory.done = Deferred()
        yield TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(factory)
        echo, version, _reason = yield factory.done
        self.assertIsNone(echo)
        self.assertIsNone(version)
        self.assertEqual(self.server_factories[0].messages, [])
