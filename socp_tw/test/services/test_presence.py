"""The presence table's rules (PROTOCOL.md §3-4), checked on the real table and on the fake."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from socp_tw.interfaces import IPresence, IPresenceObserver
from socp_tw.services.presence import NameInUse, Presence
from socp_tw.testing import FakeLink, FakePresence

HERE = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
OTHER = "6fa459ea-ee8a-4ca4-894e-db77e160355e"
THIRD = "16fd2706-8baf-433b-82eb-8c7fada847da"
ALICE = "7c9e6679-7425-40de-944b-e07fc1f90ae7"
BOB = "886313e1-3b8a-4372-9b90-0c9aee199e5d"


@implementer(IPresenceObserver)
class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    def user_online(self, entry) -> None:
        self.events.append(("online", entry.user_id, entry.server_id))

    def user_offline(self, entry) -> None:
        self.events.append(("offline", entry.user_id, entry.server_id))


class PresenceContract:
    """Rules every IPresence must follow; ``make()`` builds the implementation for server HERE."""

    def make(self):
        raise NotImplementedError

    def setUp(self) -> None:
        self.presence = self.make()
        self.recorder = Recorder()
        self.presence.add_observer(self.recorder)

    def test_interface(self) -> None:
        self.assertTrue(verifyObject(IPresence, self.presence))
        self.assertEqual(self.presence.server_id, HERE)

    def test_local_user_lifecycle(self) -> None:
        link = FakeLink("user-1", "user", ALICE)
        entry = self.presence.user_online_local(ALICE, "key-a", {"name": "alice"}, link)
        self.assertTrue(entry.local)
        self.assertEqual(entry.server_id, HERE)
        self.assertIs(self.presence.local_link(ALICE), link)
        self.assertEqual([e.user_id for e in self.presence.local_entries()], [ALICE])
        self.assertEqual(self.presence.online_users(), [ALICE])
        with self.assertRaises(NameInUse):
            self.presence.user_online_local(ALICE, "key-a", {}, FakeLink("user-2"))
        # Only the link that holds the user may take it offline.
        self.assertFalse(self.presence.user_offline_local(ALICE, FakeLink("user-2")))
        self.assertTrue(self.presence.user_offline_local(ALICE, link))
        self.assertFalse(self.presence.user_offline_local(ALICE, link))
        self.assertIsNone(self.presence.lookup(ALICE))
        self.assertEqual(self.recorder.events, [("online", ALICE, HERE), ("offline", ALICE, HERE)])

    def test_remote_advertise_records_location(self) -> None:
        self.assertTrue(self.presence.user_online_remote(BOB, OTHER, "key-b", {"pubkey": "key-b"}))
        entry = self.presence.lookup(BOB)
        self.assertFalse(entry.local)
        self.assertEqual((entry.server_id, entry.pubkey), (OTHER, "key-b"))
        self.assertIsNone(self.presence.local_link(BOB))
        self.assertEqual(self.presence.users_on(OTHER), [BOB])
        # The same advertise again changes nothing and notifies nobody.
        self.assertFalse(self.presence.user_online_remote(BOB, OTHER, "key-b", {"pubkey": "key-b"}))
        # The user moved to another server.
        self.assertTrue(self.presence.user_online_remote(BOB, THIRD, "key-b", {}))
        self.assertEqual(self.presence.users_on(OTHER), [])
        self.assertEqual(self.recorder.events, [("online", BOB, OTHER), ("online", BOB, THIRD)])

    def test_local_user_never_displaced_by_remote(self) -> None:
        self.presence.user_online_local(ALICE, "key-a", {}, FakeLink())
        self.assertFalse(self.presence.user_online_remote(ALICE, OTHER, "forged", {}))
        self.assertTrue(self.presence.lookup(ALICE).local)
        self.assertFalse(self.presence.user_offline_remote(ALICE, HERE))
        self.assertTrue(self.presence.lookup(ALICE).local)

    def test_remove_is_conditional_on_location(self) -> None:
        self.presence.user_online_remote(BOB, OTHER, "key-b", {})
        self.assertFalse(self.presence.user_offline_remote(BOB, THIRD))
        self.assertIsNotNone(self.presence.lookup(BOB))
        self.assertFalse(self.presence.user_offline_remote(ALICE, OTHER))
        self.assertTrue(self.presence.user_offline_remote(BOB, OTHER))
        self.assertIsNone(self.presence.lookup(BOB))

    def test_server_lost_withdraws_only_its_users(self) -> None:
        self.presence.user_online_remote(BOB, OTHER, "key-b", {})
        self.presence.user_online_remote(ALICE, THIRD, "key-a", {})
        local = "2c1a4f6e-0c1f-4c39-9d0a-6f0f1e9b8a77"
        self.presence.user_online_local(local, "key-l", {}, FakeLink())
        self.assertEqual(self.presence.server_lost(OTHER), [BOB])
        self.assertEqual(self.presence.online_users(), sorted([ALICE, local]))
        self.assertEqual(self.presence.server_lost(OTHER), [])
        self.assertIn(("offline", BOB, OTHER), self.recorder.events)


class RealPresenceTests(PresenceContract, SynchronousTestCase):
    def make(self):
        return Presence(HERE)

    def test_failing_observer_does_not_stop_the_others(self) -> None:
        @implementer(IPresenceObserver)
        class Broken:
            def user_online(self, entry):
                raise RuntimeError("boom")

            user_offline = user_online

        presence = Presence(HERE)
        presence.add_observer(Broken())
        recorder = Recorder()
        presence.add_observer(recorder)
        presence.user_online_remote(BOB, OTHER, "key-b", {})
        self.assertEqual(recorder.events, [("online", BOB, OTHER)])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_remote_users_are_bounded(self) -> None:
        presence = Presence(HERE, max_remote_users=2)
        presence.user_online_local(ALICE, "key-a", {}, FakeLink())
        self.assertTrue(presence.user_online_remote(BOB, OTHER, "k", {}))
        self.assertTrue(presence.user_online_remote(THIRD, OTHER, "k", {}))
        self.assertFalse(presence.user_online_remote("9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d", OTHER, "k", {}))
        # Updating a user already known is still allowed, and a removal makes room.
        self.assertTrue(presence.user_online_remote(BOB, OTHER, "k2", {}))
        presence.user_offline_remote(BOB, OTHER)
        self.assertTrue(presence.user_online_remote("9a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d", OTHER, "k", {}))
        self.assertEqual(presence.counts(), (1, 3))

    def test_rename_server_moves_local_users(self) -> None:
        self.presence.user_online_local(ALICE, "key-a", {}, FakeLink())
        self.presence.user_online_remote(BOB, OTHER, "key-b", {})
        self.presence.rename_server(THIRD)
        self.assertEqual(self.presence.server_id, THIRD)
        self.assertEqual(self.presence.lookup(ALICE).server_id, THIRD)
        self.assertEqual(self.presence.lookup(BOB).server_id, OTHER)
        self.assertEqual(self.presence.remote_servers(), {OTHER})


class FakePresenceTests(PresenceContract, SynchronousTestCase):
    def make(self):
        return FakePresence(HERE)

    def test_calls_are_recorded(self) -> None:
        self.presence.user_online_remote(BOB, OTHER, "key-b", {})
        self.presence.server_lost(OTHER)
        self.assertEqual(
            self.presence.calls,
            [
                ("user_online_remote", BOB, OTHER),
                ("server_lost", OTHER),
                ("user_offline_remote", BOB, OTHER),
            ],
        )
