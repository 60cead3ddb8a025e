"""What the connection layer tells a session: the link opened or closed, a frame arrived."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from socp_tw import wire
from socp_tw.client.session.core import NotConnected, SessionCore
from socp_tw.client.text import printable
from socp_tw.logs import get_logger
from socp_tw.transport.sender import OrderedSender

_log = get_logger("socp_tw.client.session")


class LinkEvents(SessionCore):
    """The connection layer's calls, and the end of the session."""

    def connection_made(self, link: Any) -> None:
        """A WebSocket to the server is open."""
        self._link = link
        self._generation += 1
        self._sender = OrderedSender(link.send, "server")
        self.logged_in = False
        if not self._want_online:
            self._outage = False
        if not self._outage:  # after an outage the [RECONNECTED] line of the login says we're back
            self.show(f"[CONNECTED] {self.server_url}")
        self._changed()
        if self._want_online and self._key is not None and not self._auth_busy:
            Deferred.fromCoroutine(self._relogin()).addErrback(self._internal_error)

    def connection_lost(self, reason: str) -> None:
        """The WebSocket closed (the connection layer reports the reconnection delay separately)."""
        if self._sender is not None:
            self._sender.close()
        self._link = None
        self._generation += 1
        self._sender = None
        self.logged_in = False
        self.presence.clear()
        self.public_version = None  # a fresh snapshot comes after the next hello
        self.public_members.clear()
        self._following.clear()  # follows and the subscription are per link
        self._public_subscribed = False
        self._fail_waiters(NotConnected(f"the connection to {self.server_url} was lost ({reason})"))
        self.files.connection_lost(reason)

    def reconnect_scheduled(self, delay: float, reason: str, was_connected: bool) -> None:
        """Report a dropped connection or a failed attempt, and when the next one starts.

        One line per outage: the attempts after the first are only logged, until the client
        is back (``[CONNECTED]``, or ``[RECONNECTED]`` once logged in again).  Before the
        first login nothing is lost when the link drops: servers close links that stay
        unidentified (ours after 30 s) and the client quietly redials, so an idle prompt
        isn't flooded with ``[DISCONNECTED]`` lines.
        """
        if was_connected and not self._want_online:
            _log.debug(
                "Idle connection to {url} closed ({reason}); redialling", url=self.server_url, reason=reason
            )
            return
        if self._outage:
            _log.info(
                "Still no connection to {url} ({reason}); retrying in {delay:.1f} s",
                url=self.server_url,
                reason=reason,
                delay=delay,
            )
            return
        self._outage = True
        if was_connected:
            self.show(
                f"[DISCONNECTED] lost the connection to {self.server_url} ({printable(reason)}); "
                f"reconnecting in {delay:.1f} s"
            )
        else:
            self.show(
                f"[DISCONNECTED] cannot connect to {self.server_url} ({printable(reason)}); "
                f"retrying in {delay:.1f} s"
            )

    def frame_rejected(self, error: wire.FrameError) -> None:
        """The server sent something that is not a valid frame: logged and dropped."""
        self._count("bad_frames")
        _log.warn(
            "Dropped a malformed frame from the server: {code} {detail}", code=error.code, detail=error.detail
        )

    def frame_received(self, envelope: wire.Envelope) -> None:
        """Dispatch one frame from the server; never raises."""
        try:
            handler = self._handlers.get(envelope.type)
            if handler is None:
                self._count("ignored." + envelope.type)
                _log.debug("Ignored a {type} frame from the server", type=envelope.type)
                return
            handler(self, envelope)
        except Exception:
            self._count("handler_errors")
            _log.failure("Failed handling a {type} frame", type=envelope.type)

    def shutdown(self) -> None:
        """Cancel every timer (before the reactor stops, or at the end of a test)."""
        self._shut_down = True
        self._changed()
        self._fail_waiters(NotConnected("the client is shutting down"))
        for partial in self._partials.values():
            if partial.timer is not None and partial.timer.active():
                partial.timer.cancel()
        self._partials.clear()
        self.files.shutdown()

    def quit(self) -> Any:
        """``/quit``: close the connection cleanly and stop (the app's ``quit_hook``)."""
        self.show("Bye.")
        if self.quit_hook is not None:
            return self.quit_hook()
        return None

    def send_file(self, user_id: str, path: str) -> Deferred:
        """``/file <uuid> <path>``: stream a file to ``user_id`` (socp_tw/client/files/); fires when done."""
        return Deferred.fromCoroutine(self.files.send(user_id, path)).addErrback(self._internal_error)

    def _on_file_frame(self, envelope: wire.Envelope) -> None:
        self.files.frame_received(envelope)
