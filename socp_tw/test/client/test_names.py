"""Names: id prefixes, claimed names and petnames, and the commands that take a user."""

from __future__ import annotations

import json
import os

from twisted.internet.defer import succeed
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from socp_tw.client.console import Console
from socp_tw.client.names import Names, Unresolved
from socp_tw.client.pins import PinFileError, PinStore
from socp_tw.test.client.test_terminal import ALICE, ALICE2, BOB, FakeSession
from socp_tw.usernames import clean_name, name_problem

CAROL = "c0c0c0c0-3333-4333-8333-333333333333"


class NameRuleTests(SynchronousTestCase):
    def test_good_names(self) -> None:
        for name in ("alice", "Zoë", "李雷", "a" * 32, "bob_2", "  padded  "):
            self.assertIsNone(name_problem(name), name)
        self.assertEqual(clean_name("  padded  "), "padded")
        self.assertEqual(clean_name("Zoe\u0308"), "Zoë")  # NFC

    def test_bad_names(self) -> None:
        self.assertEqual(name_problem(""), "a name cannot be empty")
        self.assertEqual(name_problem("a" * 33), "a name has at most 32 characters")
        for name in ("two words", "tab\there", "esc\x1b[31m", "rtl\u202eevil", "zero\u200bwidth", "n\nl"):
            self.assertEqual(name_problem(name), "a name cannot contain spaces or control characters", name)
            self.assertIsNone(clean_name(name))
        self.assertIsNone(clean_name(42))


class ResolveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.names = Names()
        for user_id in (ALICE, ALICE2, BOB):
            self.names.see(user_id)

    def test_full_id_always_resolves(self) -> None:
        self.assertEqual(self.names.resolve(CAROL.upper()), CAROL)

    def test_unique_prefix(self) -> None:
        self.assertEqual(self.names.resolve("0b9a"), BOB)
        self.assertEqual(self.names.resolve("577eab50"), ALICE)
        self.assertEqual(self.names.resolve("577EAB5"), ALICE)

    def test_ambiguous_prefix_lists_the_candidates(self) -> None:
        self.names.claim(ALICE, {"name": "alice"})
        with self.assertRaises(Unresolved) as caught:
            self.names.resolve("577e")
        self.assertEqual(str(caught.exception), f"577e matches 2 users:\n  {ALICE} (alice)\n  {ALICE2}")

    def test_no_match(self) -> None:
        with self.assertRaises(Unresolved) as caught:
            self.names.resolve("ffff")
        self.assertEqual(str(caught.exception), "no known user matches ffff (/list shows who is online)")

    def test_a_unique_claim_resolves(self) -> None:
        self.names.claim(BOB, {"name": "Bob"})
        self.assertEqual(self.names.resolve("bob"), BOB)

    def test_a_shared_claim_never_picks_a_recipient(self) -> None:
        self.names.claim(ALICE, {"name": "alice"})
        self.names.claim(ALICE2, {"name": "alice"})
        with self.assertRaises(Unresolved) as caught:
            self.names.resolve("alice")
        self.assertIn("2 users call themselves alice", str(caught.exception))
        self.assertIn(ALICE2, str(caught.exception))

    def test_petname_wins_over_claims(self) -> None:
        names = Names(_Pins())
        names.see(ALICE)
        names.claim(ALICE2, {"name": "alice"})
        names.set_petname(ALICE, "alice")
        self.assertEqual(names.resolve("alice"), ALICE)
        self.assertEqual(names.label(ALICE), "alice")
        names.claim(ALICE, {"name": "mallory"})
        self.assertEqual(names.tag(ALICE), f"{ALICE} (alice)")

    def test_a_claim_cannot_shadow_an_id_prefix(self) -> None:
        self.names.claim(ALICE, {"name": "0b9a"})
        self.assertEqual(self.names.resolve("0b9a"), BOB)

    def test_bad_claims_are_ignored(self) -> None:
        self.names.claim(BOB, {"name": "evil\x1b[2J"})
        self.assertIsNone(self.names.label(BOB))
        self.names.claim(BOB, {"name": "bob"})
        self.names.claim(BOB, {})  # a new advert without a name withdraws the claim
        self.assertIsNone(self.names.label(BOB))
        self.names.claim(BOB, "not a dict")
        self.assertEqual(self.names.tag(BOB), BOB)

    def test_labels(self) -> None:
        self.names.claim(BOB, {"name": "bob"})
        self.assertEqual(self.names.tag(BOB), f"{BOB} (bob)")
        self.assertEqual(self.names.who(BOB), "bob (0b9a5a53)")
        self.assertEqual(self.names.who(ALICE), ALICE)

    def test_complete(self) -> None:
        self.names.claim(BOB, {"name": "bob"})
        self.assertEqual(self.names.complete("577"), sorted([ALICE, ALICE2]))
        self.assertEqual(self.names.complete("BO"), [BOB])
        self.assertEqual(self.names.complete("x"), [])


