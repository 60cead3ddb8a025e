"""The stdio console: command dispatch, usage lines, prompt redraw, password mode, scripting."""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from socp_tw.client.console import HELP_TEXT, Console, EndOfInput, printable

UUID = "6f1c2d3e-4b5a-4c6d-8e7f-9a0b1c2d3e4f"


class FakeCommands:
    """Records calls; a command may be made to hang until released."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.hang: dict[str, Deferred] = {}
        self.console: Console | None = None

    def _call(self, name: str, *args):
        self.calls.append((name, *args))
        return self.hang.get(name) or succeed(None)

    def register(self):
        return self._call("register")

    def login(self, user_id):
        return self._call("login", user_id)

    def list_users(self):
        return self._call("list")

    def tell(self, user_id, text):
        return self._call("tell", user_id, text)

    def trust(self, user_id):
        return self._call("trust", user_id)

    def quit(self):
        return self._call("quit")


class FakeEcho:
    def __init__(self) -> None:
        self.events: list[str] = []

    def disable(self) -> None:
        self.events.append("off")

    def restore(self) -> None:
        self.events.append("on")


class ConsoleTestBase(SynchronousTestCase):
    interactive = False

    def setUp(self) -> None:
        self.commands = FakeCommands()
        self.echo = FakeEcho()
        self.console = Console(self.commands, interactive=self.interactive, echo=self.echo)
        self.transport = StringTransport()
        self.console.makeConnection(self.transport)
        self.transport.clear()

    def type(self, data: bytes) -> None:
        self.console.dataReceived(data)

    def output(self) -> str:
        value = self.transport.value().decode("utf-8")
        self.transport.clear()
        return value


class DispatchTests(ConsoleTestBase):
    def test_commands_reach_the_session(self) -> None:
        self.type(f"/register\n/login {UUID}\n/list\n/tell {UUID} hello  there \n/trust {UUID}\n".encode())
        self.assertEqual(
            self.commands.calls,
            [
                ("register",),
                ("login", UUID),
                ("list",),
                ("tell", UUID, "hello  there"),
                ("trust", UUID),
            ],
        )

    def test_uuid_case_is_normalised(self) -> None:
        self.type(f"/tell {UUID.upper()} hi\n".encode())
        self.assertEqual(self.commands.calls, [("tell", UUID, "hi")])

    def test_partial_lines_and_crlf(self) -> None:
        self.type(b"/li")
        self.assertEqual(self.commands.calls, [])
        self.type(b"st\r")
        self.assertEqual(self.commands.calls, [])
        self.type(b"\n")
        self.assertEqual(self.commands.calls, [("list",)])

    def test_unknown_command(self) -> None:
        self.type(b"/frobnicate now\n")
        self.assertEqual(self.output(), "Unknown command /frobnicate. Type /help.\n")
        self.type(b"/\x1b[31m\n")
        self.assertEqual(self.output(), "Unknown command /\\x1b[31m. Type /help.\n")
        self.assertEqual(self.commands.calls, [])

    def test_usage_lines(self) -> None:
        cases = {
            b"/tell\n": "Usage: /tell <user_uuid> <text>",
            b"/tell not-a-uuid hello\n": "Usage: /tell <user_uuid> <text>",
            f"/tell {UUID}\n".encode(): "Usage: /tell <user_uuid> <text>",
            f"/tell {UUID}    \n".encode(): "Usage: /tell <user_uuid> <text>",
            b"/login\n": "Usage: /login <user_uuid>",
            b"/login abc\n": "Usage: /login <user_uuid>",
            f"/login {UUID} extra\n".encode(): "Usage: /login <user_uuid>",
            b"/register now\n": "Usage: /register",
            b"/list all\n": "Usage: /list",
            b"/trust\n": "Usage: /trust <user_uuid>",
            b"/quit please\n": "Usage: /quit",
            b"/help me\n": "Usage: /help",
        }
        for line, usage in cases.items():
            self.type(line)
            self.assertEqual(self.output(), usage + "\n", line)
        self.assertEqual(self.commands.calls, [])

    def test_plain_text_gets_a_hint(self) -> None:
        self.type(b"hello everyone\n")
        self.assertEqual(
            self.output(),
            "Commands start with /. To send a message: /tell <user_uuid> <text>. Type /help.\n",
        )

    def test_blank_lines_are_ignored(self) -> None:
        self.type(b"\n   \n")
        self.assertEqual(self.output(), "")
        self.assertEqual(self.commands.calls, [])

    def test_help(self) -> None:
        self.type(b"/help\n")
        out = self.output()
        self.assertEqual(out, HELP_TEXT + "\n")
        for command in ("/register", "/login <user_uuid>", "/list", "/tell <user_uuid> <text>", "/quit"):
            self.assertIn(command, out)

    def test_quit(self) -> None:
        self.type(b"/QUIT\n")
        self.assertEqual(self.commands.calls, [("quit",)])

    def test_invalid_utf8_and_long_lines(self) -> None:
        self.type(b"/tell " + UUID.encode() + b" caf\xe9\n")
        self.assertEqual(self.commands.calls, [("tell", UUID, "caf\ufffd")])
        self.type(b"x" * (Console.MAX_LENGTH + 10) + b"\n")
        self.assertIn("[ERROR] input line longer than", self.output())

    def test_failing_command_is_reported_not_fatal(self) -> None:
        def boom():
            raise RuntimeError("kaput")

        self.commands.list_users = boom
        self.type(b"/list\n")
        self.assertEqual(self.output(), "[ERROR] kaput\n")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.type(b"/register\n")
        self.assertEqual(self.commands.calls, [("register",)])


class SerialCommandTests(ConsoleTestBase):
    """Commands run one at a time; a pending command's password prompt takes the next line."""

    def test_lines_wait_for_the_running_command(self) -> None:
        self.commands.hang["login"] = pending = Deferred()
        self.type(f"/login {UUID}\n/list\n/tell {UUID} hi\n".encode())
        self.assertEqual(self.commands.calls, [("login", UUID)])
        pending.callback(None)
        self.assertEqual(self.commands.calls, [("login", UUID), ("list",), ("tell", UUID, "hi")])

    def test_piped_password_answers_the_prompt(self) -> None:
        """A script: /login, the password on the next line, then more commands."""
        answers: list[str] = []
        done: Deferred = Deferred()

        def login(user_id):
            self.commands.calls.append(("login", user_id))
            d = self.console.ask_password("Password: ")
            d.addCallback(answers.append)
            return d.addCallback(lambda _: done)

        self.commands.login = login
        self.type(f"/login {UUID}\nsecret pw\n/list\n".encode())
        self.assertEqual(answers, ["secret pw"])
        self.assertEqual(self.commands.calls, [("login", UUID)])
        self.assertEqual(self.output(), "Password: \n")
        done.callback(None)
        self.assertEqual(self.commands.calls, [("login", UUID), ("list",)])

    def test_password_lines_typed_ahead(self) -> None:
        """Lines already queued when the prompt appears answer it at once, in order."""
        self.commands.hang["register"] = Deferred()
        self.type(b"/register\nfirst\nsecond\n")
        first = self.successResultOf(self.console.ask_password("Password: "))
        second = self.successResultOf(self.console.ask_password("Repeat password: "))
        self.assertEqual((first, second), ("first", "second"))
        self.assertEqual(self.output(), "Password: \nRepeat password: \n")

    def test_end_of_input_waits_then_quits(self) -> None:
        self.commands.hang["login"] = pending = Deferred()
        self.type(f"/login {UUID}\n/list\n".encode())
        self.console.readConnectionLost()
        self.assertEqual(self.commands.calls, [("login", UUID)])
        pending.callback(None)
        self.assertEqual(self.commands.calls, [("login", UUID), ("list",), ("quit",)])

    def test_end_of_input_fails_a_pending_password(self) -> None:
        waiter = self.console.ask_password("Password: ")
        self.console.readConnectionLost()
        self.failureResultOf(waiter, EndOfInput)
        self.failureResultOf(self.console.ask_password("Password: "), EndOfInput)
        self.assertEqual(self.commands.calls, [("quit",)])

    def test_on_eof_hook(self) -> None:
        called = []
        self.console.on_eof = lambda: called.append(True)
        self.console.readConnectionLost()
        self.assertEqual(called, [True])
        self.assertEqual(self.commands.calls, [])

    def test_output_continues_after_end_of_input(self) -> None:
        """A script's stdin ends before its commands finish: their output still gets out."""
        self.commands.hang["login"] = pending = Deferred()
        self.type(f"/login {UUID}\n".encode())
        self.console.readConnectionLost()
        self.console.show("[LOGIN SUCCESS] " + UUID)
        pending.callback(None)
        self.assertEqual(self.output(), f"[LOGIN SUCCESS] {UUID}\n")
        self.assertEqual(self.commands.calls, [("login", UUID), ("quit",)])

    def test_close_flushes_then_fires(self) -> None:
        closed = self.console.close()
        self.assertTrue(self.transport.disconnecting)
        self.assertNoResult(closed)
        self.console.connectionLost(None)
        self.successResultOf(closed)
        self.successResultOf(self.console.close())

    def test_quit_then_eof_quits_once(self) -> None:
        self.type(b"/quit\n")
        self.console.readConnectionLost()
        self.assertEqual(self.commands.calls, [("quit",)])


