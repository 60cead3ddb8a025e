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


class ChatLine(recvline.HistoricRecvLine):
    """The input line of a chat client, attached to ``console`` once connected."""

    def __init__(self, console: Any) -> None:
        self.console = console
        self.prompt = ""
        self.secret = False
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
        """Keep what is on the screen (recvline would reset it): insert mode, nothing else."""
        self.setInsertMode()

    def finish(self) -> None:
        """The client is ending: leave insert mode; nothing more is drawn."""
        if not self._finished:
            self._finished = True
            self.setTypeoverMode()

    # ------------------------------------------------------------ output

    def drawInputLine(self) -> None:
        """The prompt and the line typed so far, the cursor where it was (never a password)."""
        shown = b"" if self.secret else b"".join(self.lineBuffer)
        self.terminal.write(self.prompt.encode("utf-8", "replace") + shown)
        back = 0 if self.secret else len(self.lineBuffer) - self.lineBufferIndex
        if back:
            self.terminal.cursorBackward(back)

    def redraw(self) -> None:
        if self._finished or self.console.quitting:
            return
        self.terminal.write(b"\r")
        self.terminal.eraseToLineEnd()
        self.drawInputLine()

    def print_above(self, text: str, redraw: bool = True) -> None:
        """``text`` on lines of its own where the input line was, then the input line again."""
        if self._finished:
            return
        self.terminal.write(b"\r")
        self.terminal.eraseToLineEnd()
        self.terminal.write(text.encode("utf-8", "replace") + b"\n")
        if redraw:
            self.drawInputLine()

    def set_prompt(self, prompt: str, secret: bool = False) -> None:
        """A new prompt; a password prompt puts the half-typed line aside until it is answered."""
        if secret and not self.secret:
            self._aside = (self.lineBuffer, self.lineBufferIndex)
            self.lineBuffer, self.lineBufferIndex = [], 0
        elif self.secret and not secret:
            self.lineBuffer, self.lineBufferIndex = self._aside
            self._aside = ([], 0)
        self.prompt, self.secret = prompt, secret
        self.redraw()

    def status(self, text: str) -> None:
        """A progress line in place of the input line, until the next redraw."""
        if not self._finished:
            self.terminal.write(b"\r")
            self.terminal.eraseToLineEnd()
            self.terminal.write(text.encode("utf-8", "replace"))

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

    def characterReceived(self, ch: bytes, moreCharactersComing: bool) -> None:
        if self.secret:
            self.lineBuffer.append(ch)
            self.lineBufferIndex = len(self.lineBuffer)
            return
        super().characterReceived(ch, moreCharactersComing)

    def handle_BACKSPACE(self) -> None:
        if self.secret:
            self.lineBuffer[-1:] = []
            self.lineBufferIndex = len(self.lineBuffer)
            return
        super().handle_BACKSPACE()

    def handle_RETURN(self) -> None:
        if self.secret:
            line = b"".join(self.lineBuffer)
            self.lineBuffer, self.lineBufferIndex = [], 0
            self.terminal.nextLine()
            self.console.lineReceived(line)  # not in the history
        else:
            super().handle_RETURN()
        self.redraw()

    def lineReceived(self, line: bytes) -> None:
        self.console.lineReceived(line)

    def _deliverBuffer(self, buf: bytes) -> None:
        """A line from the history, one character (not one byte) a cell."""
        for char in buf.decode("utf-8", "replace"):
            self.characterReceived(char.encode("utf-8"), True)

    def _replace(self, before: list[bytes], after: list[bytes]) -> None:
        self.lineBuffer = before + after
        self.lineBufferIndex = len(before)
        self.redraw()

    def handle_KILL_START(self) -> None:
        self._replace([], self.lineBuffer[self.lineBufferIndex :])

    def handle_KILL_END(self) -> None:
        self._replace(self.lineBuffer[: self.lineBufferIndex], [])

    def handle_KILL_WORD(self) -> None:
        before = self.lineBuffer[: self.lineBufferIndex]
        while before and before[-1] == b" ":
            before.pop()
        while before and before[-1] != b" ":
            before.pop()
        self._replace(before, self.lineBuffer[self.lineBufferIndex :])

    def handle_CLEAR(self) -> None:
        self.terminal.eraseDisplay()
        self.terminal.cursorHome()
        self.drawInputLine()

    def handle_TAB(self) -> None:
        before = b"".join(self.lineBuffer[: self.lineBufferIndex]).decode("utf-8", "replace")
        grown, candidates = complete_line(before, self.console.names)
        if candidates:
            self.print_above("  ".join(candidates))
        if grown != before:
            chars = [c.encode("utf-8") for c in grown]
            self._replace(chars, self.lineBuffer[self.lineBufferIndex :])

    def handle_INTERRUPT(self) -> None:
        """Ctrl-C: a new line (what was typed stays visible), then ``Bye.`` and the end."""
        self.handle_END()
        self.terminal.nextLine()
        self.lineBuffer, self.lineBufferIndex = [], 0
        self.console.interrupt()

    def handle_EOF(self) -> None:
        """Ctrl-D: quit on an empty line, else delete the character under the cursor."""
        if self.lineBuffer and not self.secret:
            self.handle_DELETE()
        else:
            self.handle_INTERRUPT()

    def connectionLost(self, reason: Any = None) -> None:
        self.console.connectionLost(reason)


def terminal_protocol(console: Any) -> insults.ServerProtocol:
    """The ``stdio.StandardIO`` protocol for a terminal: insults parsing keys for a :class:`ChatLine`."""
    return insults.ServerProtocol(ChatLine, console)
