"""The ``ts`` window: :func:`check_ts_window` refuses user content whose ``ts`` is too far from now."""

from __future__ import annotations

from socp_tw import wire

__all__ = ["StaleTimestamp", "check_ts_window"]


class StaleTimestamp(wire.BadTimestamp):
    """User content whose ``ts`` is too far from the server's clock (a replay or a broken clock)."""

    code = "BAD_TS"


def _seconds_text(ms: int) -> str:
    return f"{ms / 1000:g} s" if ms < 600_000 else f"{ms / 60_000:.1f} min"


def check_ts_window(ts_ms: int, now_ms: int, window_ms: int = 300_000) -> None:
    """Raise :class:`StaleTimestamp` unless ``now_ms - window_ms <= ts_ms <= now_ms + window_ms``.

    Both edges are accepted. The detail says how far off the timestamp is and in
    which direction, so an honest client with a bad clock can tell.
    """
    if isinstance(ts_ms, bool) or not isinstance(ts_ms, int):
        raise wire.BadTimestamp("ts must be integer milliseconds", "ts")
    offset = ts_ms - now_ms
    if abs(offset) <= window_ms:
        return
    direction = "ahead of" if offset > 0 else "behind"
    off, window = _seconds_text(abs(offset)), _seconds_text(window_ms)
    raise StaleTimestamp(f"ts is {off} {direction} server time; the window is ±{window}", "ts")
