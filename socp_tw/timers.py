"""Repeating calls on a service's clock, started and stopped the same way everywhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall


def repeating(
    clock: IReactorTime, interval: float, f: Callable[..., Any], *args: Any, now: bool = False
) -> LoopingCall:
    """Call ``f(*args)`` every ``interval`` seconds on ``clock``: first after one interval, or
    at once with ``now``.  (Twisted's ``TimerService`` always calls at once.)"""
    loop = LoopingCall(f, *args)
    loop.clock = clock
    loop.start(interval, now=now)
    return loop


def stop_repeating(loop: LoopingCall | None) -> None:
    """Stop ``loop`` if it is running (a ``LoopingCall`` refuses to stop twice)."""
    if loop is not None and loop.running:
        loop.stop()
