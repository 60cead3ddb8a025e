"""What the user sees of a transfer: the progress line on a terminal, and file names made safe."""

from __future__ import annotations

from typing import Any

from socp_tw.client.text import one_line

PROGRESS_INTERVAL = 0.2  # at most 5 progress updates a second


def display_name(name: str) -> str:
    """A sender-chosen file name made safe to print (escaped, at most 200 characters)."""
    return one_line(name, 200)


class Progress:
    """One updating line on a terminal (``ui.status``), at most 5 updates a second; nothing otherwise."""

    def __init__(self, ui: Any, clock: Any, label: str, total: int) -> None:
        self._status = getattr(ui, "status", None) if getattr(ui, "interactive", False) else None
        self._clock = clock
        self._label = label
        self._total = total
        self.started = clock.seconds()
        self._last = -1.0

    def update(self, done: int, force: bool = False) -> None:
        if self._status is None:
            return
        now = self._clock.seconds()
        if not force and now - self._last < PROGRESS_INTERVAL:
            return
        self._last = now
        self._status(self.line(done, now))

    def line(self, done: int, now: float | None = None) -> str:
        """``[FILE] sending <name>: 42% 123.4 KiB/s ETA 5s``."""
        now = self._clock.seconds() if now is None else now
        elapsed = max(now - self.started, 1e-9)
        percent = 100 if self._total == 0 else int(done * 100 / self._total)
        rate = done / elapsed
        eta = f"{(self._total - done) / rate:.0f}s" if rate > 0 else "?"
        return f"{self._label}: {percent}% {rate / 1024:.1f} KiB/s ETA {eta}"

    def rate_kib(self, done: int) -> float:
        return done / max(self._clock.seconds() - self.started, 1e-9) / 1024
