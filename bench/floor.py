"""The crypto floor: what the RSA-4096 operations SOCP forces cost on this machine, now.

Every benchmark imports this and measures the floor in the same run as its workload
(before and after it).  Measured with the code the server runs (``socp_tw.crypto``):

* ``sign``: RSASSA-PSS-SHA256 signature (a server's transport ``sig``, a content_sig);
* ``verify``: PSS verification (any salt length, as the server checks);
* ``encrypt`` / ``decrypt``: RSA-OAEP-SHA256 of one 446-byte block.

Each is the CPU time of the calling thread per operation (``time.thread_time``), the
median of several batches: the cost of the operation itself, which other processes on
a shared machine do not inflate the way they inflate wall-clock time.

Throughput needs one more number: what a signature costs when **every core signs at
once**, which is what a saturated server makes the machine do.  On a machine whose cores
scale perfectly it equals ``sign``; on the KVM guests these benchmarks run on it is 5-20 %
more (cores that share caches or a host core).  ``sign_all_cores`` is measured with one
*process* per core signing flat out (no GIL, no thread pool: the best the machine can do),
as each process's CPU time per signature, so other load does not inflate it either.  The
machine's signing capacity is ``cores / sign_all_cores``; ``cores / sign`` (every core as
fast as one alone) is printed beside it.  ``parallel_signs_per_s`` is the wall-clock rate
those processes reached (how much of the machine was free).

    python bench/floor.py        # print the floor alone
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from _harness import ROOT  # noqa: F401  (puts the tree on sys.path)

from socp_tw import crypto, wire

BATCHES = 5


@dataclass(frozen=True)
class Floor:
    """Seconds per RSA-4096 operation, and the machine's parallel signing rate."""

    sign: float
    verify: float
    encrypt: float
    decrypt: float
    sign_all_cores: float  # CPU seconds per signature while one process per core signs
    parallel_signs_per_s: float  # their wall-clock rate (informational: machine availability)
    cores: int

    @property
    def signs_per_s(self) -> float:
        """The machine's signing capacity: every core signing at once, at the CPU cost measured so."""
        return self.cores / self.sign_all_cores

    @property
    def signs_per_s_if_linear(self) -> float:
        """What the capacity would be if every core signed as fast as one alone (``cores / sign``)."""
        return self.cores / self.sign

    def combine(self, other: Floor) -> Floor:
        """The mean of two measurements (before and after a workload)."""
        return Floor(
            (self.sign + other.sign) / 2,
            (self.verify + other.verify) / 2,
            (self.encrypt + other.encrypt) / 2,
            (self.decrypt + other.decrypt) / 2,
            (self.sign_all_cores + other.sign_all_cores) / 2,
            (self.parallel_signs_per_s + other.parallel_signs_per_s) / 2,
            self.cores,
        )

    def cpu_seconds(self, signs: float = 0, verifies: float = 0) -> float:
        """Single-thread seconds of ``signs`` signatures and ``verifies`` verifications."""
        return signs * self.sign + verifies * self.verify

    def parallel_seconds(self, signs: float = 0, verifies: float = 0) -> float:
        """Wall seconds for that work spread evenly over every core."""
        return self.cpu_seconds(signs, verifies) / self.cores

    def describe(self) -> str:
        return (
            f"RSA-4096 on this machine now: sign {self.sign * 1e3:.2f} ms, "
            f"verify {self.verify * 1e3:.3f} ms, "
            f"OAEP encrypt {self.encrypt * 1e3:.3f} ms, decrypt {self.decrypt * 1e3:.2f} ms; "
            f"sign with every core signing {self.sign_all_cores * 1e3:.2f} ms; "
            f"capacity {self.signs_per_s:.0f} signatures/s on {self.cores} cores "
            f"({self.signs_per_s_if_linear:.0f}/s if cores scaled linearly; wall-clock rate reached "
            f"now: {self.parallel_signs_per_s:.0f}/s)"
        )


def _per_call(f: Callable[[], object], rounds: int) -> float:
    """Median over BATCHES of the mean thread CPU seconds per call of ``rounds`` calls."""
    samples = []
    for _ in range(BATCHES):
        start = time.thread_time()
        for _ in range(rounds):
            f()
        samples.append((time.thread_time() - start) / rounds)
    return statistics.median(samples)


def _sign_on_request(key_der: bytes, data: bytes, commands, barrier, results) -> None:
    """One process: for each ``seconds`` read from ``commands``, sign ``data`` flat out from the
    barrier until that long after it and report (count, CPU seconds); stop on ``None``."""
    key = crypto.load_private_key(key_der)
    key.sign(data, crypto.pss._PSS_SEND, crypto.pss._SHA256)  # warm: first use loads OpenSSL's tables
    while (seconds := commands.recv()) is not None:
        barrier.wait()
        stop = time.perf_counter() + seconds
        cpu = time.thread_time()
        count = 0
        while time.perf_counter() < stop:
            key.sign(data, crypto.pss._PSS_SEND, crypto.pss._SHA256)
            count += 1
        results.put((count, time.thread_time() - cpu))


