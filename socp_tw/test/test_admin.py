"""``socpctl`` against a real server on 127.0.0.1 (and against none), and the peer sweeper."""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path

from twisted.internet import task
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase, TestCase

from socp_tw import crypto, logs
from socp_tw.admin import SOCKET_NAME, ctl
from socp_tw.admin.peers import SEEN_FILE, PeerSweeper, parse_duration
from socp_tw.test.keys import test_key
from socp_tw.test.servers import MeshServer, RunningServer, prepare_data_dir
from socp_tw.test.test_startup import TREE
from socp_tw.test.waiting import poll_until, wait_until
from socp_tw.testing import FakeLink

USER_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def short_data_dir(case, key_index: int) -> str:
    """A prepared data dir under /tmp: trial's own paths are too long for a UNIX socket."""
    base = tempfile.mkdtemp(prefix="socp-ctl-")
    case.addCleanup(shutil.rmtree, base, True)
    target = Path(base) / "d"
    shutil.copytree(prepare_data_dir(case, key_index), target)
    os.chmod(target, 0o700)
    return str(target)


def socpctl(data_dir: str, *args: str):
    """Run ``python -m socp_tw.admin.ctl`` without blocking the reactor: (out, err, code)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TREE, os.environ.get("PYTHONPATH", "")])}
    argv = ["-m", "socp_tw.admin.ctl", "--data-dir", data_dir, *args]
    d = getProcessOutputAndValue(sys.executable, argv, env=env, path=TREE)
    return d.addCallback(lambda r: (r[0].decode(), r[1].decode(), r[2]))


class SocpctlTests(TestCase):
    timeout = 120

    def setUp(self) -> None:
        self.data_dir = short_data_dir(self, 0)
        self.server = RunningServer(self, 0, data_dir=self.data_dir)
        self.addCleanup(self.server.stop)
        self.presence = self.server.service.getServiceNamed("presence")

    def test_socket_owner_only(self) -> None:
        path = Path(self.data_dir) / SOCKET_NAME
        self.assertEqual(path.stat().st_mode & 0o777, 0o600)

    @inlineCallbacks
    def test_status(self):
        out, err, code = yield socpctl(self.data_dir, "status")
        self.assertEqual((code, err), (0, ""), out)
        self.assertIn(self.server.server_id, out)
        self.assertIn(f"on ws://127.0.0.1:{self.server.port}", out)
        self.assertIn("links    0", out)
        out, err, code = yield socpctl(self.data_dir, "--json", "status")
        status = json.loads(out)
        self.assertEqual(status["server_id"], self.server.server_id)
        self.assertEqual(status["users"], {"local": 0, "total": 0})
        self.assertEqual(set(status["queues"]), {"signing", "dm_awaiting_ack", "connections_pending"})

    @inlineCallbacks
    def test_users_kick_and_delete(self):
        store = self.server.service.getServiceNamed("store")
        user_keys = self.server.service.getServiceNamed("userkeys")
        pubkey = crypto.encode_public_key(test_key(1).public_key())
        yield store.add_user(USER_ID, pubkey, "socp-keystore-v1.x", "socp-srp6a-v1.x", {})
        user_keys.pin_local(USER_ID, pubkey, True)
        link = FakeLink("user-link", role="user", identity=USER_ID)
        self.presence.user_online_local(USER_ID, pubkey, {}, link)

        out, _, code = yield socpctl(self.data_dir, "users")
        self.assertEqual(code, 0)
        self.assertIn("1 online here", out)
        self.assertIn(USER_ID, out)
        self.assertNotIn("registered", out)
        out, _, code = yield socpctl(self.data_dir, "--json", "users", "--all")
        self.assertEqual([u["user_id"] for u in json.loads(out)["registered"]], [USER_ID])

        out, _, code = yield socpctl(self.data_dir, "kick", USER_ID)
        self.assertEqual(code, 0)
        self.assertEqual(link.closed[0], 1008)

        link.closed = None
        out, _, code = yield socpctl(self.data_dir, "user", "delete", USER_ID)
        self.assertEqual(code, 0, out)
        self.assertIn("deleted", out)
        self.assertIsNone(user_keys.lookup(USER_ID))
        self.assertIsNone((yield store.get_user(USER_ID)))
        self.assertEqual(link.closed[0], 1008)  # still online: kicked too

        out, err, code = yield socpctl(self.data_dir, "user", "delete", USER_ID)
        self.assertEqual(code, 1)
        self.assertEqual(err.strip(), f"socpctl: no user {USER_ID} is registered here")

    @inlineCallbacks
    def test_kick_unknown_user(self):
        out, err, code = yield socpctl(self.data_dir, "kick", USER_ID)
        self.assertEqual((out, code), ("", 1))
        self.assertEqual(err.strip(), f"socpctl: user {USER_ID} is not logged in here")

    @inlineCallbacks
    def test_log_level(self):
        self.addCleanup(logs.set_log_level, "info")
        out, _, code = yield socpctl(self.data_dir, "log-level", "debug")
        self.assertEqual(code, 0, out)
        self.assertEqual(logs._levels.logLevelForNamespace(logs.NAMESPACE), LogLevel.debug)
        _, err, code = yield socpctl(self.data_dir, "log-level", "loud")
        self.assertEqual(code, 2)  # refused by the command line itself
        self.assertIn("invalid choice", err)

    @inlineCallbacks
    def test_server_side_failure_is_one_line(self):
        from socp_tw.services.store import StoreError

        self.server.service.getServiceNamed("store").stopService()
        out, err, code = yield socpctl(self.data_dir, "users", "--all")
        self.assertEqual((out, code), ("", 1))
        self.assertEqual(err.strip(), "socpctl: the server failed: the store is not running")
        self.assertEqual(len(self.flushLoggedErrors(StoreError)), 1)  # and the server logged it

    @inlineCallbacks
    def test_server_gone(self):
        yield self.server.stop()
        out, err, code = yield socpctl(self.data_dir, "status")
        self.assertEqual((out, code), ("", 1))
        self.assertIn("no server is running on", err)


class PeersTests(TestCase):
    timeout = 120

    @inlineCallbacks
    def test_peers_and_forget(self):
        a_dir = short_data_dir(self, 0)
        a = MeshServer(self, 0, data_dir=a_dir)
        b = MeshServer(self, 1, ["--peer", a.url])
        yield wait_until(lambda: b.server_id in a.mesh.connected_servers(), [a, b], what="a linked to b")
        out, _, code = yield socpctl(a_dir, "--json", "peers")
        self.assertEqual(code, 0)
        (peer,) = json.loads(out)["peers"]
        self.assertEqual(peer["server_id"], b.server_id)
        self.assertTrue(peer["reachable"])
        self.assertEqual(peer["fingerprint"], crypto.fingerprint(b.public_key_text))
        out, _, _ = yield socpctl(a_dir, "peers")
        self.assertIn(f"{b.server_id}  {peer['fingerprint']}", out)
        # The round trip: one WebSocket ping per heartbeat (0.5 s in these servers).
        yield poll_until(lambda: a.mesh.link_to(b.server_id).rtt is not None, what="a ping answered")
        out, _, _ = yield socpctl(a_dir, "--json", "status")
        (link,) = json.loads(out)["links"]
        self.assertEqual((link["server_id"], link["direction"]), (b.server_id, "incoming"))  # b dialled a
        self.assertIsNotNone(link["last_heard_s"])
        self.assertGreaterEqual(link["rtt_ms"], 0.0)
        out, _, _ = yield socpctl(a_dir, "status")
        self.assertRegex(out, rf"links    1\n  {b.server_id}  incoming  (up|linking) +heard ")

        yield b.stop()
        yield wait_until(lambda: not a.mesh.connected_servers(), [a], what="b gone")
        self.assertIn(b.server_id, a.mesh._dialers)  # redialled, for ever, until forgotten
        out, _, code = yield socpctl(a_dir, "forget-peer", b.server_id)
        self.assertEqual(code, 0, out)
        self.assertNotIn(b.server_id, a.mesh.known_servers())
        self.assertNotIn(b.server_id, a.mesh._dialers)
        self.assertFalse([d for d in a.outgoing.dialers if d.server_id == b.server_id])
        out, _, _ = yield socpctl(a_dir, "--json", "peers")
        self.assertEqual(json.loads(out)["peers"], [])
        out, err, code = yield socpctl(a_dir, "forget-peer", b.server_id)
        self.assertEqual(code, 1)
        self.assertIn("no known server", err)


class NotRunningTests(SynchronousTestCase):
    """What ``socpctl`` says before it talks to anyone (in process: ``ctl.socket_path``)."""

    def setUp(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="socp-ctl-"))
        self.addCleanup(shutil.rmtree, self.dir, True)

    def test_no_socket(self) -> None:
        e = self.assertRaises(ctl.CtlError, ctl.socket_path, str(self.dir))
        self.assertIn("no server is running", str(e))

    def test_not_a_socket(self) -> None:
        (self.dir / SOCKET_NAME).write_text("")
        e = self.assertRaises(ctl.CtlError, ctl.socket_path, str(self.dir))
        self.assertIn("is not a socket", str(e))

    def test_not_ours(self) -> None:
        self._stale_socket()
        self.patch(os, "geteuid", lambda: os.stat(self.dir / SOCKET_NAME).st_uid + 1)
        e = self.assertRaises(ctl.CtlError, ctl.socket_path, str(self.dir))
        self.assertIn("not to you", str(e))

    def _stale_socket(self) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(self.dir / SOCKET_NAME))
        s.close()  # a socket file nobody listens on: a killed server's


class StaleSocketTests(TestCase):
    @inlineCallbacks
    def test_stale_socket_refused(self):
        base = Path(tempfile.mkdtemp(prefix="socp-ctl-"))
        self.addCleanup(shutil.rmtree, base, True)
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(base / SOCKET_NAME))
        s.close()
        out, err, code = yield socpctl(str(base), "status")
        self.assertEqual((out, code), ("", 1))
        self.assertIn("no server is listening", err)
        self.assertEqual(len(err.strip().splitlines()), 1, err)


class _Mesh:
    def __init__(self) -> None:
        self.known = {"s1", "s2"}
        self.connected = {"s1"}
        self.forgotten: list[str] = []
        self._known = {k: object() for k in self.known}
        self._dialers: dict = {}
        self._outgoing = None

    def add_change_observer(self, f) -> None:
        self.observer = f

    def connected_servers(self):
        return sorted(self.connected)

    def known_servers(self):
        return sorted(self._known)

    def link_to(self, server_id):
        return None

    def _save_pins(self) -> None:
        pass

    def _changed(self) -> None:
        pass


class SweeperTests(SynchronousTestCase):
    def test_forgets_after(self) -> None:
        clock = task.Clock()
        data = Path(self.mktemp())
        data.mkdir()
        mesh = _Mesh()
        sweeper = PeerSweeper(mesh, data, forget_after=10 * 86400, clock=clock)
        sweeper.startService()
        sweeper.note()
        clock.advance(9 * 86400)  # the hourly sweep runs
        self.assertEqual(sorted(mesh._known), ["s1", "s2"])
        mesh.connected = set()
        clock.advance(1.5 * 86400)  # s2 unseen for 10.5 days, s1 for 1.5: the sweep forgets s2
        self.assertEqual(sorted(mesh._known), ["s1"])
        self.assertEqual(sweeper.sweep(), [])
        self.assertEqual((data / SEEN_FILE).stat().st_mode & 0o777, 0o600)
        self.assertEqual(set(json.loads((data / SEEN_FILE).read_text())), {"s1"})
        sweeper.stopService()
        # A restart keeps the times.
        again = PeerSweeper(mesh, data, forget_after=10 * 86400, clock=clock)
        self.assertEqual(again.seen["s1"], 9 * 86400)
        clock.advance(10 * 86400)
        self.assertEqual(again.sweep(), ["s1"])

    def test_durations(self) -> None:
        self.assertEqual(parse_duration("30d"), 30 * 86400)
        self.assertEqual(parse_duration("12h"), 12 * 3600)
        self.assertEqual(parse_duration("90m"), 5400)
        self.assertEqual(parse_duration("45"), 45)
        self.assertEqual(parse_duration("0"), 0)
        for bad in ("soon", "-1d", "", "1y"):
            self.assertRaises(ValueError, parse_duration, bad)
