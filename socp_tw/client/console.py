"""The terminal side of ``socp-client``: read commands, print lines, ask for passwords.

:class:`Console` is a :class:`LineReceiver` for ``stdio.StandardIO``.  It knows nothing
of networking: it parses ``/commands`` and calls an :class:`ICommands` object (the
session), which prints through :meth:`Console.show` and asks for passwords through
:meth:`Console.ask_password`.

Commands run one at a time, in the order typed: a line that arrives while a command
is still working (generating a key, waiting for the server) waits its turn, unless
that command asked for a password, which the line then answers.  This makes piped
scripts deterministic (``/login`` completes before the ``/tell`` after it runs) while
asynchronous output (incoming messages) keeps flowing.

On a terminal, asynchronous lines are printed as ``"\\r\\x1b[K" + text + "\\n" + prompt``:
the prompt is redrawn under them.  What the user had typed so far stays in the
terminal's line buffer and is still sent on Enter (Ctrl-R reprints it).
"""

from __future__ import annotations

import os
import unicodedata
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from socp_tw import wire
from socp_tw.logs import get_logger

_log = get_logger("socp_tw.client.console")

PROMPT = "> "
MAX_LINE_BYTES = 64 * 1024

HELP_TEXT = """Commands:
  /register                  create an account: prints your new user id, asks for a password twice
  /login <user_uuid>         log in (asks for the password)
  /list                      online users, with key fingerprints (* marks you)
  /tell <user_uuid> <text>   send an end-to-end encrypted direct message
  /all <text>                send an end-to-end encrypted message to every public channel member
  /members                   the public channel's members, with key fingerprints
  /file <user_uuid> <path>   send a file, end-to-end encrypted (other commands wait until it is sent)
  /trust <user_uuid>         accept a user's CHANGED key (after checking its fingerprint)
  /help                      this text
  /quit                      close the connection and exit"""

USAGE = {
    "register": "Usage: /register",
    "login": "Usage: /login <user_uuid>",
    "list": "Usage: /list",
    "tell": "Usage: /tell <user_uuid> <text>",
    "all": "Usage: /all <text>",
    "members": "Usage: /members",
    "file": "Usage: /file <user_uuid> <path>",
    "trust": "Usage: /trust <user_uuid>",
    "help": "Usage: /help",
    "quit": "Usage: /quit",
}


class ICommands(Protocol):
    """What the console asks the session to do; each may return a Deferred."""

    def register(self) -> Any: ...
    def login(self, user_id: str) -> Any: ...
    def list_users(self) -> Any: ...
    def tell(self, user_id: str, text: str) -> Any: ...
    def send_all(self, text: str) -> Any: ...
    def members(self) -> Any: ...
    def send_file(self, user_id: str, path: str) -> Any: ...
    def trust(self, user_id: str) -> Any: ...
    def quit(self) -> Any: ...


class EndOfInput(Exception):
    """Standard input closed while a password was expected."""


class TerminalEcho:
    """Switch a terminal's modes (``termios``): echo off for a password, or raw for the line
    editor; :meth:`restore` puts back what was there before the first change."""

    def __init__(self, fd: int) -> None:
        import termios

        self._termios = termios
        self._fd = fd
        self._saved: list | None = None

    @classmethod
    def for_stdin(cls) -> TerminalEcho | None:
        """An echo switch for fd 0 when it is a terminal, else None (then passwords are plain lines)."""
        try:
            if os.isatty(0):
                return cls(0)
        except (ImportError, OSError):
            pass
        return None

    def _change(self, lflag_off: int, what: str) -> bool:
        termios = self._termios
        try:
            attrs = termios.tcgetattr(self._fd)
            if self._saved is None:
                self._saved = list(attrs)
                self._saved[6] = list(attrs[6])
            attrs[3] &= ~lflag_off
            attrs[6][termios.VMIN] = 1
            attrs[6][termios.VTIME] = 0
            termios.tcsetattr(self._fd, termios.TCSANOW, attrs)
            return True
        except (termios.error, OSError):
            _log.warn("Could not switch the terminal to {what}", what=what)
            return False

    def disable(self) -> None:
        """Echo off (line editing left to the terminal): for a password."""
        self._change(self._termios.ECHO, "no-echo mode")

    def raw(self) -> bool:
        """Character at a time, no echo (signals such as Ctrl-C still work): for the line editor."""
        return self._change(self._termios.ECHO | self._termios.ICANON, "character mode")

    def restore(self) -> None:
        if self._saved is None:
            return
        saved, self._saved = self._saved, None
        try:
            self._termios.tcsetattr(self._fd, self._termios.TCSANOW, saved)
        except (self._termios.error, OSError):
            _log.warn("Could not restore terminal echo")


_BIDI_CONTROLS = {"\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"}


