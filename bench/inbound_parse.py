"""The inbound WebSocket fast path (``protocols/frames.py``) measured alone: CPU per frame parsed
by the fast path and by Autobahn's own parser, side by side in one process, in turns.

Each round feeds ``--frames`` masked DM-sized text frames (a MSG_DIRECT of ~2.5 KB, as a client
sends it) to a server protocol over a StringTransport, once with the fast path and once with
it bypassed (the same class as ``test_frames.SlowPathProtocol``), in alternating order, and
times the process CPU.  It prints the median per frame of each and the saving as a share of
the servers' CPU per cross-server DM (two inbound frames per DM: client -> A, A -> B), which
``dm_throughput.py`` prints as "server CPU per message" (``--per-message-ms``).

    python bench/inbound_parse.py [--frames 20000] [--rounds 9] [--per-message-ms 3.7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from autobahn.twisted.websocket import WebSocketServerProtocol

from socp_tw import crypto, wire
from socp_tw.protocols.frames import frame_header, mask_payload
from socp_tw.protocols.websocket import SOCPServerProtocol
from socp_tw.services.hub import Hub
from socp_tw.test.servers import open_server_link
from socp_tw.testing import NeverSigner


class AutobahnOnly(SOCPServerProtocol):
    def processData(self) -> bool:
        return WebSocketServerProtocol.processData(self)


class _Case:
    """What ``open_server_link`` needs of a test case."""

    def __init__(self) -> None:
        self.cleanups: list = []

    def addCleanup(self, f, *args, **kwargs) -> None:
        self.cleanups.append((f, args, kwargs))

    def assertIn(self, member, container) -> None:
        assert member in container, (member, container)


def dm_frame() -> bytes:
    payload = {
        "ciphertext": wire.b64u_encode(os.urandom(512)),
        "sender_pub": wire.b64u_encode(os.urandom(550)),
        "content_sig": wire.b64u_encode(os.urandom(512)),
    }
    data = wire.encode_frame("MSG_DIRECT", wire.new_uuid4(), wire.new_uuid4(), wire.now_ms(), payload, "")
    mask = os.urandom(4)
    return frame_header(len(data), 0x1, mask) + mask_payload(data, mask)


def per_frame(protocol_class: type, chunks: list[bytes]) -> float:
    case = _Case()
    protocol, _transport = open_server_link(case, Hub(NeverSigner()), protocol_class, max_frame_bytes=262144)
    seen = []
    protocol.onMessage = lambda payload, binary: seen.append(len(payload))
    start = time.process_time()
    for chunk in chunks:
        protocol.dataReceived(chunk)
    elapsed = time.process_time() - start
    assert len(seen) == len(chunks), (len(seen), len(chunks))
    for f, args, kwargs in case.cleanups:
        f(*args, **kwargs)
    return elapsed / len(chunks)


def main(options) -> None:
    frames = [dm_frame() for _ in range(64)]
    chunks = [frames[i % len(frames)] for i in range(options.frames)]
    results: dict[str, list[float]] = {"fast path": [], "Autobahn": []}
    order = [("fast path", SOCPServerProtocol), ("Autobahn", AutobahnOnly)]
    for r in range(options.rounds):
        for name, cls in order if r % 2 == 0 else order[::-1]:
            results[name].append(per_frame(cls, chunks))
    fast, slow = (statistics.median(results[n]) for n in ("fast path", "Autobahn"))
    size, n, rounds = len(frames[0]), options.frames, options.rounds
    print(f"inbound parse of a {size}-byte masked DM frame, {n} frames x {rounds} rounds:")
    for name, values in results.items():
        low, high = min(values) * 1e6, max(values) * 1e6
        print(f"  {name}: median {statistics.median(values) * 1e6:.1f} us per frame ({low:.1f}-{high:.1f})")
    saving = 2 * (slow - fast)
    print(
        f"  saving per cross-server DM (2 inbound frames): {saving * 1e6:.1f} us ="
        f" {saving * 1e3 / options.per_message_ms * 100:.1f} % of"
        f" {options.per_message_ms} ms server CPU per DM"
    )
    print(f"  (RSA-4096 sign on this machine now: {crypto_sign_ms():.2f} ms)")


def crypto_sign_ms() -> float:
    key = crypto.generate_private_key()
    start = time.process_time()
    for _ in range(20):
        crypto.sign_payload(key, {"x": 1})
    return (time.process_time() - start) / 20 * 1e3


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--per-message-ms", type=float, default=3.7, help="server CPU per DM (dm_throughput.py)"
    )
    main(parser.parse_args())
