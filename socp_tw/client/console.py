"""The user side of ``socp-client``: read commands, print lines, ask for passwords.

:class:`Console` knows nothing of networking: it parses ``/commands``
(socp_tw/client/commands.py) and calls an :class:`ICommands` object (the session), which
prints through :meth:`Console.show` and asks for passwords through
:meth:`Console.ask_password`.

Commands run one at a time, in the order typed: a line that arrives while a command
is still working (generating a key, waiting for the server) waits its turn, unless
that command asked for a password, which the line then answers.  This makes piped
scripts deterministic (``/login`` completes before the ``/tell`` after it runs) while
asynchronous output (incoming messages) keeps flowing.

Two front ends:

- on a terminal (standard input and output both a tty), the line editor of
  socp_tw/client/terminal.py (``twisted.conch.recvline``) is *attached*: it hands whole
  lines to :meth:`lineReceived` and prints everything above the input line, which it
  redraws intact; incoming messages get a timestamp;
- otherwise the console is itself the ``stdio.StandardIO`` protocol, a
  :class:`LineReceiver`: plain lines out, no escape sequences when standard output is not a
  terminal (``interactive=False``), exactly the lines a script expects.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from socp_tw.client.commands import HELP_TEXT, USAGE, CommandLine, ICommands
from socp_tw.client.names import Names
from socp_tw.client.text import one_line, printable
from socp_tw.logs import get_logger

_log = get_logger("socp_tw.client.console")

PROMPT = "> "
MAX_LINE_BYTES = 64 * 1024

__all__ = [
    "HELP_TEXT",
    "MAX_LINE_BYTES",
    "PROMPT",
    "USAGE",
    "Console",
    "EndOfInput",
    "ICommands",
    "format_time",
    "one_line",
    "printable",
]


class EndOfInput(Exception):
    """Standard input closed while a password was expected."""


def format_time(ts: float, now: float) -> str:
    """``HH:MM`` (local time) for a moment of today, ``YYYY-MM-DD HH:MM`` for another day."""
    when, today = time.localtime(ts), time.localtime(now)
    if when[:3] == today[:3]:
        return time.strftime("%H:%M", when)
    return time.strftime("%Y-%m-%d %H:%M", when)


@implementer(IHalfCloseableProtocol)
class Console(CommandLine, LineReceiver):
    """Command queue, prompt and password mode over stdio or an attached line editor.

    Half-closeable: the end of standard input (a finished script) does not close standard
    output, so what the remaining commands print still gets out.
    """

    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE_BYTES

    def __init__(
        self,
        commands: ICommands | None = None,
        *,
        interactive: bool = True,
        echo: Any = None,
        prompt: str = PROMPT,
        scripted: bool | None = None,
        names: Names | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.commands = commands
        self.names = names
        self.interactive = interactive
        # Standard input is a script, not a person (default: no terminal to switch echo on).
        self.scripted = echo is None if scripted is None else scripted
        self._unasked_passwords = 0  # see passwords_not_asked()
        self._echo = echo
        self._clock = clock
        self.editor: Any = None  # the terminal line editor, once attached
        self._prompt = prompt
        self._current_prompt = prompt if interactive else ""
        self._lines: deque[str] = deque()
        self._password_waiters: deque[tuple[Deferred, str]] = deque()
        self._running: Deferred | None = None
        self._partial = False  # a prompt without a newline is on screen (non-interactive)
        self._eof = False
        self._quitting = False
        self.on_eof: Callable[[], Any] | None = None
        self._closed: list[Deferred] = []
        self._disconnected = False

    @property
    def quitting(self) -> bool:
        """``/quit``, Ctrl-C or the end of input: no prompt is drawn any more."""
        return self._quitting

    def attach(self, editor: Any) -> None:
        """Use ``editor`` (socp_tw/client/terminal.py) for all input and output from now on."""
        self.editor = editor
        self.interactive = True
        self.scripted = False
        self._current_prompt = self._prompt
        self._show_prompt()

    # ----------------------------------------------------------- output

    def _write(self, data: str) -> None:
        if self.transport is not None:
            self.transport.write(data.encode("utf-8", "replace"))

    def show(self, text: str) -> None:
        """Print ``text`` (one or more lines) above the prompt, then redraw the prompt."""
        if self.editor is not None:
            self.editor.print_above(text, redraw=not self._quitting)
        elif self.interactive:
            self._write("\r\x1b[K" + text + "\n" + ("" if self._quitting else self._current_prompt))
        else:
            self._write(("\n" if self._partial else "") + text + "\n")
            self._partial = False

    def show_message(self, text: str, ts_ms: int | None = None) -> None:
        """An incoming message: on a terminal with its time in front (``HH:MM``, the date when
        not today; ``ts_ms`` is the message's own time, else now).  A script gets ``text`` as is."""
        if self.editor is None:
            return self.show(text)
        now = self._clock()
        when = ts_ms / 1000 if isinstance(ts_ms, int) and 0 < ts_ms / 1000 < now + 300 else now
        self.show(f"{format_time(when, now)} {text}")

    def status(self, text: str) -> None:
        """On a terminal, put ``text`` on the prompt line, replacing what was there (a progress
        line updating in place; the next :meth:`show` or prompt redraw replaces it).  Otherwise nothing."""
        if self.editor is not None:
            self.editor.status(text)
        elif self.interactive:
            self._write("\r\x1b[K" + text)

    def _show_prompt(self) -> None:
        if self._quitting:
            return
        if self.editor is not None:
            self.editor.set_prompt(self._current_prompt, secret=bool(self._password_waiters))
        elif self.interactive:
            self._write("\r\x1b[K" + self._current_prompt)

    # ------------------------------------------------------- passwords

    def ask_password(self, prompt: str = "Password: ") -> Deferred:
        """Print ``prompt`` and return the next input line, unechoed on a terminal.

        Lines already piped in answer at once (not at the line editor: a line typed ahead there
        was echoed, so it is a command, not a password).  Fails with :class:`EndOfInput` once standard
        input is closed.
        """
        if self.editor is None and self._lines and not self._password_waiters:
            self._write(prompt + "\n")
            return succeed(self._lines.popleft())
        if self._eof:
            return fail(EndOfInput("standard input closed before a password was given"))
        waiter: Deferred = Deferred()
        self._password_waiters.append((waiter, prompt))
        if len(self._password_waiters) == 1:
            self._start_password_prompt(prompt)
        return waiter

    def passwords_not_asked(self, count: int = 1) -> None:
        """A command ended without asking for the ``count`` passwords it normally reads (e.g.
        ``/login`` of the user already logged in).  A script still carries their answers: the
        next ``count`` lines that are not known commands are dropped unread, so a password is
        never run (and echoed back in an error) as a command.  Nothing on a terminal: a
        person who saw no prompt typed no password."""
        if self.scripted:
            self._unasked_passwords = count

    def _start_password_prompt(self, prompt: str) -> None:
        if self._echo is not None and self.editor is None:
            self._echo.disable()
        if self.interactive:
            self._current_prompt = prompt
            self._show_prompt()
        else:
            self._write(("\n" if self._partial else "") + prompt)
            self._partial = True

    def _answer_password(self, line: str) -> None:
        waiter, _ = self._password_waiters.popleft()
        if self._echo is not None and self.editor is None:
            self._echo.restore()
        if self.editor is None:
            self._write("\n")  # the Enter key was not echoed (or the line came from a pipe)
        self._partial = False
        self._current_prompt = self._prompt if self.interactive else ""
        if self._password_waiters:
            self._start_password_prompt(self._password_waiters[0][1])
        elif self.editor is not None:
            self._show_prompt()
        waiter.callback(line)

    # ---------------------------------------------------------- input

    def lineReceived(self, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        if self._password_waiters:
            self._answer_password(text)
        else:
            self._lines.append(text)
        self._pump()

    def lineLengthExceeded(self, line: bytes) -> None:
        self.show(f"[ERROR] input line longer than {self.MAX_LENGTH} bytes ignored")
        return None

    def _pump(self) -> None:
        while self._running is None and not self._password_waiters and self._lines:
            line = self._lines.popleft()
            if self._unasked_passwords:
                self._unasked_passwords -= 1
                if self._handler(line) is None:
                    _log.debug("Dropped a script line answering a password prompt that was not needed")
                    continue
                self._unasked_passwords = 0
            self._dispatch(line)
        if self._eof and self._running is None and not self._lines:
            self._end_of_input()

    def _dispatch(self, line: str) -> None:
        result = self.run_line(line)
        if isinstance(result, Deferred) and not result.called:
            self._running = result
            result.addBoth(self._command_done)
        else:
            if isinstance(result, Deferred):
                result.addErrback(self._command_failed)
            self._show_prompt()

    def _command_done(self, result: object) -> None:
        self._running = None
        if isinstance(result, Failure):
            self._command_failed(result)
        self._show_prompt()
        self._pump()

    def _command_failed(self, failure: Failure) -> None:
        _log.failure("Command failed", failure)
        self.show(f"[ERROR] {printable(str(failure.value)) or failure.type.__name__}")

    def interrupt(self) -> None:
        """Ctrl-C, or Ctrl-D on an empty line, at the terminal: say ``Bye.`` and quit now
        (a command still running or a pending password prompt is abandoned)."""
        if self._quitting:
            return
        self._quitting = True
        self._lines.clear()
        waiters, self._password_waiters = self._password_waiters, deque()
        for waiter, _ in waiters:
            waiter.errback(EndOfInput("interrupted"))
        if self.commands is not None:
            maybeDeferred(self.commands.quit).addErrback(self._command_failed)

    def signalled(self) -> Deferred | None:
        """The process is stopping on a signal (Ctrl-C where the terminal sends SIGINT, i.e. not
        at the line editor, or a kill): ``Bye.`` once, like every other way out; fires once it
        is out (the reactor waits for it before it stops)."""
        if self._quitting:
            return None
        self._quitting = True
        self.show("Bye.")
        return self.close()

    # ------------------------------------------------------- lifecycle

    def connectionMade(self) -> None:
        self._show_prompt()

    def readConnectionLost(self) -> None:
        """Standard input closed (output still open)."""
        self._input_closed()

    def writeConnectionLost(self) -> None:
        """Standard output closed: nothing more can be shown."""

    def connectionLost(self, reason: Failure | None = None) -> None:
        """Both directions closed: the end of input, and anyone waiting in :meth:`close` is told."""
        self._disconnected = True
        self._input_closed()
        waiters, self._closed = self._closed, []
        for waiter in waiters:
            waiter.callback(None)

    def close(self) -> Deferred:
        """Flush what was written and close standard I/O; fires once it is closed."""
        # At the line editor: close stdio under insults, whose own loseConnection would reset
        # (clear) the terminal and wipe the conversation off the screen.
        target = self.editor.terminal.transport if self.editor is not None else self.transport
        if self._disconnected or target is None:
            return succeed(None)
        waiter: Deferred = Deferred()
        self._closed.append(waiter)
        if self.editor is not None:
            self.editor.finish()
        target.loseConnection()
        return waiter

    def _input_closed(self) -> None:
        """Restore the terminal; quit once the queued commands are done."""
        self.restore_terminal()
        if self._eof:
            return
        self._eof = True
        waiters, self._password_waiters = self._password_waiters, deque()
        for waiter, _ in waiters:
            waiter.errback(EndOfInput("standard input closed before a password was given"))
        self._pump()

    def _end_of_input(self) -> None:
        if self._quitting:
            return
        self._quitting = True
        if self.on_eof is not None:
            self.on_eof()
        elif self.commands is not None:
            maybeDeferred(self.commands.quit).addErrback(self._command_failed)

    def restore_terminal(self) -> None:
        """Give the terminal back as found (echo on); safe to call more than once."""
        if self.editor is not None:
            self.editor.finish()
        if self._echo is not None:
            self._echo.restore()
