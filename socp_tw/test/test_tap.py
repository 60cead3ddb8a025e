"""Options parsing, identity persistence and the service graph of ``twistd socp``."""

from __future__ import annotations

import json
from pathlib import Path

from twisted.application.service import IServiceCollection
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import wire
from socp_tw.identity import IDENTITY_FILE, IdentityError, load_or_create_identity
from socp_tw.tap import Options, makeService, parse_bind, parse_ws_url
from socp_tw.test.servers import prepare_data_dir


def parse(*args: str) -> Options:
    config = Options()
    config.parseOptions(list(args))
    return config


class OptionsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        config = parse()
        self.assertEqual(config["bind"], "ws://127.0.0.1:8765")
        self.assertEqual(config["data-dir"], "./socp-data")
        self.assertEqual(config["peer"], [])
        self.assertIsNone(config["server-id"])
        self.assertEqual(config["log-level"], "info")
        self.assertEqual(config["bind_address"].endpoint, "tcp:8765:interface=127.0.0.1")

    def test_peer_repeatable(self) -> None:
        config = parse("--peer", "ws://127.0.0.1:1", "--peer", "ws://localhost:2")
        self.assertEqual(config["peer"], ["ws://127.0.0.1:1", "ws://localhost:2"])

    def test_bad_peer(self) -> None:
        e = self.assertRaises(usage.UsageError, parse, "--peer", "http://x:1")
        self.assertIn("--peer", str(e))

    def test_server_id_must_be_uuid4(self) -> None:
        parse("--server-id", "3f2504e0-4f89-41d3-9a0c-0305e82c3301")
        for bad in ("nope", "3f2504e0-4f89-11d3-9a0c-0305e82c3301", ""):
            e = self.assertRaises(usage.UsageError, parse, "--server-id", bad)
            self.assertIn("UUID v4", str(e))

    def test_bad_bind(self) -> None:
        for bad in ("http://x:1", "ws://x", "ws://x:99999", "unix:/tmp/x", "tcp:notaport"):
            self.assertRaises(usage.UsageError, parse, "--bind", bad)

    def test_bad_log_level(self) -> None:
        self.assertRaises(usage.UsageError, parse, "--log-level", "loud")

    def test_bad_max_frame(self) -> None:
        self.assertRaises(usage.UsageError, parse, "--max-frame-bytes", "x")
        self.assertRaises(usage.UsageError, parse, "--max-frame-bytes", "10")

    def test_memory_trim_interval(self) -> None:
        self.assertEqual(parse()["memory-trim-interval"], 5.0)
        self.assertEqual(parse("--memory-trim-interval", "0")["memory-trim-interval"], 0.0)
        for bad in ("x", "-1", "nan", "86401"):
            e = self.assertRaises(usage.UsageError, parse, "--memory-trim-interval", bad)
            self.assertIn("--memory-trim-interval", str(e))


class BindParsingTests(SynchronousTestCase):
    def test_ws_url(self) -> None:
        address = parse_bind("ws://127.0.0.1:9000")
        self.assertEqual(address.endpoint, "tcp:9000:interface=127.0.0.1")
        self.assertEqual(address.url(), "ws://127.0.0.1:9000")
        self.assertEqual(address.url(1234), "ws://127.0.0.1:1234")

    def test_ipv6(self) -> None:
        address = parse_bind("ws://[::1]:9000")
        self.assertEqual(address.endpoint, "tcp:9000:interface=\\:\\:1")
        self.assertEqual(address.url(), "ws://[::1]:9000")

    def test_endpoint_string(self) -> None:
        address = parse_bind("tcp:9001:interface=127.0.0.1")
        self.assertEqual((address.host, address.port), ("127.0.0.1", 9001))
        self.assertEqual(parse_bind("tcp:port=9002").port, 9002)

    def test_ws_url_parts(self) -> None:
        self.assertEqual(parse_ws_url("ws://localhost:1/"), ("ws", "localhost", 1))
        self.assertRaises(ValueError, parse_ws_url, "ws://:1")


class IdentityTests(SynchronousTestCase):
    def test_reused(self) -> None:
        data = prepare_data_dir(self, 0)
        first = load_or_create_identity(data)
        second = load_or_create_identity(data)
        self.assertEqual(first.server_id, second.server_id)
        self.assertEqual(first.public_key_text, second.public_key_text)
        self.assertTrue(wire.is_uuid4(first.server_id))

    def test_contradicting_id(self) -> None:
        data = prepare_data_dir(self, 0)
        e = self.assertRaises(IdentityError, load_or_create_identity, data, wire.new_uuid4())
        self.assertIn("contradicts", str(e))

    def test_matching_id_accepted(self) -> None:
        data = prepare_data_dir(self, 0)
        stored = json.loads((Path(data) / IDENTITY_FILE).read_text())["server_id"]
        self.assertEqual(load_or_create_identity(data, stored.upper()).server_id, stored)

    def test_corrupt_identity(self) -> None:
        data = prepare_data_dir(self, 0)
        (Path(data) / IDENTITY_FILE).write_text("{not json")
        self.assertRaises(IdentityError, load_or_create_identity, data)

    def test_missing_key(self) -> None:
        data = prepare_data_dir(self, 0)
        (Path(data) / "server_key.pem").unlink()
        self.assertRaises(IdentityError, load_or_create_identity, data)

    def test_created_on_first_start(self) -> None:
        """A fresh data dir gets a new id and key (one real key generation, ~0.5 s)."""
        data = Path(self.mktemp()) / "fresh"
        wanted = wire.new_uuid4()
        identity = load_or_create_identity(data, wanted)
        self.assertEqual(identity.server_id, wanted)
        self.assertEqual((data / "server_key.pem").stat().st_mode & 0o777, 0o600)
        self.assertEqual(load_or_create_identity(data).server_id, wanted)


class MakeServiceTests(SynchronousTestCase):
    def test_graph(self) -> None:
        data = prepare_data_dir(self, 0)
        top = makeService(parse("--bind", "ws://127.0.0.1:0", "--data-dir", data))
        IServiceCollection(top)
        names = [s.name for s in top]
        expected = ["workers", "store", "userkeys", "hub", "presence", "mesh", "router", "users", "files"]
        expected.append("listener")
        self.assertEqual(names, [*expected, "status", "memory-trim", "outgoing", "public"])

    def test_memory_trim_off(self) -> None:
        data = prepare_data_dir(self, 0)
        options = parse("--bind", "ws://127.0.0.1:0", "--data-dir", data, "--memory-trim-interval", "0")
        self.assertNotIn("memory-trim", [s.name for s in makeService(options)])

    def test_contradicting_id_exits(self) -> None:
        data = prepare_data_dir(self, 0)
        e = self.assertRaises(
            SystemExit, makeService, parse("--data-dir", data, "--server-id", wire.new_uuid4())
        )
        self.assertIn("contradicts", str(e))

    def test_plugin_listed(self) -> None:
        from twisted.application.service import IServiceMaker
        from twisted.plugin import getPlugins

        makers = {p.tapname: p for p in getPlugins(IServiceMaker)}
        self.assertIn("socp", makers)
        self.assertIs(makers["socp"].options, Options)
