"""A ``twistd socp`` start that cannot succeed ends in one line, exit code 1, nothing created.

Each test runs a real ``twistd -n socp`` process from this tree (the plugin found through
``PYTHONPATH``, as in ``test_tap.ReadmeMeshTests``) and reads its stderr and exit code.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

import socp_tw
from socp_tw.identity import IDENTITY_FILE
from socp_tw.listener import parse_bind
from socp_tw.ops import startup
from socp_tw.test.servers import prepare_data_dir

TREE = str(Path(socp_tw.__file__).resolve().parent.parent)


def twistd(cwd: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    """Run ``twistd -n ARGS`` in ``cwd`` until it exits (these starts all fail before listening)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TREE, os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", *args]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


class StartupFailureTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.cwd = Path(self.mktemp()).absolute()
        self.cwd.mkdir(parents=True)

    def assertOneLineExit(self, result: subprocess.CompletedProcess, *words: str) -> str:
        """Exit code 1, nothing on stdout, one line on stderr that holds ``words``."""
        self.assertEqual(result.returncode, 1, result)
        self.assertEqual(result.stdout, "", result)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        for word in words:
            self.assertIn(word, lines[0])
        self.assertNotIn("Traceback", result.stderr)
        return lines[0]

    def test_unknown_option(self) -> None:
        result = twistd(self.cwd, "socp", "--bogus", "--data-dir", "d")
        line = self.assertOneLineExit(result, "--bogus", "not recognized", "--help")
        self.assertTrue(line.startswith("twistd socp: "), line)
        self.assertNotIn("Usage:", line)
        self.assertEqual(list(self.cwd.iterdir()), [])

    def test_bad_value(self) -> None:
        result = twistd(self.cwd, "socp", "--log-level", "loud", "--data-dir", "d")
        self.assertOneLineExit(result, "--log-level must be one of")
        self.assertEqual(list(self.cwd.iterdir()), [])

    def test_help_only_when_asked(self) -> None:
        result = twistd(self.cwd, "socp", "--help")
        self.assertEqual(result.returncode, 0, result)
        self.assertIn("--log-level", result.stdout)
        self.assertEqual(list(self.cwd.iterdir()), [])

    def test_missing_log_dir(self) -> None:
        missing = self.cwd / "nope" / "socp.log"
        result = twistd(self.cwd, "--logfile", str(missing), "socp", "--data-dir", "d")
        line = self.assertOneLineExit(result, "--logfile", "does not exist")
        self.assertTrue(line.startswith("socp: "), line)
        self.assertNotIn("--help", line)
        self.assertEqual(list(self.cwd.iterdir()), [])

    def test_data_dir_under_a_file(self) -> None:
        (self.cwd / "file").write_text("")
        result = twistd(self.cwd, "socp", "--data-dir", "file/sub")
        self.assertOneLineExit(result, "--data-dir", "not a directory")

    def test_unwritable_data_dir(self) -> None:
        if os.geteuid() == 0:
            raise SkipTest("root may write into a mode 0500 directory; the check cannot fail as root")
        ro = self.cwd / "ro"
        ro.mkdir(mode=0o500)
        self.addCleanup(os.chmod, ro, 0o700)
        result = twistd(self.cwd, "socp", "--data-dir", "ro")
        self.assertOneLineExit(result, "--data-dir", "not writable")
        self.assertEqual(list(ro.iterdir()), [])

    def test_port_in_use_creates_nothing(self) -> None:
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = twistd(self.cwd, "socp", "--bind", f"ws://127.0.0.1:{port}", "--data-dir", "d")
        self.assertOneLineExit(result, f"cannot listen on ws://127.0.0.1:{port}", "in use")
        # No new identity (nor the dir) from a start that could not listen.
        self.assertEqual(list(self.cwd.iterdir()), [])

    def test_metrics_port_in_use_creates_nothing(self) -> None:
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        metrics = f"tcp:{port}:interface=127.0.0.1"
        result = twistd(
            self.cwd, "socp", "--bind", "ws://127.0.0.1:0", "--metrics", metrics, "--data-dir", "d"
        )
        self.assertOneLineExit(result, f"cannot listen on --metrics tcp:{port}:interface=127.0.0.1", "in use")
        self.assertEqual(list(self.cwd.iterdir()), [])

    def test_bad_metrics_endpoint(self) -> None:
        result = twistd(self.cwd, "socp", "--metrics", "nonsense:1", "--data-dir", "d")
        self.assertOneLineExit(result, "--metrics", "not a Twisted endpoint string")
        self.assertEqual(list(self.cwd.iterdir()), [])

    def test_port_in_use_keeps_the_identity(self) -> None:
        data = Path(prepare_data_dir(self, 0))
        before = {p.name: p.read_bytes() for p in data.iterdir()}
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = twistd(self.cwd, "socp", "--bind", f"ws://127.0.0.1:{port}", "--data-dir", str(data))
        self.assertOneLineExit(result, "in use")
        self.assertEqual({p.name: p.read_bytes() for p in data.iterdir()}, before)
        self.assertIn("server_id", json.loads(before[IDENTITY_FILE]))


class CheckTests(SynchronousTestCase):
    """The checks themselves, without a process."""

    def test_data_dir_ok(self) -> None:
        base = Path(self.mktemp())
        startup.check_data_dir(base / "new" / "deeper")  # creatable: nothing raised, nothing made
        self.assertFalse(base.exists())

    def test_log_file(self) -> None:
        startup.check_log_file("-")
        startup.check_log_file(None)
        base = Path(self.mktemp())
        base.mkdir()
        startup.check_log_file(str(base / "socp.log"))
        self.assertRaises(startup.StartupError, startup.check_log_file, str(base))
        self.assertRaises(startup.StartupError, startup.check_log_file, str(base / "x" / "socp.log"))

    def test_port_zero_and_free_port(self) -> None:
        startup.check_can_listen(parse_bind("ws://127.0.0.1:0"))
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        startup.check_can_listen(parse_bind(f"ws://127.0.0.1:{port}"))
