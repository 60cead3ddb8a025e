"""File transfer throughput across two servers, next to the floor set by per-chunk RSA work.

Starts two real servers as separate processes (``python -m twisted socp``) on 127.0.0.1,
B joined to A with ``--peer``; two real clients in this process (Alice on A, Bob on B)
register; Alice sends a file of random bytes (1 MiB by default) to Bob with the client's
``/file`` code path.  The clock runs from the start of ``/file`` until Bob's client has
checked the SHA-256 and renamed the file.

In the same run it times, on this machine, every RSA operation the design forces per
chunk (docs/FILES.md), and prints the throughput those alone would allow: the floor of
the per-chunk cost, whatever the rest of the code does.

    python bench/file_throughput.py [--size BYTES]

Run it from the repository root (or anywhere: it finds the tree it lives in).  It is not
part of the test suite; results go to docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from twisted.internet import defer, task  # noqa: E402

from socp_tw import crypto, wire  # noqa: E402
from socp_tw.auth.scrypt import TEST_SCRYPT  # noqa: E402
from socp_tw.client.app import ClientApp  # noqa: E402
from socp_tw.client.files import CHUNK_BYTES, chunk_count  # noqa: E402


class UI:
    """Collects the client's lines."""

    interactive = False

    def __init__(self) -> None:
        self.lines: list[str] = []

    def show(self, text: str) -> None:
        self.lines.extend(text.split("\n"))

    def ask_password(self, prompt: str) -> defer.Deferred:
        return defer.succeed("bench password 123")

    def find(self, pattern: str) -> str | None:
        return next((line for line in self.lines if re.search(pattern, line)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data_dir: Path, port: int, peer: str | None, log: Path) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "twisted",
        "socp",
        "--bind",
        f"ws://127.0.0.1:{port}",
        "--data-dir",
        str(data_dir),
    ]
    if peer:
        args += ["--peer", peer]
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)


