"""The ``/commands``: their help and usage lines, argument parsing, and user references.

:class:`CommandLine` is mixed into the console: :meth:`run_line` parses one input line and
calls the session (:class:`ICommands`).  Wherever a command takes a user id it also takes a
unique prefix of one, or a name (socp_tw/client/names.py): an ambiguous or unknown
reference prints why and runs nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail, maybeDeferred

from socp_tw import wire
from socp_tw.client.names import Names, Unresolved
from socp_tw.client.text import printable
from socp_tw.usernames import name_problem

HELP_TEXT = """Commands:
  /register                  create an account: prints your new user id, asks for a password twice
  /login <user_uuid>         log in (asks for the password)
  /list                      online users, with names and key fingerprints (* marks you)
  /tell <user_uuid> <text>   send an end-to-end encrypted direct message
  /all <text>                send an end-to-end encrypted message to every public channel member
  /members                   the public channel's members, with key fingerprints
  /file <user_uuid> <path>   send a file, end-to-end encrypted (other commands wait until it is sent)
  /nick <name>               the name others see beside your id (only a claim: anybody may use it)
  /name <user_uuid> <name>   your own name for a user, shown instead of theirs (no name: forget it)
  /trust <user_uuid>         accept a user's CHANGED key (after checking its fingerprint)
  /help                      this text
  /quit                      close the connection and exit (also Ctrl-C, or Ctrl-D on an empty line)
Wherever a <user_uuid> goes, a unique prefix of one (577eab50) or a name only one user has works too.
On a terminal, Tab completes commands, ids and names; Up/Down recall earlier lines."""

USAGE = {
    "register": "Usage: /register",
    "login": "Usage: /login <user_uuid>",
    "list": "Usage: /list",
    "tell": "Usage: /tell <user_uuid> <text>",
    "all": "Usage: /all <text>",
    "members": "Usage: /members",
    "file": "Usage: /file <user_uuid> <path>",
    "nick": "Usage: /nick <name>",
    "name": "Usage: /name <user_uuid> [<name>]",
    "trust": "Usage: /trust <user_uuid>",
    "help": "Usage: /help",
    "quit": "Usage: /quit",
}

COMMANDS = sorted(USAGE)
USER_ARGUMENT = {"login", "tell", "file", "trust", "name"}  # first argument is a user reference


class ICommands(Protocol):
    """What the console asks the session to do; each may return a Deferred."""

    def register(self) -> Any: ...
    def login(self, user_id: str) -> Any: ...
    def list_users(self) -> Any: ...
    def tell(self, user_id: str, text: str) -> Any: ...
    def send_all(self, text: str) -> Any: ...
    def members(self) -> Any: ...
    def send_file(self, user_id: str, path: str) -> Any: ...
    def nick(self, name: str) -> Any: ...
    def set_petname(self, user_id: str, name: str | None) -> Any: ...
    def trust(self, user_id: str) -> Any: ...
    def quit(self) -> Any: ...
    def refresh_directory(self) -> Any: ...


class CommandLine:
    """``do_<command>`` dispatch for the console (which provides ``show`` and ``commands``)."""

    commands: Any
    names: Names | None
    _quitting: bool

    def show(self, text: str) -> None:
        raise NotImplementedError

    def passwords_not_asked(self, count: int = 1) -> None:
        raise NotImplementedError

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

    def _usage(self, name: str) -> None:
        self.show(USAGE[name])

    def _with_user(self, token: str, command: str, action: Callable[[str], Any]) -> Any:
        """``action(user_id)`` for the user ``token`` stands for.  When it names nobody we know of,
        ask the server who is online (our client hears only of the users it follows) and try once
        more before saying so."""
        if wire.is_uuid(token) or not token or self.names is None:
            user_id = self._user(token, command)
            return None if user_id is None else maybeDeferred(action, user_id)
        try:
            return maybeDeferred(action, self.names.resolve(token))
        except Unresolved as e:
            refresh = getattr(self.commands, "refresh_directory", None)
            if not e.unknown or refresh is None:
                self.show(f"[ERROR] {e}")
                return None

        def retry(_: object) -> Any:
            user_id = self._user(token, command)
            return None if user_id is None else action(user_id)

        return maybeDeferred(refresh).addCallback(retry)

    def _user(self, token: str, command: str) -> str | None:
        """The user id ``token`` stands for, or None (the usage line or the reason printed)."""
        if wire.is_uuid(token):
            return token.lower()
        if not token or self.names is None:
            self._usage(command)
            return None
        try:
            return self.names.resolve(token)
        except Unresolved as e:
            self.show(f"[ERROR] {e}")  # escaped by Names
            return None

    # ------------------------------------------------------- commands

    def do_help(self, args: str) -> None:
        if args:
            return self._usage("help")
        self.show(HELP_TEXT)

    def do_register(self, args: str) -> Any:
        if args:
            self._usage("register")
            return self.passwords_not_asked(2)  # a script's two password lines are not commands
        return maybeDeferred(self.commands.register)

    def do_login(self, args: str) -> Any:
        parts = args.split()
        user_id = self._user(parts[0], "login") if len(parts) == 1 else self._usage("login")
        if user_id is None:
            return self.passwords_not_asked(1)  # nor is the password line of a refused /login
        return maybeDeferred(self.commands.login, user_id)

    def do_list(self, args: str) -> Any:
        if args:
            return self._usage("list")
        return maybeDeferred(self.commands.list_users)

    def do_tell(self, args: str) -> Any:
        token, _, text = args.partition(" ")
        if not token or not text.strip():
            return self._usage("tell")
        return self._with_user(token, "tell", lambda user_id: self.commands.tell(user_id, text))

    def do_all(self, args: str) -> Any:
        if not args.strip():
            return self._usage("all")
        return maybeDeferred(self.commands.send_all, args)

    def do_members(self, args: str) -> Any:
        if args:
            return self._usage("members")
        return maybeDeferred(self.commands.members)

    def do_file(self, args: str) -> Any:
        token, _, path = args.partition(" ")
        if not token or not path.strip():
            return self._usage("file")
        return self._with_user(token, "file", lambda user_id: self.commands.send_file(user_id, path.strip()))

    def do_nick(self, args: str) -> Any:
        if not args:
            return self._usage("nick")
        problem = name_problem(args)
        if problem is not None:
            return self.show(f"[ERROR] {problem}")
        return maybeDeferred(self.commands.nick, args.strip())

    def do_name(self, args: str) -> Any:
        parts = args.split()
        if len(parts) not in (1, 2):
            return self._usage("name")
        if len(parts) == 2 and (problem := name_problem(parts[1])) is not None:
            return self.show(f"[ERROR] {problem}")
        petname = parts[1] if len(parts) == 2 else None
        return self._with_user(parts[0], "name", lambda user_id: self.commands.set_petname(user_id, petname))

    def do_trust(self, args: str) -> Any:
        parts = args.split()
        if len(parts) != 1:
            return self._usage("trust")
        user_id = self._user(parts[0], "trust")
        return None if user_id is None else maybeDeferred(self.commands.trust, user_id)

    def do_quit(self, args: str) -> Any:
        if args:
            return self._usage("quit")
        self._quitting = True
        return maybeDeferred(self.commands.quit)