class SigningProcesses:
    """One process per core, kept waiting, that all sign flat out at once when asked.

    Separate processes, so neither the GIL nor a pool is measured.  Kept alive so that a
    benchmark can take this part of the floor many times *during* its run (between slices
    of its workload) without paying for spawning them each time."""

    def __init__(self, key, data: bytes, processes: int) -> None:
        context = multiprocessing.get_context("spawn")
        self._barrier = context.Barrier(processes + 1)
        self._results = context.Queue()
        key_der = crypto.private_key_to_pkcs8_der(key)
        self._commands = []
        self._workers = []
        for _ in range(processes):
            ours, theirs = context.Pipe()
            arguments = (key_der, data, theirs, self._barrier, self._results)
            worker = context.Process(target=_sign_on_request, args=arguments, daemon=True)
            worker.start()
            self._commands.append(ours)
            self._workers.append(worker)

    def measure(self, seconds: float) -> tuple[float, float]:
        """(CPU seconds per signature, signatures per wall second) with every process signing
        for ~``seconds`` (blocks the caller that long)."""
        if not self._workers or not all(worker.is_alive() for worker in self._workers):
            raise RuntimeError("a signing process is not running (closed, or it died)")
        for command in self._commands:
            command.send(seconds)
        self._barrier.wait(timeout=60)
        started = time.perf_counter()
        reports = [self._results.get(timeout=60 + seconds) for _ in self._workers]
        wall = time.perf_counter() - started
        per_signature = statistics.median(cpu / count for count, cpu in reports if count)
        return per_signature, sum(count for count, _ in reports) / wall

    def close(self) -> None:
        """Stop the processes (idempotent; one that died already is simply reaped)."""
        for command in self._commands:
            try:
                command.send(None)
            except OSError:
                pass  # that process is gone
        for worker in self._workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.terminate()
        self._commands = []
        self._workers = []


def signing_data(key) -> bytes:
    """A USER_DELIVER-sized payload, canonical: what a server signs per message."""
    return wire.canonical(
        {
            "ciphertext": wire.b64u_encode(os.urandom(512)),
            "sender": wire.new_uuid4(),
            "sender_pub": crypto.encode_public_key(key),
            "content_sig": wire.b64u_encode(os.urandom(512)),
        }
    )


def _all_cores_signing(key, data: bytes, processes: int, seconds: float) -> tuple[float, float]:
    """(CPU seconds per signature, signatures per wall second) with ``processes`` processes signing
    flat out at once for ~``seconds``."""
    signers = SigningProcesses(key, data, processes)
    try:
        return signers.measure(seconds)
    finally:
        signers.close()


_KEY = None


def bench_key():
    """One RSA-4096 key for the floor (generated once per process)."""
    global _KEY
    if _KEY is None:
        _KEY = crypto.generate_private_key()
    return _KEY


def path_sampler(signs: int, verifies: int, key=None) -> Callable[[], float]:
    """A callable doing ``signs`` signatures and ``verifies`` verifications one after the other
    (a message's RSA path) and returning their CPU seconds: a floor sample a benchmark can take
    *during* its run, between messages, so that the floor sees the machine as the servers did."""
    key = key or bench_key()
    public = key.public_key()
    data = signing_data(key)
    sig = crypto.pss_sign(key, data)

    def sample() -> float:
        start = time.thread_time()
        for _ in range(signs):
            crypto.pss_sign(key, data)
        for _ in range(verifies):
            crypto.pss_verify(public, data, sig)
        return time.thread_time() - start

    return sample


def measure(key=None, parallel_seconds: float = 1.0) -> Floor:
    """Time each operation now (about 2 s in all)."""
    key = key or bench_key()
    public = key.public_key()
    data = signing_data(key)
    sig = crypto.pss_sign(key, data)
    block = os.urandom(crypto.OAEP_MAX_PLAINTEXT)
    ciphertext = crypto.oaep_encrypt(public, block)
    sign = _per_call(lambda: crypto.pss_sign(key, data), 20)
    verify = _per_call(lambda: crypto.pss_verify(public, data, sig), 200)
    encrypt = _per_call(lambda: crypto.oaep_encrypt(public, block), 200)
    decrypt = _per_call(lambda: crypto.oaep_decrypt(key, ciphertext), 20)
    cores = os.cpu_count() or 1
    sign_all_cores, parallel = _all_cores_signing(key, data, cores, parallel_seconds)
    return Floor(sign, verify, encrypt, decrypt, sign_all_cores, parallel, cores)


if __name__ == "__main__":
    from _harness import machine_description

    print(machine_description())
    print(measure().describe())
