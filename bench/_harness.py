"""What every benchmark shares: real server processes, light raw WebSocket users, statistics.

Servers run as separate processes (``python -m twisted socp``) on 127.0.0.1 with a
fresh data dir each, so their CPU and memory are theirs alone and the benchmark
process (the users) does not share their GIL.  The server key is made here and
written to the data dir (as ``load_or_create_identity`` would find it), so a mesh of
five starts without five key generations in a row.

Users are :class:`RawUser`: a minimal RFC 6455 client on a plain Twisted protocol
(no Autobahn, no client session).  It speaks SOCP frames directly: a TOFU
``USER_HELLO`` (docs/PROTOCOL-EXTENSIONS.md §6.3), then whatever the benchmark sends,
pre-signed.  It parses only what it is asked to, so thousands of them cost the
benchmark process little.

Everything here is bounded: every wait has a timeout, every loop ends by itself, and
only loopback addresses are used.
"""

from __future__ import annotations

import base64
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives import serialization  # noqa: E402
from twisted.internet import defer, task  # noqa: E402
from twisted.internet.protocol import ClientFactory, Protocol  # noqa: E402

from socp_tw import crypto, wire  # noqa: E402
from socp_tw.identity import IDENTITY_FILE, KEY_FILE  # noqa: E402
from socp_tw.protocols.frames import frame_header, mask_payload, masked_text_frame, send_now  # noqa: E402

__all__ = [
    "ROOT",
    "CpuMeter",
    "RawUser",
    "ServerProcess",
    "UserKey",
    "connect_user",
    "describe_cpu",
    "generate_keys",
    "machine_description",
    "make_dm",
    "make_public",
    "percentile",
    "presign",
    "start_mesh",
    "stop_all",
    "summary",
    "two_servers",
    "until",
    "work_dir",
]


# ------------------------------------------------------------------ the machine


def machine_description() -> str:
    """CPU, cores, load, and the versions that matter for the numbers."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import autobahn
    import cryptography
    from cryptography.hazmat.backends.openssl.backend import backend

    import twisted

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} CPUs ({model}), load average {load}; Python {platform.python_version()}, "
        f"cryptography {cryptography.__version__} ({backend.openssl_version_text()}), "
        f"Twisted {twisted.__version__}, Autobahn {autobahn.__version__}"
    )


class CpuMeter:
    """CPU seconds over an interval: the whole machine (/proc/stat), the servers, this process.

    ``other`` is what processes outside the benchmark used meanwhile: on a shared machine
    it explains a wall-clock ratio that CPU shares do not.
    """

    def __init__(self, servers: list) -> None:
        self.servers = servers
        self._start = self._sample()

    @staticmethod
    def _machine() -> float:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        ticks = [int(x) for x in fields]
        busy = sum(ticks) - ticks[3] - ticks[4]  # minus idle and iowait
        return busy / os.sysconf("SC_CLK_TCK")

    def _sample(self) -> tuple[float, float, float, float]:
        usage = os.times()
        return (
            time.monotonic(),
            self._machine(),
            sum(s.cpu_seconds() for s in self.servers),
            usage.user + usage.system,
        )

    def stop(self) -> dict[str, float]:
        end = self._sample()
        wall, machine, servers, bench = (b - a for a, b in zip(self._start, end, strict=True))
        return {
            "wall": wall,
            "machine": machine,
            "servers": servers,
            "bench": bench,
            "other": max(0.0, machine - servers - bench),
        }


def describe_cpu(usage: dict[str, float]) -> str:
    """One line: cores used by the servers, the benchmark's clients and everything else."""
    cores = os.cpu_count() or 1
    wall = usage["wall"]
    return (
        f"CPU over {wall:.1f} s on {cores} cores: servers {usage['servers'] / wall:.2f} cores, "
        f"bench clients {usage['bench'] / wall:.2f}, other processes {usage['other'] / wall:.2f}"
    )


# ------------------------------------------------------------------ statistics


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summary(values: list[float], scale: float = 1e3, unit: str = "ms") -> str:
    """``p50 / p90 / p99 / max`` of ``values`` (seconds, shown in ``unit``)."""
    return (
        f"p50 {percentile(values, 50) * scale:.2f} {unit}, p90 {percentile(values, 90) * scale:.2f} {unit}, "
        f"p99 {percentile(values, 99) * scale:.2f} {unit}, max {max(values) * scale:.2f} {unit} "
        f"(mean {statistics.fmean(values) * scale:.2f}, n={len(values)})"
    )


# ------------------------------------------------------------------ waiting