class UnaskedPasswordTests(ConsoleTestBase):
    """A script's password line after a command that asked for none is dropped, not run."""

    def setUp(self) -> None:
        super().setUp()
        self.console.scripted = True

        def login(user_id):
            self.commands.calls.append(("login", user_id))
            self.console.show(f"[LOGIN SUCCESS] {user_id}")
            self.console.passwords_not_asked()
            return succeed(None)

        self.commands.login = login

    def test_password_line_is_dropped(self) -> None:
        self.type(f"/login {UUID}\nsecret pw\n/list\n".encode())
        self.assertEqual(self.commands.calls, [("login", UUID), ("list",)])
        self.assertEqual(self.output(), f"[LOGIN SUCCESS] {UUID}\n")

    def test_password_line_arriving_later_is_dropped(self) -> None:
        self.type(f"/login {UUID}\n".encode())
        self.type(b"secret pw\n")
        self.type(b"plain text\n")
        self.assertEqual(self.commands.calls, [("login", UUID)])
        self.assertEqual(
            self.output(),
            f"[LOGIN SUCCESS] {UUID}\n"
            "Commands start with /. To send a message: /tell <user_uuid> <text>. Type /help.\n",
        )

    def test_password_like_an_unknown_command_is_not_echoed(self) -> None:
        self.type(f"/login {UUID}\n/s3cret word\n".encode())
        self.assertNotIn("s3cret", self.output())
        self.assertEqual(self.commands.calls, [("login", UUID)])

    def test_a_command_next_runs_and_ends_the_skipping(self) -> None:
        """A script with --password-file has no password line: its next command runs."""
        self.type(f"/login {UUID}\n/list\nhello\n".encode())
        self.assertEqual(self.commands.calls, [("login", UUID), ("list",)])
        self.assertIn("Commands start with /.", self.output())

    def test_register_skips_two(self) -> None:
        self.console.passwords_not_asked(2)
        self.type(b"one\ntwo\nthree\n")
        self.assertEqual(self.output().count("Commands start with /."), 1)

    def test_lines_queued_behind_a_pending_command(self) -> None:
        """The drop applies to the lines after the command, also those typed while it ran."""
        pending: Deferred = Deferred()

        def login(user_id):
            self.commands.calls.append(("login", user_id))
            return pending

        self.commands.login = login
        self.type(f"/login {UUID}\nsecret pw\n/list\n".encode())
        self.assertEqual(self.commands.calls, [("login", UUID)])
        self.console.passwords_not_asked()
        pending.callback(None)
        self.assertEqual(self.commands.calls, [("login", UUID), ("list",)])
        self.assertEqual(self.output(), "")

    def test_not_on_a_terminal(self) -> None:
        """A person who saw no prompt typed no password: nothing is dropped."""
        self.console.scripted = False
        self.type(f"/login {UUID}\nhello\n".encode())
        self.assertIn("Commands start with /.", self.output())

    def test_scripted_by_default_without_a_terminal(self) -> None:
        self.assertTrue(Console(self.commands, interactive=False).scripted)
        self.assertFalse(Console(self.commands, interactive=False, echo=FakeEcho()).scripted)


