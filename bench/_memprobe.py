"""Launch ``python -m twisted ...`` with a memory probe: SIGUSR1 writes the live heap to a file.

Used by ``idle_memory.py`` only (``SOCP_BENCH_LAUNCHER``).  On SIGUSR1 the server (between
two reactor events) runs a full garbage collection and appends one JSON line to
``$SOCP_MEMPROBE_OUT``: the resident set size and glibc's ``mallinfo2()`` bytes in use
(``uordblks`` + ``hblkhd``: live allocations, without free memory the allocator keeps).
Run with ``PYTHONMALLOC=malloc`` so that Python objects are glibc allocations too and
"in use" covers everything the process holds: Python objects, OpenSSL keys, buffers.
SIGUSR2 does the same after a full ``malloc_trim(0)`` (a diagnostic: what RSS would be if
every free page were handed back now; ``"trimmed": true`` in the record).
The server's code is unchanged; this only adds the signal handlers.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import runpy
import signal
import sys


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def _probe(signum, frame) -> None:
    gc.collect()
    libc = ctypes.CDLL("libc.so.6")
    trimmed = signum == signal.SIGUSR2
    if trimmed:
        libc.malloc_trim(ctypes.c_size_t(0))
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    record = {
        "rss_kib": _rss_kib(),
        "heap_in_use": info.uordblks + info.hblkhd,
        "heap_free_kept": info.fordblks,
        "pymalloc": os.environ.get("PYTHONMALLOC", "pymalloc"),
        "trimmed": trimmed,
    }
    with open(os.environ["SOCP_MEMPROBE_OUT"], "a") as out:
        out.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    signal.signal(signal.SIGUSR1, _probe)
    signal.signal(signal.SIGUSR2, _probe)
    sys.argv = ["twisted", *sys.argv[1:]]
    runpy.run_module("twisted", run_name="__main__")
