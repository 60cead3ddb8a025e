"""Launch ``python -m twisted ...`` with the inbound WebSocket fast path switched off.

Used to measure ``socp_tw.protocols.frames.FastFrames.processData`` alone (docs/BENCHMARKS.md,
"The inbound fast path, measured alone"): every frame is parsed by Autobahn's own
``processData``, as if the fast path did not exist.  Outgoing frames are unchanged.  Run a
benchmark with ``SOCP_BENCH_LAUNCHER=bench/_autobahn_only.py`` and without it, in turns.
"""

from __future__ import annotations

import runpy
import sys

from autobahn.websocket.protocol import WebSocketProtocol

from socp_tw.protocols import frames

frames.FastFrames.processData = WebSocketProtocol.processData  # type: ignore[method-assign]

sys.argv[0] = "twisted"
runpy.run_module("twisted", run_name="__main__", alter_sys=True)
