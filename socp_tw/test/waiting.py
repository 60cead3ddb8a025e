"""Waiting for a condition in end-to-end tests: one event-driven helper, one polling helper.

:func:`wait_until` re-checks its condition after anything it can see happen: a log event
(servers and clients log through twisted.logger), a mesh or presence change of the servers
it is given, or a :func:`changed` call from a test double (the recording UI, a raw user
receiving a frame).  :func:`poll_until` is for state no event announces, such as a client
session's tables or a file on disk: it re-checks every 20 ms.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from socp_tw.interfaces import IPresenceObserver

#: Seconds a wait gives its condition unless told otherwise.
TIMEOUT = 20.0
#: How often :func:`poll_until` looks again.
POLL_INTERVAL = 0.02

_pokes: set[Callable[[], None]] = set()


def changed() -> None:
    """Tell every pending :func:`wait_until` to check its condition again (soon, not now)."""
    for poke in list(_pokes):
        poke()


def wait_until(
    check: Callable[[], Any], servers: Iterable[Any] = (), timeout: float = TIMEOUT, what: str = "condition"
) -> Deferred:
    """Fire with ``check()``'s value once it is truthy, re-checking after every log event,
    :func:`changed` call, and mesh or presence change of ``servers`` (no polling); fail
    with a TimeoutError naming ``what`` after ``timeout`` seconds."""
    done: Deferred = Deferred()
    state: dict[str, Any] = {"scheduled": None}

    def finish(result: Any) -> None:
        globalLogPublisher.removeObserver(on_event)
        _pokes.discard(on_event)
        if state["scheduled"] is not None and state["scheduled"].active():
            state["scheduled"].cancel()
        if timer.active():
            timer.cancel()
        if not done.called:
            if isinstance(result, Exception):
                done.errback(result)
            else:
                done.callback(result)

    def evaluate() -> None:
        state["scheduled"] = None
        if done.called:
            return
        try:
            value = check()
        except Exception as e:
            finish(e)
            return
        if value:
            finish(value)

    def on_event(*_args: Any) -> None:
        # Checked in a later turn: the change that logged or poked is complete by then.
        if not done.called and state["scheduled"] is None:
            state["scheduled"] = reactor.callLater(0, evaluate)

    @implementer(IPresenceObserver)
    class _Poke:
        def user_online(self, entry: Any) -> None:
            on_event()

        def user_offline(self, entry: Any) -> None:
            on_event()

    for server in servers:
        server.mesh.add_change_observer(on_event)
        server.presence.add_observer(_Poke())
    globalLogPublisher.addObserver(on_event)
    _pokes.add(on_event)
    timer = reactor.callLater(timeout, lambda: finish(DeferredTimeout(f"timed out waiting for {what}")))
    on_event()
    return done


@inlineCallbacks
def poll_until(
    condition: Callable[[], Any], what: str, timeout: float = TIMEOUT, interval: float = POLL_INTERVAL
):
    """Return ``condition()``'s value (or that of the Deferred it returns) once it is truthy,
    looking every ``interval`` s; fail after ``timeout`` seconds.  Only for state that no event
    announces (see :func:`wait_until`)."""
    deadline = reactor.seconds() + timeout
    while True:
        value = condition()
        if isinstance(value, Deferred):
            value = yield value
        if value:
            return value
        if reactor.seconds() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        yield deferLater(reactor, interval, lambda: None)


def until_listed(session: Any, user_id: str, timeout: float = TIMEOUT) -> Deferred:
    """Wait until ``session``'s server lists ``user_id`` as online, asking it (LIST_REQUEST, as
    ``/list`` does) every 50 ms: our client hears of other users only when it follows them."""

    def listed() -> Deferred:
        return session.refresh_directory().addCallback(lambda online: bool(online and user_id in online))

    return poll_until(listed, f"{user_id} listed by {session.server_url}", timeout, interval=0.05)