async def until(reactor, condition, what: str, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await task.deferLater(reactor, 0.02, lambda: None)
    return value


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


async def client(reactor, url: str, ui: UI) -> ClientApp:
    app = ClientApp(
        url,
        str(Path(tempfile.mkdtemp()) / "pins.json"),
        ui,
        reactor,
        scrypt_params=TEST_SCRYPT,
        download_dir=tempfile.mkdtemp(),
    )
    app.startService()
    await app.connection.when_open()
    await app.session.register()
    if not ui.find(r"^\[LOGIN SUCCESS\] "):
        raise RuntimeError(f"registration failed: {ui.lines}")
    return app


def timed(f, *args, rounds: int) -> float:
    """Seconds per call of ``f(*args)`` (best of 3 runs of ``rounds`` calls)."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(rounds):
            f(*args)
        best = min(best, (time.perf_counter() - start) / rounds)
    return best


def rsa_floor(sender_key, recipient_key, server_key) -> dict[str, float]:
    """Seconds of RSA per chunk, per party, for the operations the design forces (docs/FILES.md)."""
    alice, bob = wire.new_uuid4(), wire.new_uuid4()
    ts = wire.now_ms()
    plain = os.urandom(CHUNK_BYTES)
    ciphertext = crypto.oaep_encrypt(recipient_key.public_key(), plain)
    preimage = crypto.file_chunk_preimage(ciphertext, "f" * 36, 7, alice, bob, ts)
    content_sig = crypto.sign_content(sender_key, preimage)
    chunk = {"file_id": "f" * 36, "index": 7, "ciphertext": ciphertext, "content_sig": content_sig}
    sender_pub = crypto.encode_public_key(sender_key)
    deliver = {"user_id": bob, **chunk, "sender": alice, "sender_pub": sender_pub, "type": "FILE_CHUNK"}
    delivered = {**chunk, "sender": alice, "sender_pub": sender_pub}
    deliver_sig = crypto.sign_payload(server_key, deliver)
    delivered_sig = crypto.sign_payload(server_key, delivered)
    spub, rpub, vpub = sender_key.public_key(), recipient_key.public_key(), server_key.public_key()
    fast, slow = 400, 60
    encrypt = timed(crypto.oaep_encrypt, rpub, plain, rounds=fast)
    sign_content = timed(crypto.sign_content, sender_key, preimage, rounds=slow)
    verify_content = timed(crypto.verify_content_sig, spub, preimage, content_sig, rounds=fast)
    sign_deliver = timed(crypto.sign_payload, server_key, deliver, rounds=slow)
    verify_deliver = timed(crypto.verify_payload, vpub, deliver, deliver_sig, rounds=fast)
    sign_delivered = timed(crypto.sign_payload, server_key, delivered, rounds=slow)
    verify_delivered = timed(crypto.verify_payload, vpub, delivered, delivered_sig, rounds=fast)
    decrypt = timed(crypto.oaep_decrypt, recipient_key, ciphertext, rounds=slow)
    return {
        "sender (OAEP encrypt + content_sig)": encrypt + sign_content,
        "server A (verify content_sig + sign SERVER_DELIVER)": verify_content + sign_deliver,
        "server B (verify A's sig + content_sig, sign FILE_CHUNK)": verify_deliver
        + verify_content
        + sign_delivered,
        "receiver (verify B's sig + content_sig, OAEP decrypt)": verify_delivered + verify_content + decrypt,
    }


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import cryptography
    from cryptography.hazmat.backends.openssl.backend import backend

    return (
        f"{os.cpu_count()} CPUs ({model}), Python {platform.python_version()}, "
        f"cryptography {cryptography.__version__} ({backend.openssl_version_text()})"
    )


async def main(reactor, size: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="socp-bench-"))
    port_a, port_b = free_port(), free_port()
    url_a, url_b = f"ws://127.0.0.1:{port_a}", f"ws://127.0.0.1:{port_b}"
    servers = [start_server(work / "a", port_a, None, work / "a.log")]
    await until(reactor, lambda: listening(port_a), "server A")
    servers.append(start_server(work / "b", port_b, url_a, work / "b.log"))
    apps: list[ClientApp] = []
    try:
        await until(reactor, lambda: listening(port_b), "server B")
        alice_ui, bob_ui = UI(), UI()
        alice = await client(reactor, url_a, alice_ui)
        apps.append(alice)
        bob = await client(reactor, url_b, bob_ui)
        apps.append(bob)
        bob_id = bob.session.user_id
        await until(reactor, lambda: bob_id in alice.session.presence, "Bob's presence at Alice (the mesh)")
        path = work / "payload.bin"
        data = os.urandom(size)
        path.write_bytes(data)
        print(
            f"file throughput: {size} bytes ({chunk_count(size)} chunks of <= {CHUNK_BYTES} bytes), "
            f"Alice on server A -> Bob on server B"
        )
        print(f"machine: {machine()}")
        start = time.perf_counter()
        await alice.session.send_file(bob_id, str(path))
        sent = time.perf_counter() - start
        line = await until(
            reactor, lambda: bob_ui.find(r"^\[FILE\] (received|transfer) "), "Bob's result", 1800
        )
        elapsed = time.perf_counter() - start
        match = re.search(r" -> (.+) \(\d+ bytes, sha256 ok\)$", line)
        if (
            match is None
            or hashlib.sha256(Path(match.group(1)).read_bytes()).digest() != hashlib.sha256(data).digest()
        ):
            raise RuntimeError(f"the transfer failed: {line} / {alice_ui.lines[-1]}")
        achieved = size / elapsed / 1024
        print(
            f"transfer: {elapsed:.2f} s end to end = {achieved:.1f} KiB/s "
            f"(sender done after {sent:.2f} s; byte-identical, sha256 ok)"
        )
        floor = rsa_floor(alice.session._key, bob.session._key, bob.session._key)
        per_chunk = sum(floor.values())
        cores = os.cpu_count() or 1
        print("RSA per chunk, measured now (best of 3):")
        for party, seconds in floor.items():
            print(f"  {party:58s} {seconds * 1000:6.2f} ms")
        ceiling_all = CHUNK_BYTES * cores / per_chunk / 1024
        ceiling_one = CHUNK_BYTES / per_chunk / 1024
        print(
            f"RSA floor: {per_chunk * 1000:.2f} ms of RSA per chunk in all -> "
            f"at most {ceiling_all:.1f} KiB/s on {cores} cores ({ceiling_one:.1f} KiB/s on one)"
        )
        print(f"achieved / RSA floor ({cores} cores): {achieved / ceiling_all:.2f}")
    finally:
        for app in apps:
            await app.quit()
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024 * 1024, help="file size in bytes (default 1 MiB)")
    options = parser.parse_args()
    task.react(lambda reactor: defer.Deferred.fromCoroutine(main(reactor, options.size)))
