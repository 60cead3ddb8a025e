"""The hub's dispatch, error policy and connection limits (fake links, synchronous signing, Clock)."""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import crypto, wire
from socp_tw.identity import ServerIdentity
from socp_tw.limits import DEFAULT_LIMITS
from socp_tw.services.admission import source_address
from socp_tw.services.hub import Hub
from socp_tw.signer import FrameSigner
from socp_tw.test.keys import test_key
from socp_tw.testing import FakeLink, RecordingHandler, SynchronousWorkers, verify_server_frame

SERVER_ID = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
USER_ID = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


def make_hub() -> tuple[Hub, FrameSigner]:
    key = test_key(0)
    identity = ServerIdentity(SERVER_ID, key, crypto.encode_public_key(key))
    signer = FrameSigner(identity, SynchronousWorkers(), now_ms=lambda: 1700000000000)
    return Hub(signer), signer


def envelope(type: str = "HEARTBEAT", payload: dict | None = None) -> wire.Envelope:
    return wire.parse_envelope(wire.encode_frame(type, USER_ID, "*", 1, payload or {}, ""))


class HubTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.hub, self.signer = make_hub()
        self.link = FakeLink()
        self.hub.link_opened(self.link)

    def test_unknown_type_error_is_signed(self) -> None:
        self.hub.frame_received(self.link, envelope("NO_SUCH_TYPE"))
        [frame] = self.link.frames()
        self.assertEqual(frame["type"], "ERROR")
        self.assertEqual(frame["from"], SERVER_ID)
        self.assertEqual(frame["to"], "*")
        self.assertEqual(frame["payload"]["code"], "UNKNOWN_TYPE")
        self.assertEqual(frame["payload"]["msg_ref"], "NO_SUCH_TYPE")
        self.assertTrue(verify_server_frame(frame, self.signer.public_key_text))
        self.assertIsNone(self.link.closed)
        self.assertEqual(self.hub.counters["unknown_type"], 1)

    def test_rejected_frame_gets_precise_code(self) -> None:
        self.hub.frame_rejected(self.link, wire.BadTimestamp("ts must be an integer", "ts"))
        [frame] = self.link.frames()
        self.assertEqual(frame["payload"]["code"], "BAD_TS")
        self.assertEqual(self.hub.counters["rejected.BAD_TS"], 1)

    def test_server_link_errors_are_dropped_not_answered(self) -> None:
        link = FakeLink("fake-2", role="server", identity=SERVER_ID)
        self.hub.link_opened(link)
        self.hub.frame_rejected(link, wire.NotJSON("nope"))
        self.assertEqual(link.sent, [])
        self.assertEqual(self.hub.counters["rejected.BAD_JSON"], 1)

    def test_claim_and_bind(self) -> None:
        handler = RecordingHandler()
        self.hub.claim(["USER_HELLO"], handler)
        hello = envelope("USER_HELLO")
        self.hub.frame_received(self.link, hello)
        self.assertEqual(handler.received, [(self.link, hello)])
        # Not bound yet: other types are unknown.
        self.hub.frame_received(self.link, envelope("MSG_DIRECT"))
        self.assertEqual(self.link.frames()[-1]["payload"]["code"], "UNKNOWN_TYPE")
        self.hub.bind(self.link, handler)
        direct = envelope("MSG_DIRECT")
        self.hub.frame_received(self.link, direct)
        self.assertEqual(handler.received[-1], (self.link, direct))
        self.hub.link_closed(self.link, "bye")
        self.assertEqual(handler.closed, [self.link])
        self.hub.link_closed(self.link, "twice")
        self.assertEqual(handler.closed, [self.link])

    def test_error_to_identified_link(self) -> None:
        link = FakeLink("fake-3", role="user", identity=USER_ID)
        self.hub.link_opened(link)
        self.hub.send_error(link, "USER_NOT_FOUND", "who?")
        self.assertEqual(link.frames()[0]["to"], USER_ID)

    def test_stop_closes_links(self) -> None:
        self.hub.startService()
        self.hub.stopService()
        self.assertEqual(self.link.closed, (1001, "server shutting down"))


