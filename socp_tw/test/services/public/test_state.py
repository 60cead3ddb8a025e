"""The membership CRDT alone: merging, ordering, bounds, and parsing events."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import wire
from socp_tw.services.public import (
    ChannelState,
    parse_event,
    parse_origins,
)
from socp_tw.test.services.public.sim import (
    ALICE,
    BOB,
    CAROL,
    A,
    B,
    C,
    event,
)


class ChannelStateTests(SynchronousTestCase):
    def test_every_event_bumps_the_version(self) -> None:
        state = ChannelState()
        join = state.next_event(A, ALICE, True, A, "k")
        self.assertEqual((join.lamport, join.seq), (1, 1))
        changed, raised = state.merge([join])
        self.assertEqual((changed, raised, state.version), ([join], {A: 1}, 1))
        leave = state.next_event(A, ALICE, False, A, "ignored")
        self.assertEqual((leave.lamport, leave.seq, leave.pubkey), (2, 2, None))
        state.merge([leave])
        self.assertEqual((state.version, state.members()), (2, {}))
        self.assertFalse(state.is_member(ALICE))
        # Merging what is known changes nothing: idempotent.
        self.assertEqual(state.merge([join, leave], {A: 2}), ([], {}))
        self.assertEqual(state.version, 2)

    def test_last_writer_wins_by_lamport_then_origin_then_seq(self) -> None:
        state = ChannelState()
        state.merge([event(ALICE, True, lamport=5, origin=B)])
        state.merge([event(ALICE, False, lamport=4, origin=C, seq=9)])  # older: loses
        self.assertTrue(state.is_member(ALICE))
        state.merge([event(ALICE, False, lamport=5, origin=C)])  # same lamport, higher origin: wins
        self.assertFalse(state.is_member(ALICE))
        state.merge([event(ALICE, True, lamport=5, origin=C.upper(), seq=2)])  # origin compared lower-cased
        self.assertTrue(state.is_member(ALICE))
        self.assertEqual(state.lamport, 5)
        self.assertEqual(state.version, 9 + 2 + 1)  # counters: B 1, C max(9, 1), C.upper() 2

    def test_counters_alone_bump_the_version(self) -> None:
        state = ChannelState()
        self.assertEqual(state.merge([], {A: 3, B: 2}), ([], {A: 3, B: 2}))
        self.assertEqual(state.merge([], {A: 1, B: 4}), ([], {B: 4}))
        self.assertEqual(state.version, 7)

    def test_bounded(self) -> None:
        state = ChannelState(max_members=1)
        state.merge([event(ALICE), event(BOB, seq=2)])
        self.assertEqual((list(state.states), state.refused_full, state.version), ([ALICE], 1, 2))
        state.merge([event(ALICE, False, lamport=2, seq=3)])  # known members still change
        self.assertFalse(state.is_member(ALICE))

    @settings(max_examples=150, deadline=None)
    @given(
        st.lists(
            st.tuples(
                st.sampled_from([ALICE, BOB, CAROL]),
                st.booleans(),
                st.integers(1, 6),
                st.sampled_from([A, B, C]),
                st.integers(1, 5),
            ),
            max_size=25,
        ),
        st.randoms(use_true_random=False),
    )
    def test_merge_order_does_not_matter(self, raw, rnd) -> None:
        # (origin, seq) names one event: keep one per name, as real origins never reuse one.
        events = list({(o, s): event(m, p, lam, o, s) for m, p, lam, o, s in raw}.values())
        first, second = ChannelState(), ChannelState()
        for e in events:
            first.merge([e])
        shuffled = events + rnd.sample(events, len(events) // 2)  # duplicates too
        rnd.shuffle(shuffled)
        half = len(shuffled) // 2
        second.merge(shuffled[:half])
        second.merge(shuffled[half:], {})
        self.assertEqual(first.states, second.states)
        self.assertEqual((first.version, first.lamport), (second.version, second.lamport))
        self.assertEqual(first.members(), second.members())


class ParsingTests(SynchronousTestCase):
    def good(self) -> dict[str, Any]:
        return event(ALICE, origin=B, host=C).to_wire()

    def test_round_trip(self) -> None:
        self.assertEqual(parse_event(self.good()), event(ALICE, origin=B, host=C))
        leave = event(ALICE, False, origin=B).to_wire()
        self.assertNotIn("pubkey", leave)
        self.assertEqual(parse_event({**leave, "pubkey": "ignored"}).pubkey, None)

    def test_malformed_events(self) -> None:
        good = self.good()
        for bad, code in [
            ("not an object", "BAD_FIELD"),
            ({**good, "member_id": "alice"}, "BAD_UUID"),
            ({k: v for k, v in good.items() if k != "origin"}, "MISSING_FIELD"),
            ({**good, "present": 1}, "BAD_FIELD"),
            ({**good, "lamport": 0}, "BAD_FIELD"),
            ({**good, "lamport": 2**60}, "BAD_FIELD"),
            ({**good, "seq": "1"}, "BAD_FIELD"),
            ({**good, "host": 7}, "BAD_FIELD"),
            ({k: v for k, v in good.items() if k != "pubkey"}, "MISSING_FIELD"),
        ]:
            with self.assertRaises(wire.FrameError) as caught:
                parse_event(bad)
            self.assertEqual(caught.exception.code, code, bad)

    def test_origins(self) -> None:
        self.assertEqual(parse_origins(None), {})
        self.assertEqual(parse_origins({A: 3, B: 0}), {A: 3, B: 0})
        for bad in ([A], {"x": 1}, {A: -1}, {A: True}, {wire.new_uuid4(): 1 for _ in range(1001)}):
            self.assertRaises(wire.FrameError, parse_origins, bad)