class InteractiveTests(ConsoleTestBase):
    interactive = True

    def test_prompt_is_redrawn_under_async_lines(self) -> None:
        self.console.show("DM from someone: hi")
        self.assertEqual(self.output(), "\r\x1b[KDM from someone: hi\n> ")

    def test_prompt_after_command(self) -> None:
        self.type(b"/list\n")
        self.assertEqual(self.output(), "\r\x1b[K> ")

    def test_prompt_on_connect(self) -> None:
        console = Console(self.commands, interactive=True)
        transport = StringTransport()
        console.makeConnection(transport)
        self.assertEqual(transport.value(), b"\r\x1b[K> ")

    def test_password_prompt_turns_echo_off_and_back_on(self) -> None:
        waiter = self.console.ask_password("Password: ")
        self.assertEqual(self.echo.events, ["off"])
        self.assertEqual(self.output(), "\r\x1b[KPassword: ")
        # An incoming line while the password is typed redraws the password prompt.
        self.console.show("DM from x: y")
        self.assertEqual(self.output(), "\r\x1b[KDM from x: y\nPassword: ")
        self.type(b"hunter22\n")
        self.assertEqual(self.successResultOf(waiter), "hunter22")
        self.assertEqual(self.echo.events, ["off", "on"])
        out = self.output()
        self.assertNotIn("hunter22", out)
        self.assertTrue(out.startswith("\n"))
        self.console.show("later")
        self.assertEqual(self.output(), "\r\x1b[Klater\n> ")

    def test_two_prompts_in_a_row(self) -> None:
        first = self.console.ask_password("Password: ")
        second = self.console.ask_password("Repeat password: ")
        self.type(b"a\n")
        self.assertEqual(self.successResultOf(first), "a")
        self.assertIn("Repeat password: ", self.output())
        self.type(b"b\n")
        self.assertEqual(self.successResultOf(second), "b")
        self.assertEqual(self.echo.events, ["off", "on", "off", "on"])

    def test_connection_lost_restores_echo(self) -> None:
        self.console.ask_password("Password: ").addErrback(lambda f: None)
        self.console.connectionLost(None)
        self.assertEqual(self.echo.events[-1], "on")


