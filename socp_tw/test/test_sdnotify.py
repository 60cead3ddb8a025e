"""systemd notify datagrams (to a socket the test opens), and ``systemd-analyze verify`` on the unit."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from twisted.internet import defer, protocol, reactor, task
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from socp_tw.ops import sdnotify
from socp_tw.test.servers import prepare_data_dir
from socp_tw.test.test_startup import TREE
from socp_tw.test.test_tap import PROCESS_TIMEOUT, _Twistd

UNIT = Path(TREE) / "etc" / "socp.service"


def datagram_socket(case) -> tuple[socket.socket, str]:
    """A bound UNIX datagram socket under /tmp (short enough for AF_UNIX), non-blocking."""
    base = tempfile.mkdtemp(prefix="socp-notify-")
    case.addCleanup(shutil.rmtree, base, True)
    path = os.path.join(base, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    case.addCleanup(sock.close)
    return sock, path


def received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


class _Listener:
    url = "ws://127.0.0.1:8765"


class NotifyTests(SynchronousTestCase):
    def test_addresses(self) -> None:
        self.assertIsNone(sdnotify.notify_address({}))
        self.assertIsNone(sdnotify.notify_address({"NOTIFY_SOCKET": ""}))
        self.assertIsNone(sdnotify.notify_address({"NOTIFY_SOCKET": "vsock:2:1"}))
        self.assertEqual(sdnotify.notify_address({"NOTIFY_SOCKET": "/run/x"}), "/run/x")
        self.assertEqual(sdnotify.notify_address({"NOTIFY_SOCKET": "@abc"}), b"\0abc")

    def test_watchdog_interval(self) -> None:
        self.assertIsNone(sdnotify.watchdog_interval({}))
        self.assertEqual(sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000"}), 15.0)
        self.assertIsNone(
            sdnotify.watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, pid=2)
        )
        self.assertEqual(
            sdnotify.watchdog_interval({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "7"}, pid=7), 1.0
        )
        self.assertIsNone(sdnotify.watchdog_interval({"WATCHDOG_USEC": "soon"}))

    def test_no_socket_no_datagram(self) -> None:
        self.assertFalse(sdnotify.notify("READY=1", {}))
        clock = task.Clock()
        notifier = sdnotify.SystemdNotifier(_Listener(), clock, env={})
        notifier.startService()
        self.assertEqual(clock.getDelayedCalls(), [])
        notifier.stopService()

    def test_ready_watchdog_stopping(self) -> None:
        sock, path = datagram_socket(self)
        clock = task.Clock()
        env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000"}
        notifier = sdnotify.SystemdNotifier(_Listener(), clock, env=env)
        notifier.startService()
        self.assertEqual(received(sock), [])  # READY=1 only once the reactor turns
        clock.advance(0)
        (ready,) = received(sock)
        self.assertEqual(ready.splitlines()[:2], ["READY=1", "STATUS=Listening on ws://127.0.0.1:8765"])
        clock.advance(5)
        clock.advance(5)
        self.assertEqual(received(sock), ["WATCHDOG=1", "WATCHDOG=1"])
        notifier.stopService()
        self.assertEqual(received(sock), ["STOPPING=1\nSTATUS=Shutting down"])
        clock.advance(60)
        self.assertEqual(received(sock), [])

    def test_abstract_socket(self) -> None:
        name = f"socp-test-{os.getpid()}-{id(self)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(sock.close)
        sock.bind(b"\0" + name.encode())
        self.assertTrue(sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "@" + name}))
        self.assertEqual(sock.recv(100), b"READY=1")

    def test_unreachable_socket_is_not_fatal(self) -> None:
        self.assertFalse(sdnotify.notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/notify"}))


class _Datagrams(protocol.DatagramProtocol):
    def __init__(self) -> None:
        self.messages: list[str] = []
        self.waits: list[tuple[str, defer.Deferred]] = []

    def datagramReceived(self, data: bytes, addr) -> None:
        self.messages.append(data.decode())
        for wait in list(self.waits):
            if any(m.startswith(wait[0]) for m in self.messages):
                self.waits.remove(wait)
                wait[1].callback(None)

    def wait_for(self, prefix: str) -> defer.Deferred:
        if any(m.startswith(prefix) for m in self.messages):
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self.waits.append((prefix, d))
        return d.addTimeout(PROCESS_TIMEOUT, reactor)


class TwistdNotifyTests(TestCase):
    """A real ``twistd -n socp`` under a pretend systemd: the datagrams it sends, in order."""

    timeout = 3 * PROCESS_TIMEOUT

    @defer.inlineCallbacks
    def test_ready_watchdog_stopping(self):
        base = tempfile.mkdtemp(prefix="socp-notify-")
        self.addCleanup(shutil.rmtree, base, True)
        path = os.path.join(base, "notify")
        datagrams = _Datagrams()
        port = reactor.listenUNIXDatagram(path, datagrams)
        self.addCleanup(port.stopListening)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([TREE, os.environ.get("PYTHONPATH", "")])}
        env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
        argv += ["socp", "--bind", "ws://127.0.0.1:0", "--data-dir", prepare_data_dir(self, 0)]
        process = _Twistd("server")
        transport = reactor.spawnProcess(process, sys.executable, argv, env=env, path=base)
        self.addCleanup(lambda: process.ended if process.ended.called else self._kill(transport, process))
        yield datagrams.wait_for("READY=1")
        ready = next(m for m in datagrams.messages if m.startswith("READY=1"))
        self.assertRegex(ready, r"STATUS=Listening on ws://127\.0\.0\.1:\d+")
        self.assertIn(f"MAINPID={transport.pid}", ready)
        self.assertIn("listening on ws://127.0.0.1:", process.output)  # ready means listening
        for _ in range(int(PROCESS_TIMEOUT * 10)):
            if datagrams.messages.count("WATCHDOG=1") >= 2:
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertGreaterEqual(datagrams.messages.count("WATCHDOG=1"), 2)
        os.kill(transport.pid, signal.SIGTERM)
        yield datagrams.wait_for("STOPPING=1")
        yield process.ended
        self.assertEqual(datagrams.messages[0].split("\n")[0], "READY=1")
        stopping = [i for i, m in enumerate(datagrams.messages) if m.startswith("STOPPING=1")]
        self.assertEqual(len(stopping), 1)
        self.assertNotIn("WATCHDOG=1", datagrams.messages[stopping[0] :])

    @staticmethod
    def _kill(transport, process) -> defer.Deferred:
        transport.signalProcess("KILL")
        return process.ended


class UnitFileTests(SynchronousTestCase):
    def test_type_notify(self) -> None:
        text = UNIT.read_text()
        self.assertRegex(text, r"(?m)^Type=notify$")
        self.assertRegex(text, r"(?m)^NotifyAccess=main$")
        self.assertRegex(text, r"(?m)^WatchdogSec=\d+")

    def test_systemd_analyze_verify(self) -> None:
        tool = shutil.which("systemd-analyze")
        if tool is None:
            raise SkipTest("systemd-analyze is not installed (no systemd here); the unit is not verified")
        twistd = Path(sys.executable).parent / "twistd"
        if not twistd.exists():
            raise SkipTest(f"no twistd next to {sys.executable} to stand in for /opt/socp/venv/bin/twistd")
        base = Path(self.mktemp())
        base.mkdir()
        unit = base / "socp.service"
        # The unit as installed, but naming this venv's twistd: verify checks that ExecStart exists.
        unit.write_text(UNIT.read_text().replace("/opt/socp/venv/bin/twistd", str(twistd)))
        result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
        complaints = [line for line in (result.stdout + result.stderr).splitlines() if "socp.service" in line]
        self.assertEqual((result.returncode, complaints), (0, []), result.stdout + result.stderr)