# -- connection limits (docs/SECURITY.md) ---------------------------------------------------------------

OTHER_USER = "2c1a4f6e-0c1f-4c39-9d0a-6f0f1e9b8a77"


def limited_hub(**limits) -> tuple[Hub, Clock, RecordingHandler]:
    """A started hub on a task.Clock with tight limits; a handler claims USER_HELLO."""
    clock = Clock()
    clock.advance(1000)
    key = test_key(0)
    identity = ServerIdentity(SERVER_ID, key, crypto.encode_public_key(key))
    signer = FrameSigner(identity, SynchronousWorkers(), now_ms=lambda: 1700000000000)
    hub = Hub(signer, clock=clock, limits=replace(DEFAULT_LIMITS, **limits))
    handler = RecordingHandler()
    hub.claim(["USER_HELLO"], handler)
    hub.startService()
    return hub, clock, handler


def frame(type: str = "USER_HELLO", ts: int = 1, to: str = "*", from_: str = USER_ID) -> wire.Envelope:
    return wire.Envelope(type, from_, to, ts, {}, "")


def codes(link: FakeLink) -> list[str]:
    return [f["payload"]["code"] for f in link.frames() if f["type"] == "ERROR"]


class RateLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.hub, self.clock, self.handler = limited_hub(
            conn_rate=10.0, conn_burst=5.0, conn_strike_limit=3, conn_strike_window=10.0
        )
        self.addCleanup(self.hub.stopService)
        self.link = FakeLink("in-1")
        self.hub.link_opened(self.link)

    def test_burst_then_rate_limited_then_refilled(self) -> None:
        for _ in range(5):
            self.hub.frame_received(self.link, frame())
        self.assertEqual(len(self.handler.received), 5)
        self.hub.frame_received(self.link, frame())
        self.assertEqual(len(self.handler.received), 5)  # not handled
        [error] = self.link.frames()
        self.assertEqual(error["payload"]["code"], "RATE_LIMITED")
        self.assertEqual(error["payload"]["msg_ref"], "USER_HELLO")
        self.assertIn("limit 10/s", error["payload"]["detail"])
        self.assertEqual(self.hub.counters["rate_limited"], 1)
        self.clock.advance(0.1)  # one token back
        self.hub.frame_received(self.link, frame())
        self.assertEqual(len(self.handler.received), 6)
        self.assertIsNone(self.link.closed)

    def test_malformed_frames_count_too(self) -> None:
        for _ in range(6):
            self.hub.frame_rejected(self.link, wire.NotJSON("nope"))
        self.assertEqual(codes(self.link), ["BAD_JSON"] * 5 + ["RATE_LIMITED"])

    def test_persistent_excess_closes_the_link(self) -> None:
        for _ in range(5 + 2):
            self.hub.frame_received(self.link, frame())
        self.assertIsNone(self.link.closed)
        self.hub.frame_received(self.link, frame())  # the third strike
        self.assertEqual(self.link.closed, (1008, "rate limit exceeded repeatedly"))
        self.assertEqual(self.hub.counters["closed.rate_limited"], 1)
        self.assertEqual(codes(self.link), ["RATE_LIMITED"] * 2)
        # Frames still arriving before the close completes are dropped, unanswered.
        self.clock.advance(10)
        self.hub.frame_received(self.link, frame())
        self.hub.frame_rejected(self.link, wire.NotJSON("nope"))
        self.assertEqual(len(self.handler.received), 5)
        self.assertEqual(codes(self.link), ["RATE_LIMITED"] * 2)
        self.assertEqual(self.hub.counters["dropped.closing"], 2)

    def test_strikes_expire(self) -> None:
        for _ in range(5):
            self.hub.frame_received(self.link, frame())
        for _ in range(4):
            self.hub.frame_received(self.link, frame())  # a strike, then wait it out
            self.clock.advance(10.01)
            for _ in range(5):
                self.hub.frame_received(self.link, frame())
        self.assertIsNone(self.link.closed)

    def test_server_links_are_not_limited_here(self) -> None:
        link = FakeLink("in-2", role="server", identity=SERVER_ID)
        self.hub.link_opened(link)
        self.hub.bind(link, self.handler)
        for _ in range(50):
            self.hub.frame_received(link, frame("HEARTBEAT"))
        self.assertEqual(len(self.handler.received), 50)
        self.assertEqual(link.sent, [])

    def test_state_forgotten_on_close(self) -> None:
        for _ in range(6):
            self.hub.frame_received(self.link, frame())
        self.hub.link_closed(self.link, "gone")
        self.assertNotIn(self.link.link_id, self.hub._conn_rate)
        self.assertEqual(len(self.hub._strikes), 0)


class PerUserLimitTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.hub, self.clock, self.handler = limited_hub(user_rate=1.0, user_burst=3.0)
        self.addCleanup(self.hub.stopService)

    def user_link(self, link_id: str, user_id: str = USER_ID) -> FakeLink:
        link = FakeLink(link_id, role="user", identity=user_id)
        self.hub.link_opened(link)
        self.hub.bind(link, self.handler)
        return link

    def test_bucket_follows_the_user_across_reconnects(self) -> None:
        first = self.user_link("in-1")
        for _ in range(4):
            self.hub.frame_received(first, frame("LIST_REQUEST"))
        self.assertEqual(codes(first), ["RATE_LIMITED"])
        self.assertIn("per user", first.frames()[0]["payload"]["detail"])
        self.hub.link_closed(first, "reconnecting")
        again = self.user_link("in-2", USER_ID.upper())  # ids compare case-insensitively
        self.hub.frame_received(again, frame("LIST_REQUEST"))
        self.assertEqual(codes(again), ["RATE_LIMITED"])
        other = self.user_link("in-3", OTHER_USER)
        self.hub.frame_received(other, frame("LIST_REQUEST", from_=OTHER_USER))
        self.assertEqual(codes(other), [])
        self.clock.advance(1)
        self.hub.frame_received(again, frame("LIST_REQUEST"))
        self.assertEqual(codes(again), ["RATE_LIMITED"])  # no new error: handled
        self.assertEqual(len(self.handler.received), 3 + 1 + 1)

    def test_file_chunks_are_paced_elsewhere(self) -> None:
        link = self.user_link("in-1")
        for _ in range(100):
            self.hub.frame_received(link, frame("FILE_CHUNK"))
        self.assertEqual(codes(link), [])
        self.assertEqual(len(self.handler.received), 100)

    def test_file_chunks_cost_before_login(self) -> None:
        hub, _, _ = limited_hub(conn_burst=5.0)
        self.addCleanup(hub.stopService)
        link = FakeLink("in-9")
        hub.link_opened(link)
        for _ in range(6):
            hub.frame_received(link, frame("FILE_CHUNK"))
        self.assertEqual(codes(link), ["UNKNOWN_TYPE"] * 5 + ["RATE_LIMITED"])

    def test_public_message_fan_out_counts_once(self) -> None:
        link = self.user_link("in-1")
        # A message to 200 members: one frame per member, all with the message's ts.
        for _ in range(200):
            self.hub.frame_received(link, frame("MSG_PUBLIC_CHANNEL", ts=5))
        # Two more messages fit in the burst of 3; the fourth does not.
        for ts in (6, 7, 8):
            self.hub.frame_received(link, frame("MSG_PUBLIC_CHANNEL", ts=ts))
        self.assertEqual(codes(link), ["RATE_LIMITED"])
        self.assertEqual(len(self.handler.received), 202)

    def test_fan_out_is_bounded(self) -> None:
        hub, _, handler = limited_hub(user_burst=3.0, max_fanout=10)
        self.addCleanup(hub.stopService)
        link = FakeLink("in-1", role="user", identity=USER_ID)
        hub.link_opened(link)
        hub.bind(link, handler)
        for _ in range(31):
            hub.frame_received(link, frame("MSG_PUBLIC_CHANNEL", ts=5))
        self.assertEqual(len(handler.received), 30)  # three groups of ten
        self.assertEqual(codes(link), ["RATE_LIMITED"])