class NonInteractiveOutputTests(ConsoleTestBase):
    def test_plain_lines_no_escape_codes(self) -> None:
        self.console.show("DM from a: b")
        self.assertEqual(self.output(), "DM from a: b\n")

    def test_line_after_a_pending_prompt_starts_on_a_new_line(self) -> None:
        self.console.ask_password("Password: ")
        self.console.show("[CONNECTED] ws://x:1")
        self.assertEqual(self.output(), "Password: \n[CONNECTED] ws://x:1\n")


class PrintableTests(SynchronousTestCase):
    def test_controls_are_escaped(self) -> None:
        self.assertEqual(printable("a\x1b[2Jb\x07c\x7f"), "a\\x1b[2Jb\\x07c\\x7f")
        self.assertEqual(printable("x\u202ey\u2066"), "x\\u202ey\\u2066")
        self.assertEqual(printable("\x9b31m"), "\\x9b31m")

    def test_text_is_kept(self) -> None:
        self.assertEqual(printable("héllo ✓ 你好\tend"), "héllo ✓ 你好\tend")
        self.assertEqual(printable("one\ntwo"), "one\n    two")


class SignalTests(ConsoleTestBase):
    def test_a_signal_says_bye_once_and_closes(self) -> None:
        d = self.console.signalled()
        self.assertEqual(self.output(), "Bye.\n")
        self.assertTrue(self.transport.disconnecting)
        self.console.connectionLost(None)
        self.successResultOf(d)
        self.assertIsNone(self.console.signalled())
        self.assertEqual(self.output(), "")

    def test_not_after_quit(self) -> None:
        self.type(b"/quit\n")
        self.output()
        self.assertIsNone(self.console.signalled())
        self.assertEqual(self.output(), "")