def printable(text: str) -> str:
    """``text`` made safe for a terminal: control characters (ESC included) and bidi
    overrides are shown as ``\\xNN``/``\\uNNNN`` escapes, newlines start an indented line.

    Everything a remote party controls (message text, error details) goes through this,
    so nobody can move the cursor, recolour or rewrite the user's screen.
    """
    out = []
    for char in text:
        if char == "\n":
            out.append("\n    ")
        elif char == "\t":
            out.append(char)
        elif char in _BIDI_CONTROLS or unicodedata.category(char) in ("Cc", "Cs"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def one_line(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters (the last one ``…`` when cut) and escaped like
    :func:`printable`, with newlines shown as ``\\n``: safe inside one line of output."""
    shown = text if len(text) <= limit else text[: limit - 1] + "…"
    return printable(shown).replace("\n    ", "\\n")


@implementer(IHalfCloseableProtocol)
class Console(LineReceiver):
    """Line-oriented stdio protocol: ``do_<command>`` dispatch, prompt redraw, password mode.

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
        echo: TerminalEcho | None = None,
        prompt: str = PROMPT,
        editing: bool = False,
        scripted: bool | None = None,
    ) -> None:
        self.commands = commands
        self.interactive = interactive
        # Standard input is a script, not a person (default: no terminal to switch echo on).
        self.scripted = echo is None if scripted is None else scripted
        self._unasked_passwords = 0  # see passwords_not_asked()
        self._echo = echo
        # Our own line editor (terminal in character mode): the prompt redraw can then show
        # what the user has typed so far under an incoming line.
        self.editing = editing and interactive
        self._buffer = bytearray()
        self._escape: bytes | None = None
        self._last_cr = False
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

    # ----------------------------------------------------------- output

    def _write(self, data: str) -> None:
        if self.transport is not None:
            self.transport.write(data.encode("utf-8", "replace"))

    def show(self, text: str) -> None:
        """Print ``text`` (one or more lines) above the prompt, then redraw the prompt."""
        if self.interactive:
            self._write("\r\x1b[K" + text + "\n" + self._current_prompt + self._typed())
        else:
            self._write(("\n" if self._partial else "") + text + "\n")
            self._partial = False

    def status(self, text: str) -> None:
        """On a terminal, put ``text`` on the prompt line, replacing what was there (a progress
        line updating in place; the next :meth:`show` or prompt redraw replaces it).  Otherwise nothing."""
        if self.interactive:
            self._write("\r\x1b[K" + text)

    def _show_prompt(self) -> None:
        if self.interactive:
            self._write("\r\x1b[K" + self._current_prompt + self._typed())

    def _typed(self) -> str:
        """What the user has typed on the current line, as shown (never a password)."""
        if not self.editing or self._password_waiters:
            return ""
        return self._buffer.decode("utf-8", "replace")

    # ------------------------------------------------------- passwords

    def ask_password(self, prompt: str = "Password: ") -> Deferred:
        """Print ``prompt`` and return the next input line, unechoed on a terminal.

        Lines already typed (piped input) answer at once.  Fails with :class:`EndOfInput`
        once standard input is closed.
        """
        if self._lines and not self._password_waiters:
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
        if self._echo is not None and not self.editing:
            self._echo.disable()
        if self.interactive:
            self._current_prompt = prompt
            self._show_prompt()
        else:
            self._write(("\n" if self._partial else "") + prompt)
            self._partial = True

    def _answer_password(self, line: str) -> None:
        waiter, _ = self._password_waiters.popleft()
        if self._echo is not None and not self.editing:
            self._echo.restore()
        self._write("\n")  # the Enter key was not echoed (or the line came from a pipe)
        self._partial = False
        self._current_prompt = self._prompt if self.interactive else ""
        if self._password_waiters:
            self._start_password_prompt(self._password_waiters[0][1])
        waiter.callback(line)

    # ---------------------------------------------------------- input

    def dataReceived(self, data: bytes) -> None:
        if not self.editing:
            super().dataReceived(data)
            return
        for byte in data:
            self._key(byte)

    def _key(self, byte: int) -> None:
        """The line editor: one input byte in character mode."""
        if self._escape is not None:  # swallow escape sequences (arrow keys...)
            if self._escape == b"" and byte in (0x5B, 0x4F):  # "[" or "O"
                self._escape = b"["
            elif self._escape == b"" or 0x40 <= byte <= 0x7E:
                self._escape = None
            return
        last_cr, self._last_cr = self._last_cr, byte == 0x0D
        if byte in (0x0D, 0x0A):
            if byte == 0x0A and last_cr:
                return
            line = bytes(self._buffer)
            self._buffer.clear()
            if not self._password_waiters:
                self._write("\n")
            self.lineReceived(line)
        elif byte in (0x7F, 0x08):  # backspace: drop one UTF-8 character
            while self._buffer and (self._buffer[-1] & 0xC0) == 0x80:
                self._buffer.pop()
            if self._buffer:
                self._buffer.pop()
            self._show_prompt()
        elif byte == 0x15:  # Ctrl-U: erase the line
            self._buffer.clear()
            self._show_prompt()
        elif byte == 0x17:  # Ctrl-W: erase a word
            text = self._buffer.decode("utf-8", "replace").rstrip()
            self._buffer[:] = text[: len(text) - len(text.split(" ")[-1])].encode("utf-8")
            self._show_prompt()
        elif byte == 0x04:  # Ctrl-D on an empty line: end of input
            if not self._buffer:
                self.readConnectionLost()
        elif byte == 0x0C:  # Ctrl-L: clear the screen
            self._write("\x1b[H\x1b[2J")
            self._show_prompt()
        elif byte == 0x1B:
            self._escape = b""
        elif byte >= 0x20 and len(self._buffer) < self.MAX_LENGTH:
            self._buffer.append(byte)
            if not self._password_waiters and self.transport is not None:
                self.transport.write(bytes([byte]))

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
        if not self._quitting:
            self._show_prompt()
        self._pump()

    def _command_failed(self, failure: Failure) -> None:
        _log.failure("Command failed", failure)
        self.show(f"[ERROR] {printable(str(failure.value)) or failure.type.__name__}")

    def _handler(self, line: str) -> Callable[[str], Any] | None:
        """The ``do_<name>`` method of a line naming a known command, else None."""
        stripped = line.strip()
        if not stripped.startswith("/"):
            return None
        name = stripped[1:].partition(" ")[0]
        if not (name.isalnum() and name.isascii()):
            return None
        return getattr(self, f"do_{name.lower()}", None)

    def run_line(self, line: str) -> Deferred | None:
        """Parse one input line and run its command; returns the command's Deferred, if any."""
        stripped = line.strip()
        if not stripped:
            return None
        if not stripped.startswith("/"):
            self.show("Commands start with /. To send a message: /tell <user_uuid> <text>. Type /help.")
            return None
        name, _, rest = stripped[1:].partition(" ")
        handler = self._handler(stripped)
        if handler is None:
            self.show(f"Unknown command /{printable(name)}. Type /help.")
            return None
        try:
            result = handler(rest.strip())
        except Exception:
            return fail()
        if isinstance(result, Deferred):
            return result
        return None

    # ------------------------------------------------------- commands

    def _usage(self, name: str) -> None:
        self.show(USAGE[name])

    def do_help(self, args: str) -> None:
        if args:
            return self._usage("help")
        self.show(HELP_TEXT)

    def do_register(self, args: str) -> Any:
        if args:
            return self._usage("register")
        return maybeDeferred(self.commands.register)

    def do_login(self, args: str) -> Any:
        parts = args.split()
        if len(parts) != 1 or not wire.is_uuid(parts[0]):
            return self._usage("login")
        return maybeDeferred(self.commands.login, parts[0].lower())

    def do_list(self, args: str) -> Any:
        if args:
            return self._usage("list")
        return maybeDeferred(self.commands.list_users)

    def do_tell(self, args: str) -> Any:
        user_id, _, text = args.partition(" ")
        if not wire.is_uuid(user_id) or not text.strip():
            return self._usage("tell")
        return maybeDeferred(self.commands.tell, user_id.lower(), text)

    def do_all(self, args: str) -> Any:
        if not args.strip():
            return self._usage("all")
        return maybeDeferred(self.commands.send_all, args)

    def do_members(self, args: str) -> Any:
        if args:
            return self._usage("members")
        return maybeDeferred(self.commands.members)

    def do_file(self, args: str) -> Any:
        user_id, _, path = args.partition(" ")
        if not wire.is_uuid(user_id) or not path.strip():
            return self._usage("file")
        return maybeDeferred(self.commands.send_file, user_id.lower(), path.strip())

    def do_trust(self, args: str) -> Any:
        parts = args.split()
        if len(parts) != 1 or not wire.is_uuid(parts[0]):
            return self._usage("trust")
        return maybeDeferred(self.commands.trust, parts[0].lower())

    def do_quit(self, args: str) -> Any:
        if args:
            return self._usage("quit")
        self._quitting = True
        return maybeDeferred(self.commands.quit)

    # ------------------------------------------------------- lifecycle

    def connectionMade(self) -> None:
        if self.editing and (self._echo is None or not self._echo.raw()):
            self.editing = False  # no terminal to edit on: let the terminal do it
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
        if self._disconnected or self.transport is None:
            return succeed(None)
        waiter: Deferred = Deferred()
        self._closed.append(waiter)
        self.transport.loseConnection()
        return waiter

    def _input_closed(self) -> None:
        """Restore the terminal; quit once the queued commands are done."""
        if self._echo is not None:
            self._echo.restore()
        self.editing = False
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
        if self._echo is not None:
            self._echo.restore()