class _Pins:
    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def petname(self, user_id):
        return self.names.get(user_id)

    def petnames(self):
        return dict(self.names)

    def set_petname(self, user_id, name):
        if name is None:
            self.names.pop(user_id, None)
        else:
            self.names[user_id] = name

    def user_ids(self):
        return []


class PetnameFileTests(TestCase):
    def test_petnames_persist_in_the_pins_file(self) -> None:
        path = os.path.join(self.mktemp(), "pins.json")
        pins = PinStore(path)
        pins.set_petname(BOB, "bobby")
        again = PinStore(path)
        self.assertEqual(again.petname(BOB), "bobby")
        with open(path, encoding="utf-8") as handle:
            self.assertEqual(json.load(handle)["names"], {BOB: "bobby"})
        again.set_petname(BOB, None)
        self.assertIsNone(PinStore(path).petname(BOB))

    def test_a_bad_name_entry_is_an_error(self) -> None:
        path = os.path.join(self.mktemp(), "pins.json")
        os.makedirs(os.path.dirname(path))
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"version": 1, "users": {}, "servers": {}, "names": {BOB: "a\x1bb"}}, handle)
        self.assertRaises(PinFileError, PinStore, path)


class UserArgumentTests(SynchronousTestCase):
    """Every command taking a user takes a prefix or a name; the scripted output stays plain."""

    def setUp(self) -> None:
        self.session = FakeSession()
        self.names = Names()
        for user_id in (ALICE, ALICE2, BOB):
            self.names.see(user_id)
        self.console = Console(self.session, interactive=False, names=self.names)
        self.session.console = self.console
        self.transport = StringTransport()
        self.console.makeConnection(self.transport)

    def run_line(self, line: str) -> str:
        self.transport.clear()
        self.console.dataReceived(line.encode() + b"\n")
        return self.transport.value().decode()

    def test_tell_with_a_prefix(self) -> None:
        self.run_line("/tell 577eab50 hi there")
        self.assertEqual(self.session.calls, [("tell", ALICE, "hi there")])

    def test_ambiguous_prefix_sends_nothing(self) -> None:
        out = self.run_line("/tell 577e hi")
        self.assertEqual(out, f"[ERROR] 577e matches 2 users:\n  {ALICE}\n  {ALICE2}\n")
        self.assertEqual(self.session.calls, [])

    def test_unknown_reference(self) -> None:
        out = self.run_line("/tell nobody hi")
        self.assertEqual(out, "[ERROR] no known user matches nobody (/list shows who is online)\n")
        self.assertNotIn("\x1b", out)

    def test_an_unknown_reference_asks_the_server_once(self) -> None:
        """Our client hears only of the users it follows: an unknown reference asks the server
        who is online (refresh_directory) and resolves against that before giving up."""
        carol = "3c4d5e6f-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
        refreshes = []

        def refresh():
            refreshes.append(1)
            self.names.see(carol)
            return succeed([carol])

        self.session.refresh_directory = refresh
        self.run_line("/tell 3c4d hi")
        self.assertEqual(self.session.calls, [("tell", carol, "hi")])
        out = self.run_line("/tell nobody hi")
        self.assertEqual(out, "[ERROR] no known user matches nobody (/list shows who is online)\n")
        self.assertEqual(len(refreshes), 2)
        self.run_line("/tell 577e hi")  # ambiguous: asking the server would not help
        self.assertEqual(len(refreshes), 2)

    def test_a_refused_login_drops_the_scripts_password_line(self) -> None:
        self.console.scripted = True
        out = self.run_line("/login 577e\ns3cret-password\n/list")
        self.assertTrue(out.startswith("[ERROR] 577e matches 2 users:"), out)
        self.assertNotIn("Commands start with /", out)
        self.assertEqual(self.session.calls, [("list",)])

    def test_every_user_command_resolves(self) -> None:
        self.session.trust = lambda u: self.session._call("trust", u)
        self.session.send_file = lambda u, p: self.session._call("file", u, p)
        self.session.set_petname = lambda u, n: self.session._call("name", u, n)
        self.run_line("/trust 0b9")
        self.run_line("/file 0b9 /tmp/x y")
        self.run_line("/name 0b9 bobby")
        self.run_line("/name 0b9")
        self.assertEqual(
            self.session.calls,
            [("trust", BOB), ("file", BOB, "/tmp/x y"), ("name", BOB, "bobby"), ("name", BOB, None)],
        )

    def test_nick_and_name_check_the_name_first(self) -> None:
        self.session.nick = lambda n: self.session._call("nick", n)
        self.assertEqual(self.run_line("/nick"), "Usage: /nick <name>\n")
        self.assertEqual(
            self.run_line("/nick two words"), "[ERROR] a name cannot contain spaces or control characters\n"
        )
        self.assertEqual(self.run_line("/name 0b9 " + "x" * 40), "[ERROR] a name has at most 32 characters\n")
        self.run_line("/nick Zoë")
        self.assertEqual(self.session.calls, [("nick", "Zoë")])
