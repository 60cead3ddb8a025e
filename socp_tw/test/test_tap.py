"""Options parsing, identity persistence and the service graph of ``twistd socp``."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import sys
from pathlib import Path

from twisted.application.service import IServiceCollection
from twisted.internet import defer, protocol, reactor
from twisted.internet.error import ProcessExitedAlready
from twisted.python import usage
from twisted.scripts._twistd_unix import ServerOptions
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

import socp_tw
from socp_tw import wire
from socp_tw.identity import IDENTITY_FILE, IdentityError, load_or_create_identity
from socp_tw.services.mesh import PEERS_FILE
from socp_tw.tap import PIDFILE, Options, makeService
from socp_tw.test.servers import prepare_data_dir
from socp_tw.test.services.mesh.support import S1, pub


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

    def test_hold_days(self) -> None:
        self.assertEqual(parse()["hold-days"], 7.0)
        self.assertEqual(parse("--hold-days", "0.5")["hold-days"], 0.5)
        for bad, said in (("x", "a number of days"), ("0", "between"), ("366", "between"), ("-1", "between")):
            e = self.assertRaises(usage.UsageError, parse, "--hold-days", bad)
            self.assertIn(f"--hold-days must be {said}", str(e))

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

    def test_gc_thaw_interval(self) -> None:
        self.assertEqual(parse("--gc-thaw-interval", "60")["gc-thaw-interval"], 60.0)
        for bad in ("x", "-1", "nan", "86401"):
            e = self.assertRaises(usage.UsageError, parse, "--gc-thaw-interval", bad)
            self.assertIn("--gc-thaw-interval", str(e))


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
        expected = [
            "workers",
            "store",
            "userkeys",
            "hub",
            "presence",
            "mesh",
            "holding",
            "router",
            "users",
            "files",
        ]
        expected.append("listener")
        expected += ["status", "memory-trim", "gc-policy", "outgoing"]
        expected += ["public", "peer-sweeper", "admin", "systemd"]
        self.assertEqual(names, expected)

    def test_gc_policy_off(self) -> None:
        data = prepare_data_dir(self, 0)
        options = parse("--bind", "ws://127.0.0.1:0", "--data-dir", data, "--gc-thaw-interval", "0")
        self.assertNotIn("gc-policy", [s.name for s in makeService(options)])
        self.assertEqual(parse()["gc-thaw-interval"], 600.0)

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


class DataDirDefaultTests(SynchronousTestCase):
    """Servers started side by side from one directory with only --server-id (the integration
    guide's recipe) each get their own data dir."""

    def setUp(self) -> None:
        cwd = Path(self.mktemp())
        cwd.mkdir(parents=True)
        self.addCleanup(os.chdir, os.getcwd())
        os.chdir(cwd)

    def test_server_id_alone_gets_its_own_dir(self) -> None:
        a, b = wire.new_uuid4(), wire.new_uuid4()
        self.assertEqual(Path(parse("--server-id", a)["data-dir"]), Path("socp-data") / a)
        self.assertEqual(Path(parse("--server-id", b)["data-dir"]), Path("socp-data") / b)
        self.assertEqual(Path(parse()["data-dir"]), Path("socp-data"))

    def test_the_default_dir_stays_its_own_servers(self) -> None:
        server_id = wire.new_uuid4()
        Path("socp-data").mkdir()
        Path("socp-data", IDENTITY_FILE).write_text(json.dumps({"server_id": server_id}))
        self.assertEqual(Path(parse("--server-id", server_id)["data-dir"]), Path("socp-data"))
        other = wire.new_uuid4()
        self.assertEqual(Path(parse("--server-id", other)["data-dir"]), Path("socp-data") / other)

    def test_an_explicit_data_dir_is_kept(self) -> None:
        self.assertEqual(parse("--server-id", wire.new_uuid4(), "--data-dir", "x")["data-dir"], "x")


class PidfileTests(SynchronousTestCase):
    """Under twistd, the pidfile goes to the data dir unless ``--pidfile`` says otherwise."""

    def setUp(self) -> None:
        self.cwd = Path(self.mktemp()).absolute()
        self.cwd.mkdir(parents=True)
        old = os.getcwd()
        os.chdir(self.cwd)
        self.addCleanup(os.chdir, old)

    def twistd(self, *args: str) -> ServerOptions:
        config = ServerOptions()
        config.parseOptions(list(args))
        return config

    def test_default_goes_to_data_dir(self) -> None:
        config = self.twistd("-n", "socp", "--data-dir", "a")
        self.assertEqual(config["pidfile"], str(self.cwd / "a" / PIDFILE))
        self.assertFalse((self.cwd / "a").exists())  # made by makeService, after the early checks
        self.assertEqual(self.twistd("-n", "socp")["pidfile"], str(self.cwd / "socp-data" / PIDFILE))

    def test_existing_data_dir_kept_as_is(self) -> None:
        (self.cwd / "b").mkdir(mode=0o750)
        os.chmod(self.cwd / "b", 0o750)
        self.assertEqual(self.twistd("socp", "--data-dir", "b")["pidfile"], str(self.cwd / "b" / PIDFILE))
        self.assertEqual((self.cwd / "b").stat().st_mode & 0o777, 0o750)

    def test_explicit_pidfile_kept(self) -> None:
        self.assertEqual(self.twistd("--pidfile", "/run/x.pid", "socp")["pidfile"], "/run/x.pid")
        # The same name as twistd's default, given on purpose: kept where asked.
        name = "".join(["twistd", ".pid"])
        self.assertEqual(self.twistd("--pidfile", name, "socp")["pidfile"], str(self.cwd / "twistd.pid"))
        self.assertFalse((self.cwd / "socp-data").exists())

    def test_empty_pidfile_means_none(self) -> None:
        self.assertEqual(self.twistd("-n", "--pidfile", "", "socp", "--data-dir", "a")["pidfile"], "")
        self.assertEqual(self.twistd("-n", "--pidfile=", "socp")["pidfile"], "")

    def test_uncreatable_data_dir(self) -> None:
        (self.cwd / "file").write_text("")
        # Under twistd a start-up check ends the start in one line (socp_tw.ops.startup).
        e = self.assertRaises(SystemExit, self.twistd, "socp", "--data-dir", "file/sub")
        self.assertIn("--data-dir", str(e))
        self.assertIn("not a directory", str(e))


#: How long one twistd process may take to come up, link, or stop (a shared, loaded machine).
PROCESS_TIMEOUT = 60.0


class _Twistd(protocol.ProcessProtocol):
    """One ``twistd -n socp`` process: its output so far, and waits on it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.output = ""
        self.ended: defer.Deferred = defer.Deferred()
        self._waits: list[tuple[re.Pattern, defer.Deferred]] = []

    def outReceived(self, data: bytes) -> None:
        self.output += data.decode("utf-8", "replace")
        for wait in list(self._waits):
            if wait[0].search(self.output):
                self._waits.remove(wait)
                wait[1].callback(None)

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        for pattern, d in self._waits:
            d.errback(AssertionError(f"{self.name} ended before {pattern.pattern!r}:\n{self.output}"))
        self._waits = []
        self.ended.callback(reason.value)

    def wait_for(self, pattern: str) -> defer.Deferred:
        """Fire once the output matches ``pattern``; fail after PROCESS_TIMEOUT seconds."""
        compiled = re.compile(pattern)
        if compiled.search(self.output):
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waits.append((compiled, d))

        def timed_out(failure):
            if (compiled, d) in self._waits:
                self._waits.remove((compiled, d))
            raise AssertionError(f"{self.name}: no {pattern!r} in {PROCESS_TIMEOUT:g} s:\n{self.output}")

        return d.addTimeout(PROCESS_TIMEOUT, reactor).addErrback(timed_out)


def _readme_commands(section: str) -> list[str]:
    """The ``twistd`` command lines of one README section, their comments dropped."""
    readme = Path(socp_tw.__file__).resolve().parent.parent / "README.md"
    if not readme.exists():
        raise SkipTest("README.md is not next to the package (an installed copy)")
    text = readme.read_text("utf-8").split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.startswith("    twistd ")]
    return [line.split("#", 1)[0].strip() for line in lines]


def _free_ports(count: int) -> list[int]:
    """Loopback ports free right now (held open together, so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class ReadmeMeshTests(TestCase):
    """The README's three-server mesh, typed as written, from one directory (issue 18)."""

    timeout = 4 * PROCESS_TIMEOUT

    def test_recipe_is_the_mesh_start(self) -> None:
        """The quick recipe starts its two servers with the mesh's first two commands."""
        self.assertEqual(
            _readme_commands("Quick recipe: two servers, two users"),
            _readme_commands("A three-server mesh")[:2],
        )

    @defer.inlineCallbacks
    def test_three_servers_from_one_directory(self):
        commands = _readme_commands("A three-server mesh")
        self.assertEqual(len(commands), 3, commands)
        cwd = Path(self.mktemp()).absolute()
        cwd.mkdir(parents=True)
        # a and b hold a ready identity (no key generation); c starts from nothing, like a new user.
        for index, name in enumerate("ab"):
            os.rename(prepare_data_dir(self, index), cwd / name)
        ports = dict(zip(("8765", "8766", "8767"), map(str, _free_ports(3)), strict=True))
        tree = str(Path(socp_tw.__file__).resolve().parent.parent)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([tree, os.environ.get("PYTHONPATH", "")])}
        processes: list[tuple[_Twistd, Path, int]] = []
        for command in commands:
            argv = shlex.split(re.sub(r"\b(8765|8766|8767)\b", lambda m: ports[m.group(1)], command))
            self.assertEqual(argv[:3], ["twistd", "-n", "socp"])
            data_dir = cwd / argv[argv.index("--data-dir") + 1]
            twistd = _Twistd(data_dir.name)
            argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", *argv[1:]]
            transport = reactor.spawnProcess(twistd, sys.executable, argv, env=env, path=str(cwd))
            self.addCleanup(self._kill, transport, twistd)
            processes.append((twistd, data_dir, transport.pid))
            port = ports[{"a": "8765", "b": "8766", "c": "8767"}[data_dir.name]]
            yield twistd.wait_for(rf"listening on ws://127\.0\.0\.1:{port}\b")
        ids = {d: json.loads((d / IDENTITY_FILE).read_text())["server_id"] for _, d, _ in processes}
        for twistd, data_dir, pid in processes:
            # Linked to both others, though c names only b (and a names nobody).
            others = "".join(f"(?=[^|]*{ids[d]})" for d in ids if d != data_dir)
            yield twistd.wait_for(rf"Status: Known servers: {others}[^|]*\|[^|]*\| links=2 ")
            self.assertEqual((data_dir / PIDFILE).read_text(), str(pid))
        self.assertEqual((cwd / "c").stat().st_mode & 0o777, 0o700)
        self.assertFalse((cwd / PIDFILE).exists())
        for twistd, data_dir, pid in processes:
            os.kill(pid, signal.SIGTERM)
            ended = yield twistd.ended.addTimeout(PROCESS_TIMEOUT, reactor)
            # twistd re-raises the signal it stopped on (app._exitWithSignal).
            self.assertEqual(ended.signal, signal.SIGTERM, twistd.output)
            self.assertFalse((data_dir / PIDFILE).exists(), twistd.output)
            self.assertNotIn("Traceback", twistd.output)

    @staticmethod
    def _kill(transport, twistd: _Twistd) -> defer.Deferred:
        if not twistd.ended.called:
            try:
                transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass  # its end is on its way
        return twistd.ended


class MeshOptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        config = Options()
        config.parseOptions(list(args))
        return config

    def test_defaults(self) -> None:
        config = self.parse()
        self.assertEqual(
            (
                config["status-interval"],
                config["advertise_address"],
                config["bootstrap_entries"],
                config["peer_addresses"],
            ),
            (30.0, None, [], []),
        )

    def test_mesh_options(self) -> None:
        path = Path(self.mktemp())
        path.write_text(json.dumps([{"host": "127.0.0.1", "port": 8765, "pubkey": pub(S1)}]))
        config = self.parse(
            "--peer", "ws://127.0.0.1:8765", "--peer", "ws://[::1]:9", "--bootstrap", str(path),
            "--status-interval", "2.5", "--advertise", "ws://chat.example.org:443",
        )  # fmt: skip
        self.assertEqual(config["peer_addresses"], [("127.0.0.1", 8765), ("::1", 9)])
        self.assertEqual(len(config["bootstrap_entries"]), 1)
        self.assertEqual(config["status-interval"], 2.5)
        self.assertEqual(config["advertise_address"], ("chat.example.org", 443))

    def test_bad_mesh_options(self) -> None:
        missing = self.mktemp()
        for args in (
            ["--bootstrap", missing],
            ["--status-interval", "soon"],
            ["--status-interval", "0"],
            ["--advertise", "http://x:1"],
            ["--advertise", "ws://x:0"],
            ["--peer", "127.0.0.1:8765"],
        ):
            self.assertRaises(usage.UsageError, self.parse, *args)

    def test_service_graph(self) -> None:
        data = prepare_data_dir(self, 0)
        top = makeService(
            self.parse("--bind", "ws://127.0.0.1:0", "--data-dir", data, "--peer", "ws://127.0.0.1:1")
        )
        names = [s.name for s in top]
        self.assertLess(names.index("listener"), names.index("status"))
        self.assertLess(names.index("presence"), names.index("mesh"))
        self.assertLess(names.index("mesh"), names.index("router"))
        self.assertLess(names.index("router"), names.index("listener"))
        self.assertLess(names.index("listener"), names.index("outgoing"))
        mesh = top.getServiceNamed("mesh")
        self.assertIs(top.getServiceNamed("outgoing").mesh, mesh)

    def test_corrupt_pins_exit(self) -> None:
        data = prepare_data_dir(self, 0)
        (Path(data) / PEERS_FILE).write_text("nope")
        with self.assertRaises(SystemExit) as caught:
            makeService(self.parse("--bind", "ws://127.0.0.1:0", "--data-dir", data))
        self.assertIn(PEERS_FILE, str(caught.exception))