class ErrorBudgetTests(SynchronousTestCase):
    def test_errors_beyond_the_budget_are_dropped(self) -> None:
        hub, clock, _ = limited_hub(error_rate=1.0, error_burst=3.0)
        self.addCleanup(hub.stopService)
        link = FakeLink("in-1")
        hub.link_opened(link)
        for _ in range(5):
            hub.frame_received(link, frame("NO_SUCH_TYPE"))
        self.assertEqual(codes(link), ["UNKNOWN_TYPE"] * 3)
        self.assertEqual(hub.counters["errors_suppressed"], 2)
        self.assertEqual(hub.counters["unknown_type"], 5)
        clock.advance(1)
        hub.frame_received(link, frame("NO_SUCH_TYPE"))
        self.assertEqual(len(codes(link)), 4)
        self.assertFalse(hub.allow_error(link))
        server = FakeLink("in-2", role="server", identity=SERVER_ID)
        self.assertTrue(all(hub.allow_error(server) for _ in range(10)))

    def test_detail_is_cut(self) -> None:
        hub, _, _ = limited_hub(max_error_detail_chars=20)
        self.addCleanup(hub.stopService)
        link = FakeLink("in-1")
        hub.link_opened(link)
        hub.send_error(link, "BAD_FIELD", "x" * 100)
        self.assertEqual(link.frames()[0]["payload"]["detail"], "x" * 20)


class IdentifyTimeoutTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.hub, self.clock, self.handler = limited_hub(identify_timeout=30.0, auth_timeout=120.0)
        self.addCleanup(self.hub.stopService)
        self.link = FakeLink("in-1")
        self.hub.link_opened(self.link)

    def test_silent_connection_closed(self) -> None:
        self.clock.advance(29.9)
        self.assertIsNone(self.link.closed)
        self.clock.advance(0.1)
        self.assertEqual(self.link.closed, (1008, "no identifying frame within 30 s"))
        self.assertEqual(self.hub.counters["closed.identify_timeout"], 1)
        self.hub.link_closed(self.link, "closed")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_heartbeats_and_unknown_frames_do_not_identify(self) -> None:
        self.hub.frame_received(self.link, frame("HEARTBEAT"))
        self.hub.frame_received(self.link, frame("NO_SUCH_TYPE"))
        self.hub.frame_rejected(self.link, wire.NotJSON("x"))
        self.clock.advance(30)
        self.assertEqual(self.link.closed[0], 1008)

    def test_identified_link_gets_until_auth_timeout(self) -> None:
        self.hub.frame_received(self.link, frame())  # claimed: a login starts
        self.clock.advance(30)
        self.assertIsNone(self.link.closed)
        self.clock.advance(89.9)
        self.assertIsNone(self.link.closed)
        self.clock.advance(0.1)
        self.assertEqual(self.link.closed, (1008, "not authenticated within 120 s"))
        self.assertEqual(self.hub.counters["closed.auth_timeout"], 1)

    def test_authenticated_link_stays(self) -> None:
        self.hub.frame_received(self.link, frame())
        self.hub.bind(self.link, self.handler)
        self.link.role, self.link.identity = "user", USER_ID
        self.clock.advance(1000)
        self.assertIsNone(self.link.closed)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_server_link_stays(self) -> None:
        self.link.role = "server"
        self.clock.advance(1000)
        self.assertIsNone(self.link.closed)

    def test_closed_link_cancels_its_timer(self) -> None:
        self.hub.link_closed(self.link, "bye")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_no_timers_unless_running(self) -> None:
        self.hub.stopService()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.link.closed, (1001, "server shutting down"))
        self.hub.link_opened(FakeLink("in-2"))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class ConnectionCountTests(SynchronousTestCase):
    def test_pending_and_total_bounds(self) -> None:
        hub, _, handler = limited_hub(max_connections=3, max_pending_connections=2)
        self.addCleanup(hub.stopService)
        first, second, third = FakeLink("in-1"), FakeLink("in-2"), FakeLink("in-3")
        hub.link_opened(first)
        hub.link_opened(second)
        hub.link_opened(third)
        self.assertEqual(third.closed, (1013, "too many connections logging in (2); try again"))
        self.assertEqual(hub.pending_links(), 2)
        hub.frame_received(third, frame())  # a turned-away link's frames go nowhere
        self.assertEqual(handler.received, [])
        self.assertEqual(hub.counters["dropped.unregistered"], 1)
        first.role, first.identity = "user", USER_ID  # logged in: no longer pending
        fourth = FakeLink("in-4")
        hub.link_opened(fourth)
        self.assertIsNone(fourth.closed)
        fifth = FakeLink("in-5")
        hub.link_opened(fifth)
        self.assertEqual(fifth.closed, (1013, "server full (3 connections)"))
        self.assertEqual(hub.counters["refused.full"], 2)
        hub.link_closed(second, "bye")
        sixth = FakeLink("in-6")
        hub.link_opened(sixth)
        self.assertIsNone(sixth.closed)


