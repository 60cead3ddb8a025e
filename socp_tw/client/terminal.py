"""The line editor on a terminal: ``twisted.conch.recvline`` over ``insults``, in raw mode.

:class:`ChatLine` edits the input line (history Up/Down, Left/Right, Home/End, Ctrl-A/E,
Ctrl-U/K/W, Ctrl-L, Tab completion) and hands whole lines to the :class:`Console` it is
attached to.  Everything the console prints goes above the input line, and the prompt and
the half-typed line are redrawn intact under it, cursor included.  A password prompt echoes
nothing and its answer never enters the history.  Ctrl-C, and Ctrl-D on an empty line,
quit with ``Bye.`` on a line of its own.

:class:`TerminalEcho` switches the terminal's modes (``termios``) and puts them back.
"""

from __future__ import annotations

import codecs
import os
import unicodedata
from collections.abc import Callable
from typing import Any

from twisted.conch import recvline
from twisted.conch.insults import insults

from socp_tw.client.completion import complete_line
from socp_tw.logs import get_logger

_log = get_logger("socp_tw.client.terminal")

MAX_INPUT_CHARS = 16 * 1024
_APPLICATION_KEYS = {b"\x1b[OH": "HOME", b"\x1b[OF": "END", b"\x1b[OC": "RIGHT", b"\x1b[OD": "LEFT"}


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

    def _change(self, lflag_off: int, iflag_off: int, what: str) -> bool:
        termios = self._termios
        try:
            attrs = termios.tcgetattr(self._fd)
            if self._saved is None:
                self._saved = list(attrs)
                self._saved[6] = list(attrs[6])
            attrs[0] &= ~iflag_off
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
        self._change(self._termios.ECHO, 0, "no-echo mode")

    def raw(self) -> bool:
        """Every key as it is pressed, Ctrl-C and Ctrl-S included, no echo: for the line editor.
        Output processing stays on, so a stray ``\\n`` still starts a new line."""
        t = self._termios
        return self._change(t.ECHO | t.ICANON | t.ISIG | t.IEXTEN, t.IXON | t.ICRNL, "raw mode")

    def restore(self) -> None:
        if self._saved is None:
            return
        saved, self._saved = self._saved, None
        try:
            self._termios.tcsetattr(self._fd, self._termios.TCSANOW, saved)
        except (self._termios.error, OSError):
            _log.warn("Could not restore terminal echo")


def cells(text: str) -> int:
    """How many terminal columns ``text`` takes (wide East Asian characters take two)."""
    return sum(_cell(c) for c in text)


def _cell(char: str) -> int:
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def terminal_width() -> int:
    """The width of the terminal on standard output (80 when it cannot be told)."""
    try:
        return max(os.get_terminal_size(1).columns, 10)
    except OSError:
        return 80