async def until(condition: Callable[[], Any], what: str, timeout: float = 60.0, step: float = 0.01) -> Any:
    """Poll ``condition()`` every ``step`` s until it is truthy; RuntimeError after ``timeout`` s."""
    from twisted.internet import reactor

    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        await task.deferLater(reactor, step, lambda: None)
    return value


async def sleep(seconds: float) -> None:
    """Let the reactor run for ``seconds``."""
    from twisted.internet import reactor

    await task.deferLater(reactor, seconds, lambda: None)


def work_dir() -> Path:
    """A fresh temp dir for one run (removed by the caller's ``finally``)."""
    return Path(tempfile.mkdtemp(prefix="socp-bench-"))


def generate_keys(count: int) -> list:
    """``count`` fresh RSA-4096 keys, made in parallel threads (~0.5 s of CPU each)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(lambda _: crypto.generate_private_key(), range(count)))


# ------------------------------------------------------------------ servers


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat_cpu_seconds(stat: Path) -> float:
    """User + system CPU seconds from a ``/proc/.../stat`` file (a process's or one thread's)."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class ServerProcess:
    """One ``python -m twisted socp`` process on 127.0.0.1 with its own data dir and JSON log."""

    def __init__(
        self,
        work: Path,
        name: str,
        key,
        peers: tuple[str, ...] = (),
        log_level: str = "info",
        extra_args: tuple[str, ...] = (),
        launcher: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.data_dir = work / name
        self.data_dir.mkdir(parents=True, mode=0o700)
        self.server_id = wire.new_uuid4()
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        (self.data_dir / KEY_FILE).write_bytes(key_pem)
        os.chmod(self.data_dir / KEY_FILE, 0o600)
        (self.data_dir / IDENTITY_FILE).write_text(json.dumps({"server_id": self.server_id}))
        self.log_path = work / f"{name}.log"
        self.port = free_port()
        # A launcher script replaces "-m twisted" (a profiler, a memory probe); SOCP_BENCH_LAUNCHER
        # sets one for every server of a run.
        launcher = launcher or os.environ.get("SOCP_BENCH_LAUNCHER")
        start = [launcher] if launcher else ["-m", "twisted"]
        args = [sys.executable, *start, "socp", "--bind", f"ws://127.0.0.1:{self.port}"]
        args += ["--data-dir", str(self.data_dir), "--log-level", log_level, *extra_args]
        for peer in peers:
            args += ["--peer", peer]
        env = dict(os.environ, **(env or {}))
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
        self._log_file = self.log_path.open("wb")
        self.process = subprocess.Popen(
            args, cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self.pid = self.process.pid
        self.url = f"ws://127.0.0.1:{self.port}"
        self.status: str | None = None
        self._offset = 0

    # -- the JSON log

    def read_log(self) -> list[dict]:
        """Events logged since the last call (complete lines only)."""
        with self.log_path.open("rb") as log:
            log.seek(self._offset)
            data = log.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        events = []
        for line in data[:end].splitlines():
            try:
                event = json.loads(line.lstrip(b"\x1e"))  # RFC 7464 record separator
            except ValueError:
                continue
            events.append(event)
            fmt = event.get("log_format", "")
            if fmt == "Status: {status}":
                self.status = event["status"]
        return events

    def links(self) -> int:
        """Live server links according to the latest status line (-1 if none yet)."""
        self.read_log()
        if self.status is None or "links=" not in self.status:
            return -1
        return int(self.status.split("links=", 1)[1].split()[0])

    async def listening(self, timeout: float = 60.0) -> str:
        def ready():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server {self.name} exited ({self.process.returncode}); see {self.log_path}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self.url
            except OSError:
                return None

        return await until(ready, f"server {self.name} to listen", timeout, step=0.05)

    # -- resources

    def rss_kib(self) -> int:
        """Resident set size now, KiB (VmRSS of /proc/<pid>/status)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        """User + system CPU time used so far (all threads)."""
        return _stat_cpu_seconds(Path(f"/proc/{self.pid}/stat"))

    def reactor_cpu_seconds(self) -> float:
        """CPU time of the main (reactor) thread alone; the rest is the signing pool's."""
        return _stat_cpu_seconds(Path(f"/proc/{self.pid}/task/{self.pid}/stat"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log_file.close()


async def start_mesh(work: Path, count: int, keys: list, log_level: str = "info", settle: float = 1.0):
    """``count`` servers, each joined to the first; wait for a full mesh (every server links=count-1)."""
    first = ServerProcess(work, "s0", keys[0], log_level=log_level)
    servers = [first]
    try:
        await first.listening()
        for i in range(1, count):
            servers.append(ServerProcess(work, f"s{i}", keys[i], peers=(first.url,), log_level=log_level))
        for server in servers[1:]:
            await server.listening()
        if count > 1:
            await until(
                lambda: all(s.links() == count - 1 for s in servers), f"a full mesh of {count}", 90, step=0.1
            )
            await sleep(settle)  # duplicate links closed, public channel state exchanged
    except BaseException:
        for server in servers:
            server.stop()
        raise
    return servers


def stop_all(servers: list[ServerProcess], work: Path | None = None, keep: bool = False) -> None:
    """Stop every server (SIGTERM, then SIGKILL after 15 s) and remove ``work`` unless ``keep``."""
    for server in servers:
        server.stop()
    if work is not None and not keep:
        shutil.rmtree(work, ignore_errors=True)


# ------------------------------------------------------------------ raw WebSocket users


class RawUser(Protocol):
    """A minimal RFC 6455 client speaking SOCP frames as one user (TOFU hello, unsigned frames).

    ``on_frame(user, frame_dict)`` receives every parsed frame; with ``discard_after_hello``
    the user stops parsing once its hello is acknowledged and drops everything it
    receives (it still reads it, so the server's buffers stay empty).  ``on_message(user,
    message_bytes)``, if given, sees each message after the hello first and returns True
    when it handled it without parsing (a load generator keeping its own CPU low).

    Frames leave the way the server's own do (``frames.send_now``: one ``sendmsg`` in the
    call, no reactor turn), and :meth:`masked` prepares a frame's bytes ahead of time, so
    that the benchmark's users take as little as possible of the CPU the servers share.
    """

    def __init__(
        self,
        user_id: str,
        pubkey: str,
        on_frame: Callable[[RawUser, dict], None] | None = None,
        discard_after_hello: bool = False,
        client_name: str = "socp-bench",
        on_message: Callable[[RawUser, bytes], bool] | None = None,
    ) -> None:
        self.user_id = user_id
        self.pubkey = pubkey
        self.on_frame = on_frame
        self.on_message = on_message
        self.discard_after_hello = discard_after_hello
        self.client_name = client_name
        self.opened: defer.Deferred = defer.Deferred()
        self.acked: defer.Deferred = defer.Deferred()
        self.closed: defer.Deferred = defer.Deferred()
        self.server_id: str | None = None
        self.frames_received = 0
        self._upgraded = False
        self._discarding = False
        self._buffer = b""
        self._fragments: list[bytes] = []

    # -- connection

    def connectionMade(self) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        host = self.transport.getPeer()
        request = (
            f"GET / HTTP/1.1\r\nHost: {host.host}:{host.port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.transport.write(request.encode())

    def connectionLost(self, reason) -> None:
        for d in (self.opened, self.acked):
            if not d.called:
                d.errback(RuntimeError(f"user {self.user_id}: connection lost"))
        if not self.closed.called:
            self.closed.callback(None)

    def dataReceived(self, data: bytes) -> None:
        if self._discarding:
            return
        self._buffer += data
        if not self._upgraded:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            if b" 101 " not in head.split(b"\r\n", 1)[0]:
                self.transport.loseConnection()
                self.opened.errback(RuntimeError(f"upgrade refused: {head[:200]!r}"))
                return
            self._upgraded = True
            self.opened.callback(self)
        self._parse()

    def _parse(self) -> None:
        buf = self._buffer
        pos = 0
        while not self._discarding:
            if len(buf) - pos < 2:
                break
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if len(buf) - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                head = 4
            elif length == 127:
                if len(buf) - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                head = 10
            if len(buf) - pos < head + length:
                break
            payload = buf[pos + head : pos + head + length]
            pos += head + length
            self._frame(b0 & 0x80, b0 & 0x0F, payload)
        self._buffer = b"" if self._discarding else buf[pos:]

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode in (0x1, 0x2, 0x0):
            self._fragments.append(payload)
            if fin:
                message = b"".join(self._fragments)
                self._fragments = []
                self._message(message)
        elif opcode == 0x8:  # close: answer and hang up
            self._write_frame(0x8, payload[:2])
            self.transport.loseConnection()
        elif opcode == 0x9:  # ping
            self._write_frame(0xA, payload)

    def _message(self, message: bytes) -> None:
        self.frames_received += 1
        if self.on_message is not None and self.acked.called and self.on_message(self, message):
            return
        frame = json.loads(message)
        if not self.acked.called:
            kind = frame.get("type")
            ref = frame.get("payload", {}).get("msg_ref")
            if kind == "ACK" and ref == "USER_HELLO":
                self.server_id = frame["payload"].get("server_id")
                self.acked.callback(self)
                if self.discard_after_hello:
                    self._discarding = True
                return
            if kind == "ERROR" and ref == "USER_HELLO":
                self.acked.errback(RuntimeError(f"hello refused: {frame['payload']}"))
                return
        if self.on_frame is not None:
            self.on_frame(self, frame)

    # -- sending

    def _write_frame(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        send_now(self.transport, (frame_header(len(payload), opcode, mask), mask_payload(payload, mask)))

    def send(self, frame: bytes) -> None:
        """Send one SOCP frame (already-encoded JSON) as a text message."""
        self._write_frame(0x1, frame)

    @staticmethod
    def masked(frame: bytes) -> tuple[bytes, bytes]:
        """A text message's wire bytes (header with its mask, masked frame), made ahead of time."""
        return masked_text_frame(frame)

    def send_masked(self, pieces: tuple[bytes, bytes]) -> None:
        """Send what :meth:`masked` made (each once: a mask is for one message)."""
        send_now(self.transport, pieces)

    def send_frame(self, type: str, to: str, payload: dict, ts: int | None = None) -> None:
        self.send(wire.encode_frame(type, self.user_id, to, wire.now_ms() if ts is None else ts, payload))

    def hello(self) -> defer.Deferred:
        """A plain first-use USER_HELLO; the Deferred fires on its ACK."""
        self.send_frame("USER_HELLO", "*", {"client": self.client_name, "pubkey": self.pubkey})
        return self.acked

    def close(self) -> None:
        if self.transport is not None and self.transport.connected:
            self._write_frame(0x8, (1000).to_bytes(2, "big"))
            self.transport.loseConnection()


class _UserFactory(ClientFactory):
    def __init__(self, user: RawUser) -> None:
        self.user = user

    def buildProtocol(self, addr):
        return self.user

    def clientConnectionFailed(self, connector, reason) -> None:
        if not self.user.opened.called:
            self.user.opened.errback(reason.value)


async def connect_user(url: str, user: RawUser, hello: bool = True, timeout: float = 30.0) -> RawUser:
    """Open ``user``'s WebSocket to ``url`` (ws://127.0.0.1:PORT) and say hello."""
    from twisted.internet import reactor

    host, port = url.removeprefix("ws://").rsplit(":", 1)
    reactor.connectTCP(host, int(port), _UserFactory(user), timeout=timeout)
    await user.opened
    if hello:
        await user.hello()
    return user


def close_users(users: list[RawUser]) -> None:
    """Close every user's WebSocket (code 1000)."""
    for user in users:
        user.close()


# ------------------------------------------------------------------ SOCP content, pre-signed


class UserKey:
    """A user key and its wire forms (many bench users may share one key: TOFU pins per id)."""

    def __init__(self, key) -> None:
        self.key = key
        self.public = key.public_key()
        self.text = crypto.encode_public_key(key)


def make_dm(sender: str, sender_key: UserKey, recipient: str, recipient_key: UserKey) -> tuple[str, bytes]:
    """A conforming MSG_DIRECT (OAEP to the recipient, content_sig by the sender): (ciphertext, frame)."""
    ts = wire.now_ms()
    ciphertext = crypto.oaep_encrypt(recipient_key.public, os.urandom(32) + b" benchmark message")
    content_sig = crypto.sign_content(sender_key.key, crypto.dm_preimage(ciphertext, sender, recipient, ts))
    payload = {"ciphertext": ciphertext, "sender_pub": sender_key.text, "content_sig": content_sig}
    return ciphertext, wire.encode_frame("MSG_DIRECT", sender, recipient, ts, payload)


def make_public(
    sender: str, sender_key: UserKey, recipient: str, recipient_key: UserKey
) -> tuple[str, bytes]:
    """One member's copy of a /all message (MSG_PUBLIC_CHANNEL): (ciphertext, frame)."""
    ts = wire.now_ms()
    ciphertext = crypto.oaep_encrypt(recipient_key.public, os.urandom(32) + b" benchmark broadcast")
    content_sig = crypto.sign_content(sender_key.key, crypto.public_preimage(ciphertext, sender, ts))
    payload = {"ciphertext": ciphertext, "sender_pub": sender_key.text, "content_sig": content_sig}
    return ciphertext, wire.encode_frame("MSG_PUBLIC_CHANNEL", sender, recipient, ts, payload)


def presign(jobs: list[tuple], make: Callable[..., tuple[str, bytes]] = make_dm) -> list[tuple[str, bytes]]:
    """Build many frames in parallel threads (each costs one RSA signature)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(lambda job: make(*job), jobs))


async def two_servers(work: Path, keys: list, log_level: str = "info") -> list[ServerProcess]:
    """Servers A and B, B joined to A, linked."""
    return await start_mesh(work, 2, keys, log_level=log_level, settle=0.5)
