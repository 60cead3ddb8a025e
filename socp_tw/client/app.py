"""Wiring of ``socp-client``: options → pins, session, connection, console on stdio."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ReactorNotRunning
from twisted.python import usage

from socp_tw import crypto
from socp_tw.auth.scrypt import DEFAULT_SCRYPT, ScryptParams
from socp_tw.client.connection import DEFAULT_RETRY_POLICY, Connection
from socp_tw.client.console import Console
from socp_tw.client.options import Options
from socp_tw.client.pins import PinFileError, PinStore
from socp_tw.client.session import ClientSession
from socp_tw.client.terminal import TerminalEcho, terminal_protocol
from socp_tw.logs import get_logger
from socp_tw.workers import ThreadPoolWorkers

_log = get_logger("socp_tw.client.app")


class ClientApp(MultiService):
    """The client's services: a small crypto thread pool and the server connection.

    ``session`` is the object the console drives; :meth:`quit` closes the WebSocket
    cleanly, stops everything and then calls ``on_stopped`` (the reactor's stop in
    :func:`main`). ``tls_context`` says how a ``wss://`` server is verified (from
    ``tls.client_context``; default: the system's trust store and the URL's host).
    """

    def __init__(
        self,
        server_url: str,
        pins_path: str,
        ui: Any,
        reactor: Any = None,
        *,
        password: str | None = None,
        workers: Any = None,
        scrypt_params: ScryptParams = DEFAULT_SCRYPT,
        key_factory: Callable[[], RSAPrivateKey] = crypto.generate_private_key,
        retry_policy: Callable[[int], float] = DEFAULT_RETRY_POLICY,
        endpoint: Any = None,
        tls_context: Any = None,
        **session_options: Any,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        if workers is None:
            workers = ThreadPoolWorkers(size=2, reactor=reactor)
        if isinstance(workers, ThreadPoolWorkers):
            workers.setServiceParent(self)
        self.workers = workers
        self.pins = PinStore(pins_path)
        self.session = ClientSession(
            ui,
            self.pins,
            server_url,
            workers=workers,
            clock=reactor,
            password=password,
            scrypt_params=scrypt_params,
            key_factory=key_factory,
            **session_options,
        )
        self.connection = Connection(
            server_url,
            self.session,
            reactor,
            endpoint=endpoint,
            retry_policy=retry_policy,
            tls_context=tls_context,
        )
        self.connection.setServiceParent(self)
        self.session.quit_hook = self.quit
        self.on_stopped: Callable[[], Any] | None = None
        self._stopping: Deferred | None = None

    def quit(self) -> Deferred:
        """Close cleanly and stop (idempotent); fires when everything is stopped."""
        if self._stopping is None:
            self._stopping = self._stop()
        return self._stopping

    def _stop(self) -> Deferred:
        done = self.stopService() if self.running else succeed(None)

        def finished(result: object) -> object:
            self.session.shutdown()
            if self.on_stopped is not None:
                self.on_stopped()
            return result

        return done.addBoth(finished)


def app_from_options(config: Options, ui: Any, reactor: Any, **overrides: Any) -> ClientApp:
    """The :class:`ClientApp` that parsed ``config`` describes (``overrides``: tests' keys, scrypt, ...)."""
    return ClientApp(
        config["server"],
        config["pins-file"],
        ui,
        reactor,
        password=config["password"],
        tls_context=config["tls-context"],
        download_dir=config["download-dir"],
        **overrides,
    )


def _start_logging(path: str | None) -> None:
    """Send the client's log to ``path`` (never to the terminal, which is the user interface)."""
    from twisted.logger import globalLogBeginner, textFileLogObserver

    observers: list = []
    if path:
        observers.append(textFileLogObserver(open(path, "a", encoding="utf-8")))
    else:
        observers.append(lambda event: None)
    globalLogBeginner.beginLoggingTo(observers, discardBuffer=True, redirectStandardIO=False)


def main(argv: list[str] | None = None) -> int:
    """``socp-client --server ws://HOST:PORT [...]``; returns the process exit status."""
    config = Options()
    try:
        config.parseOptions(sys.argv[1:] if argv is None else argv)
    except usage.UsageError as e:
        sys.stderr.write(f"{config}\nsocp-client: {e}\n")
        return 2
    _start_logging(config["log-file"])
    from twisted.internet import reactor, stdio

    interactive = sys.stdout.isatty()
    terminal = TerminalEcho.for_stdin()
    console = Console(interactive=interactive, echo=terminal)
    try:
        app = app_from_options(config, console, reactor)
    except PinFileError as e:
        sys.stderr.write(f"socp-client: {e}\n")
        return 1
    if config["password-file"] and os.stat(config["password-file"]).st_mode & 0o077:
        sys.stderr.write(f"socp-client: warning: {config['password-file']} is readable by other users\n")
    console.commands = app.session
    console.names = app.session.names
    console.on_eof = app.quit

    def stop_reactor(_: object = None) -> None:
        try:
            reactor.stop()
        except ReactorNotRunning:
            pass  # already stopping (Ctrl-C) or stopped

    def stopped() -> None:
        # Let the last lines reach stdout (a pipe may be slow), but don't hang on it.
        closed = console.close()
        closed.addBoth(stop_reactor)
        reactor.callLater(2.0, stop_reactor)

    app.on_stopped = stopped
    reactor.addSystemEventTrigger("before", "shutdown", console.signalled)
    reactor.addSystemEventTrigger("before", "shutdown", app.quit)
    reactor.addSystemEventTrigger("before", "shutdown", console.restore_terminal)
    # Both ends a terminal: the line editor (raw mode); otherwise plain lines, as a script expects.
    editing = interactive and terminal is not None and terminal.raw()
    stdio.StandardIO(terminal_protocol(console) if editing else console, reactor=reactor)
    console.show(f"socp-client: connecting to {config['server']} (type /help for commands)")
    app.startService()
    try:
        reactor.run()
    finally:
        console.restore_terminal()
    return 0