def link_from(address: str, number: int) -> FakeLink:
    link = FakeLink(f"in-{address}-{number}")
    link.peer = f"{address}:{40000 + number}"
    return link


class FairAdmissionTests(SynchronousTestCase):
    """Per-address caps on pending links, and who gives way when the total is reached."""

    def hub(self, **limits) -> tuple[Hub, Clock]:
        hub, clock, _ = limited_hub(**limits)
        self.addCleanup(hub.stopService)
        return hub, clock

    def test_unidentified_and_pending_caps_per_address(self) -> None:
        hub, _ = self.hub(max_pending_per_address=4, max_unidentified_per_address=3)
        links = [link_from("10.0.0.1", n) for n in range(5)]
        for link in links[:4]:
            hub.link_opened(link)
        self.assertEqual([link.closed for link in links[:3]], [None] * 3)
        self.assertEqual(
            links[3].closed, (1013, "too many connections from 10.0.0.1 not identified yet (3); try again")
        )
        self.assertEqual(hub.counters["refused.address"], 1)
        hub.frame_received(links[0], frame())  # a login starts: identified, still pending
        retry = link_from("10.0.0.1", 9)
        hub.link_opened(retry)
        self.assertIsNone(retry.closed)
        hub.frame_received(retry, frame())
        hub.link_opened(links[4])
        self.assertEqual(
            links[4].closed, (1013, "too many connections from 10.0.0.1 logging in (4); try again")
        )
        other = link_from("10.0.0.2", 1)
        hub.link_opened(other)  # another address is not affected
        self.assertIsNone(other.closed)
        self.assertEqual(hub.pending_links(), 5)

    def test_authenticated_links_free_their_address(self) -> None:
        hub, _ = self.hub(max_pending_per_address=2, max_unidentified_per_address=2)
        first, second, third = (link_from("10.0.0.1", n) for n in range(3))
        hub.link_opened(first)
        hub.link_opened(second)
        first.role, first.identity = "user", USER_ID  # hello accepted: no longer pending
        hub.link_opened(third)
        self.assertIsNone(third.closed)
        self.assertEqual(hub.pending_links(), 2)
        hub.link_closed(second, "bye")
        self.assertEqual(hub.pending_links(), 1)

    def test_at_the_total_the_most_crowded_address_gives_way(self) -> None:
        hub, clock = self.hub(
            max_pending_connections=4, max_pending_per_address=3, max_unidentified_per_address=3
        )
        crowd = [link_from("10.0.0.1", n) for n in range(3)]
        for link in crowd:
            hub.link_opened(link)
        hub.frame_received(crowd[0], frame())  # the crowd's oldest identified; its second is not
        alone = link_from("10.0.0.2", 1)
        hub.link_opened(alone)
        newcomer = link_from("192.0.2.7", 1)
        hub.link_opened(newcomer)
        self.assertIsNone(newcomer.closed)
        self.assertIsNone(crowd[0].closed)
        self.assertEqual(crowd[1].closed[0], 1013)  # its oldest unidentified
        self.assertIn("the most (3) from 10.0.0.1", crowd[1].closed[1])
        self.assertEqual(hub.counters["refused.evicted"], 1)
        self.assertEqual(hub.pending_links(), 4)
        hub.frame_received(crowd[1], frame())  # the evicted link's last frames go nowhere
        self.assertEqual(hub.counters["dropped.closing"], 1)
        # The most crowded address (10.0.0.1, 2 now) itself is refused, not served at others' cost.
        more = link_from("10.0.0.1", 7)
        hub.link_opened(more)
        self.assertEqual(more.closed, (1013, "too many connections logging in (4); try again"))
        # The evicted link's identify timer went with it; the others' still run.
        hub.link_closed(crowd[1], "evicted")
        clock.advance(DEFAULT_LIMITS.identify_timeout)
        self.assertEqual(alone.closed[0], 1008)
        self.assertIsNone(crowd[0].closed)

    def test_one_address_cannot_lock_out_others(self) -> None:
        """The issue's case, with the default limits: 1,000 connections from one address
        that never identify, then many more from 20 addresses; a new user still gets in."""
        hub, _ = self.hub()
        flood = [link_from("10.0.0.1", n) for n in range(1000)]
        for link in flood:
            hub.link_opened(link)
        admitted = [link for link in flood if link.closed is None]
        self.assertEqual(len(admitted), DEFAULT_LIMITS.max_unidentified_per_address)
        for address in range(2, 22):
            for n in range(DEFAULT_LIMITS.max_unidentified_per_address):
                hub.link_opened(link_from(f"10.0.0.{address}", n))
        self.assertEqual(hub.pending_links(), DEFAULT_LIMITS.max_pending_connections)
        user = link_from("192.0.2.7", 1)
        hub.link_opened(user)
        self.assertIsNone(user.closed)
        self.assertEqual(hub.pending_links(), DEFAULT_LIMITS.max_pending_connections)
        self.assertEqual(flood[0].closed[0], 1013)  # the oldest of a crowded address made room

    def test_defaults_leave_room_for_nat(self) -> None:
        limits = DEFAULT_LIMITS
        self.assertLess(limits.max_unidentified_per_address, limits.max_pending_per_address)
        self.assertLessEqual(limits.max_pending_per_address * 4, limits.max_pending_connections)


class SourceAddressTests(SynchronousTestCase):
    def test_forms(self) -> None:
        self.assertEqual(source_address("127.0.0.1:5000"), "127.0.0.1")
        self.assertEqual(source_address("tcp:10.1.2.3:80"), "10.1.2.3")
        self.assertEqual(source_address("tcp6:::ffff:10.1.2.3:80"), "10.1.2.3")
        self.assertEqual(source_address("[2001:db8::1]:443"), "2001:db8::/64")
        self.assertEqual(source_address("unix"), "unix")

    def test_ipv6_counts_per_64(self) -> None:
        self.assertEqual(source_address("tcp6:2001:db8:0:0:1::2:443"), source_address("tcp6:2001:db8::9:1"))
        self.assertNotEqual(source_address("tcp6:2001:db8:0:1::1:1"), source_address("tcp6:2001:db8::1:1"))
