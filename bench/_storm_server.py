"""Launch ``python -m twisted ...`` for ``connect_storm.py``: room for N users, and cProfile on signal.

The server's code is unchanged; before it starts this launcher may

* raise the connection limits (``$SOCP_STORM_MAX_CONNECTIONS``): ``max_connections`` and
  ``max_local_users`` default to 10,000, so a 10,000-user storm would leave no room for the
  benchmark's DM users.  The shared ``DEFAULT_LIMITS`` instance is changed in place before any
  service is built, so every default that reads it sees the new value.
* profile the reactor thread (``$SOCP_STORM_PROFILE``, a path prefix): SIGUSR1 starts a
  ``cProfile`` run, SIGUSR2 stops it and writes ``<prefix>.<k>.prof`` (k = 0, 1, ...).  Only the
  main thread is profiled, in its CPU time; the signing pool's RSA work shows as CPU time outside it.
* log the cyclic garbage collector's pauses (``$SOCP_STORM_GC_LOG``, a path): one line per
  collection of 5 ms or more, ``<monotonic s> <generation> <ms> <objects collected>``.
"""

from __future__ import annotations

import cProfile
import gc
import os
import runpy
import signal
import sys
import time


def _raise_limits(value: str) -> None:
    from socp_tw.limits import defaults

    count = int(value)
    limits = defaults.DEFAULT_LIMITS
    object.__setattr__(limits, "max_connections", max(count, limits.max_connections))
    object.__setattr__(limits, "max_local_users", max(count, limits.max_local_users))


class _Profiling:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.profile: cProfile.Profile | None = None
        self.count = 0

    def start(self, signum, frame) -> None:
        if self.profile is None:
            self.profile = cProfile.Profile(time.thread_time)  # CPU, not wall: idle polls cost 0
            self.profile.enable()

    def stop(self, signum, frame) -> None:
        if self.profile is not None:
            self.profile.disable()
            self.profile.dump_stats(f"{self.prefix}.{self.count}.prof")
            self.count += 1
            self.profile = None


def _log_gc_pauses(path: str) -> None:
    out = open(path, "a", buffering=1)  # open for the life of the process
    started: list[float] = []

    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started:
            pause = (time.perf_counter() - started[0]) * 1e3
            if pause >= 5:
                out.write(f"{time.monotonic():.3f} {info['generation']} {pause:.1f} {info['collected']}\n")

    gc.callbacks.append(callback)


if __name__ == "__main__":
    if os.environ.get("SOCP_STORM_GC_LOG"):
        _log_gc_pauses(os.environ["SOCP_STORM_GC_LOG"])
    if os.environ.get("SOCP_STORM_MAX_CONNECTIONS"):
        _raise_limits(os.environ["SOCP_STORM_MAX_CONNECTIONS"])
    if os.environ.get("SOCP_STORM_PROFILE"):
        profiling = _Profiling(os.environ["SOCP_STORM_PROFILE"])
        signal.signal(signal.SIGUSR1, profiling.start)
        signal.signal(signal.SIGUSR2, profiling.stop)
    sys.argv = ["twisted", *sys.argv[1:]]
    runpy.run_module("twisted", run_name="__main__")
