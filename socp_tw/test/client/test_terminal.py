"""The line editor on a terminal: keystrokes in, screen out (insults' terminal emulator)."""

from __future__ import annotations

import time

from twisted.conch.insults import helper, insults
from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from socp_tw.client.console import Console, format_time
from socp_tw.client.names import Names
from socp_tw.client.terminal import terminal_protocol
from socp_tw.test.client.session.fakes import PASSWORD, SessionTestBase

ALICE = "577eab50-1111-4111-8111-111111111111"
ALICE2 = "577eab99-2222-4222-8222-222222222222"
BOB = "0b9a5a53-0c36-4b4f-9a38-8c1f4e5f2c11"

UP, DOWN, LEFT, RIGHT, HOME, END = b"\x1b[A", b"\x1b[B", b"\x1b[D", b"\x1b[C", b"\x1b[H", b"\x1b[F"


class FakeSession:
    """Records the commands; ``quit`` says ``Bye.`` as the session does."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.console: Console | None = None
        self.hang: dict[str, Deferred] = {}

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

    def quit(self):
        self.console.show("Bye.")
        return self._call("quit")


class TerminalTestBase(SynchronousTestCase):
    width = 80

    def setUp(self) -> None:
        self.session = FakeSession()
        self.names = Names()
        self.now = time.mktime((2026, 12, 8, 14, 30, 0, 0, 0, -1))
        self.console = Console(self.session, names=self.names, clock=lambda: self.now)
        self.session.console = self.console
        self.server = terminal_protocol(self.console, lambda: self.width)
        self.wire = StringTransport()
        self.server.makeConnection(self.wire)
        self.editor = self.console.editor
        self.buffer = helper.TerminalBuffer()
        self.buffer.width = self.width
        self.emulator = insults.ClientProtocol(lambda: self.buffer)
        self.emulator.makeConnection(StringTransport())
        self._sync()

    all_output = b""

    def _sync(self) -> None:
        self.all_output += self.wire.value()
        self.emulator.dataReceived(self.wire.value())
        self.wire.clear()

    def keys(self, data: bytes | str) -> None:
        self.server.dataReceived(data.encode("utf-8") if isinstance(data, str) else data)
        self._sync()

    def screen(self) -> list[str]:
        """The non-empty rows of the emulated terminal, trailing blanks cut."""
        self._sync()
        rows = bytes(self.buffer).decode("utf-8", "replace").split("\n")
        return [row.rstrip() for row in rows if row.strip()]

    def cursor(self) -> tuple[int, int]:
        self._sync()
        return self.buffer.x, self.buffer.y

    def typed(self) -> str:
        return b"".join(self.editor.lineBuffer).decode("utf-8")


class EditingTests(TerminalTestBase):
    def test_prompt_on_attach(self) -> None:
        self.assertEqual(self.screen(), [">"])
        self.assertEqual(self.cursor(), (2, 0))

    def test_cursor_left_right_inserts_in_the_middle(self) -> None:
        self.keys(b"abcdef" + LEFT + LEFT + b"X")
        self.assertEqual(self.screen(), ["> abcdXef"])
        self.assertEqual(self.cursor(), (7, 0))
        self.keys(RIGHT + b"Y")
        self.assertEqual(self.screen(), ["> abcdXeYf"])

    def test_home_end_and_ctrl_a_e(self) -> None:
        self.keys(b"bc" + HOME + b"a" + END + b"d")
        self.assertEqual(self.typed(), "abcd")
        self.keys(b"\x01<\x05>")
        self.assertEqual(self.typed(), "<abcd>")
        self.assertEqual(self.screen(), ["> <abcd>"])

    def test_backspace_and_delete(self) -> None:
        self.keys(b"abcd\x7f" + LEFT + b"\x1b[3~")
        self.assertEqual(self.screen(), ["> ab"])
        self.keys(b"\x08")
        self.assertEqual(self.typed(), "a")

    def test_ctrl_u_k_w(self) -> None:
        self.keys(b"/tell bob hello there" + LEFT * 6 + b"\x0b")
        self.assertEqual(self.screen(), ["> /tell bob hello"])
        self.keys(b"\x17")
        self.assertEqual(self.screen(), ["> /tell bob"])
        self.keys(LEFT * 4 + b"\x15")
        self.assertEqual(self.typed(), "bob ")
        self.assertEqual(self.screen(), ["> bob"])
        self.assertEqual(self.cursor(), (2, 0))

    def test_ctrl_l_clears_the_screen_keeps_the_line(self) -> None:
        self.console.show("old line")
        self.keys(b"half" + LEFT + b"\x0c")
        self.assertEqual(self.screen(), ["> half"])
        self.assertEqual(self.cursor(), (5, 0))

    def test_enter_runs_the_line(self) -> None:
        self.keys(b"/list\r")
        self.assertEqual(self.session.calls, [("list",)])
        self.assertEqual(self.screen(), ["> /list", ">"])

    def test_utf8_characters_are_one_cell_each(self) -> None:
        self.keys("héllo".encode() + LEFT * 4 + b"X")
        self.assertEqual(self.typed(), "hXéllo")
        self.keys(b"\x7f\x7f")
        self.assertEqual(self.typed(), "éllo")

    def test_control_bytes_and_alt_keys_are_not_inserted(self) -> None:
        self.keys(b"a\x1bx\x07\x1b[15~b")
        self.assertEqual(self.typed(), "ab")


class HistoryTests(TerminalTestBase):
    def test_up_and_down(self) -> None:
        self.keys(b"/list\r/help\r")
        self.keys(UP)
        self.assertEqual(self.typed(), "/help")
        self.keys(UP)
        self.assertEqual(self.typed(), "/list")
        self.assertEqual(self.screen()[-1], "> /list")
        self.keys(DOWN)
        self.assertEqual(self.typed(), "/help")
        self.keys(DOWN)
        self.assertEqual(self.typed(), "")
        self.assertEqual(self.screen()[-1], ">")

    def test_a_half_typed_line_is_kept_in_the_history(self) -> None:
        self.keys(b"/list\r/te")
        self.keys(UP)
        self.assertEqual(self.typed(), "/list")
        self.keys(DOWN)
        self.assertEqual(self.typed(), "/te")

    def test_ctrl_p_and_ctrl_n(self) -> None:
        self.keys(b"/list\r\x10")
        self.assertEqual(self.typed(), "/list")
        self.keys(b"\x0e")
        self.assertEqual(self.typed(), "")


class RedrawTests(TerminalTestBase):
    def test_incoming_line_keeps_prompt_half_typed_line_and_cursor(self) -> None:
        self.keys(b"/tell bob hel" + LEFT + LEFT)
        self.console.show("DM from someone: hi")
        self.assertEqual(self.screen(), ["DM from someone: hi", "> /tell bob hel"])
        self.assertEqual(self.cursor(), (13, 1))
        self.keys(b"X")
        self.assertEqual(self.typed(), "/tell bob hXel")

    def test_multi_line_output(self) -> None:
        self.keys(b"ab")
        self.console.show("one\n  two")
        self.assertEqual(self.screen(), ["one", "  two", "> ab"])

    def test_progress_status_then_redraw(self) -> None:
        self.keys(b"xy")
        self.console.status("[FILE] sending a.txt: 42%")
        self.assertEqual(self.screen(), ["[FILE] sending a.txt: 42%"])
        self.console.show("[FILE] sent a.txt")
        self.assertEqual(self.screen(), ["[FILE] sent a.txt", "> xy"])

    def test_message_timestamp_on_the_terminal(self) -> None:
        self.console.show_message(f"DM from {BOB}: hi", int(self.now * 1000) - 60_000)
        self.assertEqual(self.screen(), [f"14:29 DM from {BOB}: hi", ">"])

    def test_message_of_another_day_shows_the_date(self) -> None:
        self.console.show_message(f"DM from {BOB}: hi", int((self.now - 86400) * 1000))
        self.assertEqual(self.screen()[0], f"2026-12-07 14:30 DM from {BOB}: hi")

    def test_message_from_the_future_is_stamped_now(self) -> None:
        self.console.show_message("[public] x: hi", int((self.now + 86400) * 1000))
        self.assertEqual(self.screen()[0], "14:30 [public] x: hi")

    def test_format_time(self) -> None:
        self.assertEqual(format_time(self.now, self.now), "14:30")
        self.assertEqual(format_time(self.now - 86400 * 400, self.now), "2025-11-03 14:30")


class PasswordTests(TerminalTestBase):
    def test_password_is_not_echoed_and_not_in_the_history(self) -> None:
        self.keys(b"/list\r")
        answer = self.console.ask_password("Password: ")
        self.assertEqual(self.screen()[-1], "Password:")
        self.keys(b"s3cret-pass")
        self.assertNotIn("s3cret", "\n".join(self.screen()))
        self.keys(LEFT + UP + b"\x7f!\r")
        self.assertEqual(self.successResultOf(answer), "s3cret-pas!")
        self.keys(UP)
        self.assertEqual(self.typed(), "/list")
        self.assertNotIn("s3cret", "\n".join(self.screen()))
        self.assertNotIn(b"s3cret-pas!", self.editor.historyLines)

    def test_line_typed_ahead_is_not_taken_as_the_password(self) -> None:
        hang = self.session.hang["list"] = Deferred()
        self.keys(b"/list\r/help\r")
        answer = self.console.ask_password("Password: ")
        self.assertNoResult(answer)
        self.keys(b"pw\r")
        self.assertEqual(self.successResultOf(answer), "pw")
        hang.callback(None)
        self.assertIn("Tab completes", "\n".join(self.screen()))

    def test_half_typed_command_comes_back_after_the_prompt(self) -> None:
        self.keys(b"/tel")
        answer = self.console.ask_password("Password: ")
        self.keys(b"pw\r")
        self.successResultOf(answer)
        self.assertEqual(self.screen()[-1], "> /tel")
        self.keys(b"l")
        self.assertEqual(self.typed(), "/tell")


class ExitTests(TerminalTestBase):
    def test_ctrl_c_says_bye_on_its_own_line_and_no_prompt(self) -> None:
        self.keys(b"half typed\x03")
        self.assertEqual(self.screen(), ["> half typed", "Bye."])
        self.assertEqual(self.cursor(), (0, 2))
        self.assertEqual(self.session.calls, [("quit",)])
        self.console.show("[DISCONNECTED] late line")
        self.assertEqual(self.screen()[-1], "[DISCONNECTED] late line")

    def test_ctrl_d_on_an_empty_line_quits(self) -> None:
        self.keys(b"\x04")
        self.assertEqual(self.screen(), [">", "Bye."])
        self.assertEqual(self.session.calls, [("quit",)])

    def test_ctrl_d_on_a_line_deletes_under_the_cursor(self) -> None:
        self.keys(b"abc" + LEFT + LEFT + b"\x04")
        self.assertEqual(self.typed(), "ac")
        self.assertEqual(self.session.calls, [])

    def test_ctrl_c_at_a_password_prompt(self) -> None:
        answer = self.console.ask_password("Password: ")
        self.keys(b"abc\x03")
        self.failureResultOf(answer)
        self.assertEqual(self.screen()[-1], "Bye.")
        self.assertNotIn("abc", "\n".join(self.screen()))

    def test_quit_command_leaves_no_prompt(self) -> None:
        self.keys(b"/quit\r")
        self.assertEqual(self.screen(), ["> /quit", "Bye."])

    def test_close_keeps_the_screen(self) -> None:
        """No terminal reset on the way out (insults' own loseConnection would clear the screen)."""
        self.keys(b"/quit\r")
        self.wire.clear()
        self.console.close()
        self.assertEqual(self.wire.value(), b"")
        self.assertTrue(self.wire.disconnecting)
        self.assertEqual(self.screen(), ["> /quit", "Bye."])

    def test_no_terminal_modes_are_changed(self) -> None:
        """recvline's insert mode (IRM) is never switched on, so nothing is left to undo."""
        self.keys(b"abc" + LEFT + b"X\x1b[2~Y")
        self.assertEqual(self.typed(), "abXYc")
        self.assertNotIn(b"\x1b[4h", self.all_output)


class CompletionTests(TerminalTestBase):
    def setUp(self) -> None:
        super().setUp()
        for user_id in (ALICE, ALICE2, BOB):
            self.names.see(user_id)
        self.names.claim(BOB, {"name": "bob"})

    def tab(self, typed: bytes) -> None:
        self.keys(typed + b"\t")

    def test_command_names(self) -> None:
        self.tab(b"/te")
        self.assertEqual(self.typed(), "/tell ")
        self.keys(b"\x15")
        self.tab(b"/t")
        self.assertEqual(self.typed(), "/t")
        self.assertEqual(self.screen(), ["/tell  /trust", "> /t"])

    def test_several_commands_are_listed(self) -> None:
        self.tab(b"/l")
        self.assertEqual(self.typed(), "/l")
        self.assertEqual(self.screen(), ["/list  /login", "> /l"])

    def test_unique_id_prefix(self) -> None:
        self.tab(b"/tell 0b")
        self.assertEqual(self.typed(), f"/tell {BOB} ")

    def test_name_completes_to_the_id(self) -> None:
        self.tab(b"/tell bo")
        self.assertEqual(self.typed(), f"/tell {BOB} ")

    def test_ambiguous_prefix_lists_the_candidates(self) -> None:
        self.tab(b"/tell 577")
        self.assertEqual(self.typed(), "/tell 577eab")
        self.assertEqual(self.screen(), [f"{ALICE}  {ALICE2}", "> /tell 577eab"])

    def test_no_match_changes_nothing(self) -> None:
        self.tab(b"/tell zz")
        self.assertEqual(self.typed(), "/tell zz")
        self.assertEqual(self.screen(), ["> /tell zz"])

    def test_completion_in_the_middle_keeps_the_rest(self) -> None:
        self.keys(b"/tell 0b hi" + LEFT * 3)
        self.keys(b"\t")
        self.assertEqual(self.typed(), f"/tell {BOB}  hi")

    def test_text_is_not_completed(self) -> None:
        self.tab(b"/tell bob hello 0b")
        self.assertEqual(self.typed(), "/tell bob hello 0b")

    def test_resolved_on_enter(self) -> None:
        self.keys(b"/tell 0b9a hi there\r")
        self.assertEqual(self.session.calls, [("tell", BOB, "hi there")])


class WrappedLineTests(TerminalTestBase):
    """A line longer than the terminal is wide wraps over rows and is still drawn right."""

    width = 20

    def test_typing_past_the_edge_wraps(self) -> None:
        self.keys(b"x" * 18)  # the prompt and 18 characters fill the row exactly
        self.assertEqual(self.cursor(), (0, 1))
        self.keys(b"yz")
        self.assertEqual(self.screen(), ["> " + "x" * 18, "yz"])
        self.assertEqual(self.cursor(), (2, 1))

    def test_incoming_line_redraws_every_row(self) -> None:
        self.keys(b"a" * 18 + b"bbbbb" + LEFT * 3)
        self.console.show("DM from x: hi")
        self.assertEqual(self.screen(), ["DM from x: hi", "> " + "a" * 18, "bbbbb"])
        self.assertEqual(self.cursor(), (2, 2))

    def test_editing_across_the_row_boundary(self) -> None:
        self.keys(b"a" * 18 + b"bb" + LEFT * 3 + b"X")
        self.assertEqual(self.typed(), "a" * 17 + "X" + "abb")
        self.assertEqual(self.screen(), ["> " + "a" * 17 + "X", "abb"])
        self.assertEqual(self.cursor(), (0, 1))
        self.keys(b"\x7f\x7f")
        self.assertEqual(self.screen(), ["> " + "a" * 16 + "ab", "b"])
        self.keys(HOME)
        self.assertEqual(self.cursor(), (2, 0))
        self.keys(END)
        self.assertEqual(self.cursor(), (1, 1))

    def test_history_recall_of_a_long_line_over_a_short_one(self) -> None:
        self.keys(b"c" * 30 + b"\r")
        self.keys(b"short" + UP)
        self.assertEqual(self.screen()[-2:], ["> " + "c" * 18, "c" * 12])
        self.keys(DOWN)
        self.assertEqual(self.screen()[-1], "> short")

    def test_enter_on_a_wrapped_line(self) -> None:
        self.keys(b"/list " + b"z" * 20 + HOME + b"\r")
        self.assertEqual(self.screen(), ["> /list " + "z" * 12, "z" * 8, "Usage: /list", ">"])


class RecipeAtTheTerminalTests(SessionTestBase):
    """The guide's recipe typed at the line editor, with the real session (a fake server)."""

    def test_register_then_login_then_tell(self) -> None:
        _, _, _, bob_id = self.online_user(2)
        console = Console(clock=lambda: 1_700_000_000.0)
        session, _ = self.make_session(console)
        console.commands, console.names = session, session.names
        wire = StringTransport()
        server = terminal_protocol(console, lambda: 200)
        server.makeConnection(wire)
        buffer = helper.TerminalBuffer()
        buffer.width = 200
        emulator = insults.ClientProtocol(lambda: buffer)
        emulator.makeConnection(StringTransport())
        self.server.connect(session)

        def keys(data: str) -> list[str]:
            server.dataReceived(data.encode())
            emulator.dataReceived(wire.value())
            wire.clear()
            return [row.rstrip() for row in bytes(buffer).decode().split("\n") if row.strip()]

        keys("/register\r")
        keys(PASSWORD + "\r")
        screen = keys(PASSWORD + "\r")
        user_id = session.user_id
        self.assertIn(f"[LOGIN SUCCESS] {user_id}", screen)
        screen = keys(f"/login {user_id}\r")
        self.assertEqual(screen[-2:], [f"[LOGIN SUCCESS] {user_id}", ">"])
        screen = keys(f"/list\r/tell {bob_id[:6]}\thello\r")
        self.assertIn(f"> /tell {bob_id} hello", screen)
        self.assertEqual(screen[-2:], [f"DM to {bob_id}: hello", ">"])
        self.assertNotIn(PASSWORD, "\n".join(screen))
        self.assertEqual(screen.count("Password:"), 1)
