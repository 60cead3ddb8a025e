"""Recording user interfaces for real clients in end-to-end tests; both wake
:func:`~socp_tw.test.waiting.wait_until` when they show something."""

from __future__ import annotations

import re
from collections import deque

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport

from socp_tw.test.waiting import changed

#: The password the recording UI is usually given for /register and /login.
PASSWORD = "correct horse battery staple"


class RecordingUI:
    """Collects shown lines (waking :func:`~socp_tw.test.waiting.wait_until`); answers
    password prompts from a queue."""

    def __init__(self, passwords: list[str] | None = None) -> None:
        self.lines: list[str] = []
        self.prompts: list[str] = []
        self.passwords = deque(passwords or [])

    def show(self, text: str) -> None:
        self.lines.extend(text.split("\n"))
        changed()

    def ask_password(self, prompt: str) -> Deferred:
        self.prompts.append(prompt)
        if not self.passwords:
            raise AssertionError(f"unexpected password prompt {prompt!r}")
        return succeed(self.passwords.popleft())

    def find(self, pattern: str, start: int = 0) -> str | None:
        """The first line from ``start`` on that matches ``pattern``, or None."""
        return next((line for line in self.lines[start:] if re.search(pattern, line)), None)


class WatchedTransport(StringTransport):
    """A StringTransport for the real Console: what it writes wakes the waits."""

    def write(self, data: bytes) -> None:
        super().write(data)
        changed()
