"""``--log-format text|json``: the lines themselves, and a real twistd writing them."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
from pathlib import Path

from twisted.internet import defer, reactor, task
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from socp_tw.ops import logformat
from socp_tw.test.servers import prepare_data_dir
from socp_tw.test.test_startup import TREE
from socp_tw.test.test_tap import PROCESS_TIMEOUT, _Twistd


def event(**fields) -> dict:
    base = {
        "log_format": "Server {server_id} listening on {url}",
        "log_level": LogLevel.info,
        "log_namespace": "socp_tw.services.mesh.Mesh",
        "log_time": 1765152000.25,
        "server_id": "abc",
        "url": "ws://127.0.0.1:1",
    }
    base.update(fields)
    return base


class LineTests(SynchronousTestCase):
    def test_json_line(self) -> None:
        line = logformat.event_as_json(event())
        self.assertTrue(line.endswith("\n"))
        self.assertNotIn("\x1e", line)
        self.assertEqual(line.count("\n"), 1)
        record = json.loads(line)
        self.assertEqual(
            record,
            {
                "time": "2025-12-08T00:00:00.250Z",
                "level": "info",
                "ns": "mesh",
                "msg": "Server abc listening on ws://127.0.0.1:1",
                "server_id": "abc",
                "url": "ws://127.0.0.1:1",
            },
        )

    def test_json_never_writes_secrets(self) -> None:
        record = json.loads(logformat.event_as_json(event(password="hunter2", private_key_pem="k")))
        self.assertEqual(record["password"], "[redacted]")
        self.assertEqual(record["private_key_pem"], "[redacted]")
        self.assertNotIn("hunter2", json.dumps(record))

    def test_json_odd_values(self) -> None:
        record = json.loads(logformat.event_as_json(event(blob=b"xyz", obj=object(), items=(1, "a"))))
        self.assertEqual(record["blob"], "<3 bytes>")
        self.assertIsInstance(record["obj"], str)
        self.assertEqual(record["items"], [1, "a"])

    def test_json_failure_has_traceback(self) -> None:
        try:
            raise ZeroDivisionError("boom")
        except ZeroDivisionError:
            failure = Failure()
        record = json.loads(logformat.event_as_json(event(log_format="Boom", log_failure=failure)))
        self.assertIn("ZeroDivisionError", record["msg"])
        self.assertEqual(record["ns"], "mesh")

    def test_nothing_to_say(self) -> None:
        self.assertIsNone(logformat.event_as_json({"log_time": 1.0}))
        self.assertIsNone(logformat.event_as_text({"log_time": 1.0}))

    def test_text_short_tag(self) -> None:
        line = logformat.event_as_text(event(log_level=LogLevel.warn))
        self.assertRegex(line, r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[mesh#warn\] Server abc listening")
        self.assertNotIn("socp_tw.", line)

    def test_short_namespaces(self) -> None:
        for namespace, short in [
            ("socp_tw.services.mesh.Mesh", "mesh"),
            ("socp_tw.mesh", "mesh"),
            ("socp_tw.protocols.websocket.SOCPServerFactory", "websocket"),
            ("socp_tw.client.session", "client.session"),
            ("socp_tw.public.channel", "public.channel"),
            ("twisted.scripts._twistd_unix.UnixAppLogger", "twisted"),
            ("log_legacy", "twisted"),
            ("stderr", "stderr"),
            (None, "-"),
        ]:
            self.assertEqual(logformat.short_namespace(namespace), short, namespace)

    def test_file_observer(self) -> None:
        out = io.StringIO()
        observer = logformat.file_observer(out, "json")
        observer(event())
        observer(event(server_id="second"))
        records = [json.loads(line) for line in out.getvalue().splitlines()]
        self.assertEqual([r["server_id"] for r in records], ["abc", "second"])


class TwistdLogTests(TestCase):
    """A real ``twistd -n socp --log-format json``, its every line parsed on its own."""

    timeout = 3 * PROCESS_TIMEOUT

    def start(self, *args: str) -> tuple[_Twistd, int]:
        cwd = Path(self.mktemp()).absolute()
        cwd.mkdir(parents=True)
        data = prepare_data_dir(self, 0)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([TREE, os.environ.get("PYTHONPATH", "")])}
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", *args]
        argv += ["socp", "--bind", "ws://127.0.0.1:0", "--data-dir", data, "--log-format", "json"]
        process = _Twistd("server")
        transport = reactor.spawnProcess(process, sys.executable, argv, env=env, path=str(cwd))
        self.addCleanup(self._kill, transport, process)
        return process, transport.pid

    @staticmethod
    def _kill(transport, process: _Twistd) -> defer.Deferred:
        if not process.ended.called:
            transport.signalProcess("KILL")
        return process.ended

    def records(self, text: str) -> list[dict]:
        lines = text.splitlines()
        self.assertTrue(lines)
        records = []
        for line in lines:
            self.assertFalse(line.startswith("\x1e"), line)
            records.append(json.loads(line))  # each line is a whole object
        for record in records:
            self.assertEqual(set(record) >= {"time", "level", "ns", "msg"}, True, record)
            self.assertIn(record["level"], ("debug", "info", "warn", "error", "critical"))
        return records

    @defer.inlineCallbacks
    def test_stdout(self):
        process, pid = self.start()
        yield process.wait_for(r'"msg": "Server [0-9a-f-]+ listening on ws://127\.0\.0\.1:\d+"')
        os.kill(pid, signal.SIGTERM)
        yield process.ended
        records = self.records(process.output)
        listening = [r for r in records if "listening on" in r["msg"]]
        self.assertEqual(len(listening), 1)
        self.assertIn("server_id", listening[0])
        self.assertTrue(listening[0]["time"].endswith("Z"))
        self.assertFalse(any(r["ns"].startswith("socp_tw") for r in records))

    @defer.inlineCallbacks
    def test_log_file_rotated_owner_only(self):
        logs = Path(self.mktemp()).absolute()
        logs.mkdir()
        log_file = logs / "socp.log"
        process, pid = self.start("--logfile", str(log_file))
        for _ in range(int(PROCESS_TIMEOUT * 10)):
            if log_file.exists() and "listening on" in log_file.read_text():
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        os.kill(pid, signal.SIGUSR1)  # twistd's rotation: socp.log -> socp.log.1
        rotated = logs / "socp.log.1"
        for _ in range(int(PROCESS_TIMEOUT * 10)):
            if rotated.exists():
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        os.kill(pid, signal.SIGTERM)
        yield process.ended
        for path in (log_file, rotated):
            self.assertEqual(path.stat().st_mode & 0o777, 0o600, path)
        before = self.records(rotated.read_text())
        self.assertTrue(any("listening on" in r["msg"] for r in before))
        after = self.records(log_file.read_text())
        self.assertTrue(any(r["msg"] == "Server Shut Down." for r in after))
        self.assertEqual(process.output, "")

    @defer.inlineCallbacks
    def test_logrotate_moves_then_usr1_reopens(self):
        logs = Path(self.mktemp()).absolute()
        logs.mkdir()
        log_file = logs / "socp.log"
        process, pid = self.start("--logfile", str(log_file))
        for _ in range(int(PROCESS_TIMEOUT * 10)):
            if log_file.exists() and "listening on" in log_file.read_text():
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        moved = logs / "socp.log-20261208"
        os.rename(log_file, moved)  # what logrotate does before its postrotate USR1
        os.kill(pid, signal.SIGUSR1)
        for _ in range(int(PROCESS_TIMEOUT * 10)):
            if log_file.exists():
                break
            yield task.deferLater(reactor, 0.1, lambda: None)
        os.kill(pid, signal.SIGTERM)
        yield process.ended
        self.assertEqual(log_file.stat().st_mode & 0o777, 0o600)
        self.assertFalse((logs / "socp.log.1").exists())  # reopened, not rotated again
        self.assertTrue(any("listening on" in r["msg"] for r in self.records(moved.read_text())))
        after = self.records(log_file.read_text())
        self.assertTrue(any(r["msg"] == "Server Shut Down." for r in after))
        self.assertFalse(any("listening on" in r["msg"] for r in after))


class LogFileTests(SynchronousTestCase):
    def setUp(self) -> None:
        previous = signal.getsignal(signal.SIGUSR1)
        self.addCleanup(signal.signal, signal.SIGUSR1, previous)
        self.dir = Path(self.mktemp())
        self.dir.mkdir()

    def test_rotates_at_size(self) -> None:
        log_file = logformat.open_log_file(str(self.dir / "socp.log"), rotate_bytes=100)
        self.addCleanup(log_file.close)
        for _ in range(3):
            log_file.write("x" * 60 + "\n")
        log_file.flush()
        self.assertTrue((self.dir / "socp.log.1").exists())
        for path in self.dir.iterdir():
            self.assertEqual(path.stat().st_mode & 0o777, 0o600, path)

    def test_zero_means_no_size_rotation(self) -> None:
        log_file = logformat.open_log_file(str(self.dir / "socp.log"), rotate_bytes=0)
        self.addCleanup(log_file.close)
        for _ in range(100):
            log_file.write("x" * 100 + "\n")
        log_file.flush()
        self.assertEqual([p.name for p in self.dir.iterdir()], ["socp.log"])

    def test_option(self) -> None:
        from twisted.python import usage

        from socp_tw.tap import Options

        config = Options()
        config.parseOptions(["--data-dir", self.mktemp(), "--log-rotate-bytes", "0"])
        self.assertEqual(config["log-rotate-bytes"], 0)
        for bad in ("-1", "big"):
            config = Options()
            self.assertRaises(
                usage.UsageError,
                config.parseOptions,
                ["--data-dir", self.mktemp(), "--log-rotate-bytes", bad],
            )