class ChatLine(recvline.HistoricRecvLine):
    """The input line of a chat client, attached to ``console`` once connected.

    Every edit redraws the whole input line from where it starts, so a line longer than the
    terminal is wide (it wraps over several rows) is still drawn right: ``lineBuffer`` holds
    one character a cell (its UTF-8 bytes), and the cursor is placed by row and column.
    """

    def __init__(self, console: Any, width: Callable[[], int] = terminal_width) -> None:
        self.console = console
        self.prompt = ""
        self.secret = False
        self._width = width
        self._cursor = 0  # columns from the start of the prompt to where the terminal's cursor is
        self._aside: tuple[list[bytes], int] = ([], 0)  # the line typed before a password prompt
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._finished = False

    # ------------------------------------------------------------ setup

    def connectionMade(self) -> None:
        super().connectionMade()
        t = self.terminal
        self.keyHandlers.update(
            {
                t.TAB: self.handle_TAB,
                b"\x08": self.handle_BACKSPACE,
                b"\x01": self.handle_HOME,  # Ctrl-A
                b"\x05": self.handle_END,  # Ctrl-E
                b"\x02": self.handle_LEFT,  # Ctrl-B
                b"\x06": self.handle_RIGHT,  # Ctrl-F
                b"\x10": self.handle_UP,  # Ctrl-P
                b"\x0e": self.handle_DOWN,  # Ctrl-N
                b"\x15": self.handle_KILL_START,  # Ctrl-U
                b"\x0b": self.handle_KILL_END,  # Ctrl-K
                b"\x17": self.handle_KILL_WORD,  # Ctrl-W
                b"\x0c": self.handle_CLEAR,  # Ctrl-L
                b"\x03": self.handle_INTERRUPT,  # Ctrl-C
                b"\x04": self.handle_EOF,  # Ctrl-D
            }
        )
        self.console.attach(self)

    def initializeScreen(self) -> None:
        """Keep what is on the screen (recvline would reset it and use insert mode): nothing."""

    def finish(self) -> None:
        """The client is ending: nothing more is drawn."""
        self._finished = True

    # ------------------------------------------------------------ output

    def _text(self, end: int | None = None) -> str:
        if self.secret:
            return ""
        return b"".join(self.lineBuffer[:end]).decode("utf-8", "replace")

    def _goto(self, column: int) -> None:
        """Move the cursor from ``self._cursor`` to ``column`` (both from the prompt's start)."""
        width = self._width()
        (row, _), (to_row, to_col) = divmod(self._cursor, width), divmod(column, width)
        if to_row < row:
            self.terminal.cursorUp(row - to_row)
        elif to_row > row:
            self.terminal.cursorDown(to_row - row)
        self.terminal.write(b"\r")
        if to_col:
            self.terminal.cursorForward(to_col)
        self._cursor = column

    def _erase(self) -> None:
        """Erase the input line (all its rows); the cursor ends where the prompt starts."""
        self._goto(0)
        self.terminal.eraseToDisplayEnd()

    def drawInputLine(self) -> None:
        """The prompt and the line typed so far from the cursor on, the cursor then put where
        it belongs (never a password)."""
        text = self.prompt + self._text()
        self.terminal.write(text.encode("utf-8", "replace"))
        end = cells(text)
        if end and end % self._width() == 0:
            self.terminal.write(b" \r")  # leave the pending wrap: the cursor is really at the next row
        self._cursor = end
        self._goto(cells(self.prompt) + (0 if self.secret else cells(self._text(self.lineBufferIndex))))

    def redraw(self) -> None:
        if self._finished or self.console.quitting:
            return
        self._erase()
        self.drawInputLine()

    def print_above(self, text: str, redraw: bool = True) -> None:
        """``text`` on lines of its own where the input line was, then the input line again."""
        if self._finished:
            return
        self._erase()
        self.terminal.write(text.encode("utf-8", "replace") + b"\n")
        self._cursor = 0
        if redraw:
            self.redraw()

    def set_prompt(self, prompt: str, secret: bool = False) -> None:
        """A new prompt; a password prompt puts the half-typed line aside until it is answered."""
        if secret and not self.secret:
            self._aside = (self.lineBuffer, self.lineBufferIndex)
            self.lineBuffer, self.lineBufferIndex = [], 0
        elif self.secret and not secret:
            self.lineBuffer, self.lineBufferIndex = self._aside
            self._aside = ([], 0)
        if self.secret == secret:
            self._erase()  # the old prompt's width
        self.prompt, self.secret = prompt, secret
        self.redraw()

    def status(self, text: str) -> None:
        """A progress line in place of the input line, until the next redraw."""
        if not self._finished:
            self._erase()
            self.terminal.write(text.encode("utf-8", "replace"))
            self._cursor = cells(text)

    # ------------------------------------------------------------- input

    def keystrokeReceived(self, keyID: Any, modifier: Any) -> None:
        handler = self.keyHandlers.get(keyID)
        if handler is not None:
            if not self.secret or keyID in (b"\r", b"\n", b"\x03", b"\x04", b"\x7f", b"\x08", b"\x15"):
                handler()
            return
        if modifier is not None or not isinstance(keyID, bytes) or len(keyID) != 1:
            return  # Alt-x, function keys: not ours
        if keyID[0] < 0x20 or keyID[0] == 0x7F:
            return
        char = self._decoder.decode(keyID)
        if char and len(self.lineBuffer) < MAX_INPUT_CHARS:
            self.characterReceived(char.encode("utf-8"), False)

    def unhandledControlSequence(self, seq: bytes) -> None:
        name = _APPLICATION_KEYS.get(seq)
        if name is not None and not self.secret:
            getattr(self, f"handle_{name}")()

    def _edit(self, before: list[bytes], after: list[bytes]) -> None:
        """The line is now ``before + after``, the cursor between them: redraw it."""
        self.lineBuffer = before + after
        self.lineBufferIndex = len(before)
        self.redraw()

    def _split(self) -> tuple[list[bytes], list[bytes]]:
        return self.lineBuffer[: self.lineBufferIndex], self.lineBuffer[self.lineBufferIndex :]

    def characterReceived(self, ch: bytes, moreCharactersComing: bool) -> None:
        before, after = self._split()
        if self.secret:
            self.lineBuffer.append(ch)
            self.lineBufferIndex = len(self.lineBuffer)
        elif not after and not moreCharactersComing and self.lineBufferIndex == len(self.lineBuffer):
            self.lineBuffer.append(ch)  # typing at the end: just echo it
            self.lineBufferIndex += 1
            self.terminal.write(ch)
            self._cursor += cells(ch.decode("utf-8", "replace"))
            if self._cursor % self._width() == 0:
                self.terminal.write(b" \r")
        else:
            self._edit([*before, ch], after)

    def handle_LEFT(self) -> None:
        if self.lineBufferIndex > 0:
            self.lineBufferIndex -= 1
            self.redraw()

    def handle_RIGHT(self) -> None:
        if self.lineBufferIndex < len(self.lineBuffer):
            self.lineBufferIndex += 1
            self.redraw()

    def handle_HOME(self) -> None:
        self.lineBufferIndex = 0
        self.redraw()

    def handle_END(self) -> None:
        self.lineBufferIndex = len(self.lineBuffer)
        self.redraw()

    def handle_INSERT(self) -> None:
        """Always inserting: the Insert key does nothing."""

    def handle_BACKSPACE(self) -> None:
        before, after = self._split()
        if before:
            self._edit(before[:-1], after)

    def handle_DELETE(self) -> None:
        before, after = self._split()
        if after:
            self._edit(before, after[1:])

    def handle_UP(self) -> None:
        if self.lineBuffer and self.historyPosition == len(self.historyLines):
            self.historyLines.append(b"".join(self.lineBuffer))
        if self.historyPosition > 0:
            self.historyPosition -= 1
            self._recall(self.historyLines[self.historyPosition])

    def handle_DOWN(self) -> None:
        if self.historyPosition < len(self.historyLines) - 1:
            self.historyPosition += 1
            self._recall(self.historyLines[self.historyPosition])
        else:
            self.historyPosition = len(self.historyLines)
            self._recall(b"")

    def _recall(self, line: bytes) -> None:
        """A line from the history, one character (not one byte) a cell, the cursor at its end."""
        self._edit([c.encode("utf-8") for c in line.decode("utf-8", "replace")], [])

    def handle_RETURN(self) -> None:
        line = b"".join(self.lineBuffer)
        if line and not self.secret:  # a password never enters the history
            self.historyLines.append(line)
        self.historyPosition = len(self.historyLines)
        self.lineBufferIndex = len(self.lineBuffer)
        self.redraw()  # the cursor to the end of what was typed
        self.lineBuffer, self.lineBufferIndex = [], 0
        self.terminal.write(b"\n")
        self._cursor = 0
        self.console.lineReceived(line)
        self.redraw()

    def handle_KILL_START(self) -> None:
        self._edit([], self._split()[1])

    def handle_KILL_END(self) -> None:
        self._edit(self._split()[0], [])

    def handle_KILL_WORD(self) -> None:
        before, after = self._split()
        while before and before[-1] == b" ":
            before.pop()
        while before and before[-1] != b" ":
            before.pop()
        self._edit(before, after)

    def handle_CLEAR(self) -> None:
        self.terminal.eraseDisplay()
        self.terminal.cursorHome()
        self._cursor = 0
        self.drawInputLine()

    def handle_TAB(self) -> None:
        before = self._text(self.lineBufferIndex)
        grown, candidates = complete_line(before, self.console.names)
        if candidates:
            self.print_above("  ".join(candidates))
        if grown != before:
            self._edit([c.encode("utf-8") for c in grown], self._split()[1])

    def handle_INTERRUPT(self) -> None:
        """Ctrl-C: a new line (what was typed stays visible), then ``Bye.`` and the end."""
        self.lineBufferIndex = len(self.lineBuffer)
        self.redraw()
        self.terminal.write(b"\n")
        self._cursor = 0
        self.lineBuffer, self.lineBufferIndex = [], 0
        self.console.interrupt()

    def handle_EOF(self) -> None:
        """Ctrl-D: quit on an empty line, else delete the character under the cursor."""
        if self.lineBuffer and not self.secret:
            self.handle_DELETE()
        else:
            self.handle_INTERRUPT()

    def lineReceived(self, line: bytes) -> None:
        self.console.lineReceived(line)

    def connectionLost(self, reason: Any = None) -> None:
        self.console.connectionLost(reason)


def terminal_protocol(console: Any, width: Callable[[], int] = terminal_width) -> insults.ServerProtocol:
    """The ``stdio.StandardIO`` protocol for a terminal: insults parsing keys for a :class:`ChatLine`."""
    return insults.ServerProtocol(ChatLine, console, width)
