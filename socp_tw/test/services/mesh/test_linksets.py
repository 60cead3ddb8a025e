"""The relay rule (services/mesh/linksets.py): SERVER_LINKS told and read, floods skipped and replayed."""

from __future__ import annotations

import json

from socp_tw import crypto
from socp_tw.test.services.mesh.support import HERE, LOW, S1, S2, S3, USER, MeshTestCase, pub, user_pub
from socp_tw.testing import FakeLink

EXT = ["deliver-ack", "link-set"]


class LinkSetTestCase(MeshTestCase):
    """Links from S1, S2, S3 (they speak ``link-set``) and LOW (it does not), all heard from."""

    def setUp(self) -> None:
        super().setUp()
        self.links = {sid: self.link_in(sid, ext=EXT) for sid in (S1, S2, S3)}
        self.links[LOW] = self.link_in(LOW)
        for sid, link in self.links.items():
            self.receive(link, self.frame("HEARTBEAT", sid, {}, to=HERE))  # healthy: our frames arrive
        self.clock.advance(self.mesh.link_set_delay)
        self.seq = 1
        self.clear()

    def link_in(self, server_id: str, ext: list | None = None) -> FakeLink:
        link = FakeLink(f"in-{server_id[:4]}")
        self.hub.link_opened(link)
        address = self.address(server_id) if ext is None else {**self.address(server_id), "ext": ext}
        self.receive(link, self.frame("SERVER_HELLO_LINK", server_id, address, to=HERE))
        return link

    def clear(self) -> None:
        for link in self.links.values():
            link.sent.clear()

    def claim(self, server_id: str, *servers: str, seq: int | None = None, via: str | None = None) -> None:
        """``server_id`` says it is linked to ``servers`` (on its own link, or ``via`` another's)."""
        if seq is None:
            self.seq += 1
            seq = self.seq
        frame = self.frame("SERVER_LINKS", server_id, {"servers": list(servers), "seq": seq}, to=HERE)
        self.receive(self.links[via or server_id], frame)

    def full_mesh(self) -> None:
        everyone = {HERE, S1, S2, S3}
        for sid in (S1, S2, S3):
            self.claim(sid, *sorted(everyone - {sid}))
        self.clear()

    def advertise(self, origin: str = S1, user: str = USER) -> bytes:
        payload = {"user_id": user, "server_id": origin, "pubkey": user_pub(), "meta": {"pubkey": user_pub()}}
        return self.frame("USER_ADVERTISE", origin, payload)

    def got(self, server_id: str, kind: str = "USER_ADVERTISE") -> int:
        return sum(1 for f in self.links[server_id].frames() if f["type"] == kind)


class TellingTests(LinkSetTestCase):
    def test_our_links_go_to_each_speaker_once_signed_addressed_to_it(self) -> None:
        calls = self.node.workers.calls
        self.mesh._link_set = None  # tell again from scratch
        for link in self.links.values():
            link.sent.clear()
        for state in self.mesh._by_server.values():
            state.told_links = None
        self.mesh._tell_links()
        self.assertEqual(self.node.workers.calls, calls + 1)  # one signature for every link
        for sid in (S1, S2, S3):
            [frame] = self.links[sid].frames()
            self.assertEqual((frame["type"], frame["from"], frame["to"]), ("SERVER_LINKS", HERE, sid))
            self.assertEqual(frame["payload"]["servers"], sorted([S1, S2, S3, LOW]))
            self.assertTrue(
                crypto.verify_payload(crypto.load_public_key(pub(HERE)), frame["payload"], frame["sig"])
            )
        self.assertEqual(self.links[LOW].sent, [])  # a peer without the extension gets spec frames only

    def test_a_lost_link_is_told_at_once_a_new_one_coalesced(self) -> None:
        self.hub.link_closed(self.links[S3], "gone")
        for sid in (S1, S2):
            [frame] = self.links[sid].frames()
            self.assertEqual(frame["payload"]["servers"], sorted([S1, S2, LOW]))
        self.clear()
        self.links[S3] = self.link_in(S3, ext=EXT)
        self.receive(self.links[S3], self.frame("HEARTBEAT", S3, {}, to=HERE))
        self.assertEqual(self.got(S1, "SERVER_LINKS"), 0)
        self.clock.advance(self.mesh.link_set_delay)
        self.assertEqual(self.got(S1, "SERVER_LINKS"), 1)
        self.assertEqual(self.got(S3, "SERVER_LINKS"), 1)  # the newcomer gets it too

    def test_a_peer_that_sends_its_links_is_told_ours(self) -> None:
        # LOW did not list the extension, but sending SERVER_LINKS shows it speaks it.
        self.claim(LOW, HERE)
        self.assertEqual(self.got(LOW, "SERVER_LINKS"), 1)
        self.assertTrue(self.mesh._known[LOW].link_sets)


class RuleTests(LinkSetTestCase):
    def test_full_mesh_no_copy_to_those_linked_to_the_origin(self) -> None:
        self.full_mesh()
        self.receive(self.links[S1], self.advertise(S1))
        self.assertIsNotNone(self.presence.lookup(USER))
        self.assertEqual((self.got(S2), self.got(S3)), (0, 0))
        self.assertEqual(self.got(LOW), 1)  # no extension: flooded to as the spec says
        self.assertEqual(self.mesh.counters["relay.skipped"], 2)

    def test_without_claims_everything_is_flooded(self) -> None:
        self.receive(self.links[S1], self.advertise(S1))
        self.assertEqual((self.got(S2), self.got(S3), self.got(LOW)), (1, 1, 1))

    def test_never_back_to_the_origin(self) -> None:
        self.receive(self.links[S2], self.advertise(S1))  # relayed to us by S2
        self.assertEqual(self.got(S1), 0)
        self.assertEqual((self.got(S3), self.got(LOW)), (1, 1))

    def test_one_sided_claims_change_nothing(self) -> None:
        self.claim(S1, HERE, S2, S3)  # S1 says it is linked to S2 and S3 ...
        self.claim(S2, HERE)  # ... S2 does not say it is linked to S1
        self.claim(S3, HERE, S1, S2)  # S3 does
        self.clear()
        self.receive(self.links[S1], self.advertise(S1))
        self.assertEqual((self.got(S2), self.got(S3)), (1, 0))

    def test_a_lying_peer_cannot_cut_off_third_parties(self) -> None:
        # S2 claims links to everybody and S1 (honest) only to us and S3: S1's frames still
        # reach S2 (S1 does not confirm), and S3's frames reach S2 too (S3 does not confirm).
        self.claim(S1, HERE, S3)
        self.claim(S2, HERE, S1, S3, LOW)
        self.claim(S3, HERE, S1)
        self.clear()
        self.receive(self.links[S1], self.advertise(S1))
        self.assertEqual((self.got(S2), self.got(S3)), (1, 0))  # S3 has it from S1, both say so
        self.receive(self.links[S3], self.advertise(S3, user="2c1a4f6e-0c1f-4c39-9d0a-6f0f1e9b8a77"))
        self.assertEqual(self.got(S2), 2)
        # A liar as origin (S2 claims S1, but S1 does not claim S2) cannot stop its frames reaching S1.
        self.receive(self.links[S2], self.advertise(S2, user="3b2c1d4e-5f60-4a7b-8c9d-0e1f2a3b4c5d"))
        self.assertEqual(self.got(S1), 1)

    def test_a_server_linked_only_to_us_gets_every_frame(self) -> None:
        # S3 joined through us alone; S1 and S2 are linked to each other.
        self.claim(S1, HERE, S2)
        self.claim(S2, HERE, S1)
        self.claim(S3, HERE)
        self.clear()
        self.receive(self.links[S1], self.advertise(S1))
        self.assertEqual((self.got(S2), self.got(S3)), (0, 1))

    def test_public_channel_frames_follow_the_rule_through_relay(self) -> None:
        self.full_mesh()
        payload = {"events": [], "counters": {}}
        frame = self.frame("PUBLIC_CHANNEL_ADD", S1, payload)
        from socp_tw import wire

        sent = self.mesh.relay(wire.parse_envelope(frame), self.links[S1])
        self.assertEqual(sent, 1)  # LOW only
        self.assertEqual(self.got(LOW, "PUBLIC_CHANNEL_ADD"), 1)

    def test_announces_follow_the_rule(self) -> None:
        self.full_mesh()
        self.receive(self.links[S1], self.frame("SERVER_ANNOUNCE", S1, {**self.address(S1), "ext": EXT}))
        self.assertEqual((self.got(S2, "SERVER_ANNOUNCE"), self.got(LOW, "SERVER_ANNOUNCE")), (0, 1))


class ReplayTests(LinkSetTestCase):
    def test_a_withdrawn_link_gets_what_was_skipped_once(self) -> None:
        self.full_mesh()
        data = self.advertise(S1)
        self.receive(self.links[S1], data)
        self.assertEqual(self.got(S2), 0)
        self.clock.advance(5)
        self.claim(S2, HERE, S3)  # S2 lost its link to S1: it may have missed the advert
        self.assertEqual(
            [f for f in self.links[S2].frames() if f["type"] == "USER_ADVERTISE"], [json.loads(data)]
        )
        self.assertEqual(self.mesh.counters["relay.replayed"], 1)
        self.claim(S1, HERE, S3)  # S1 says so too: nothing is sent twice
        self.assertEqual(self.got(S2), 1)
        self.assertEqual(self.got(S1), 0)  # S2 originated nothing we skipped for S1

    def test_the_origin_withdrawing_replays_too(self) -> None:
        self.full_mesh()
        self.receive(self.links[S1], self.advertise(S1))
        self.claim(S1, HERE, S2)  # S1 no longer linked to S3
        self.assertEqual((self.got(S2), self.got(S3)), (0, 1))

    def test_nothing_older_than_the_retention_is_replayed(self) -> None:
        self.full_mesh()
        self.receive(self.links[S1], self.advertise(S1))
        self.clock.advance(self.mesh.dead_after + self.mesh.heartbeat_interval + 1)
        self.claim(S2, HERE, S3)
        self.assertEqual(self.got(S2), 0)
        self.assertEqual(len(self.mesh._retained), 0)

    def test_when_nothing_can_be_retained_it_is_flooded(self) -> None:
        self.full_mesh()
        self.mesh._retained.max_entries = 0
        self.receive(self.links[S1], self.advertise(S1))
        self.assertEqual((self.got(S2), self.got(S3)), (1, 1))
        self.assertEqual(self.mesh.counters["relay.retain_full"], 1)


class HostileLinkSetTests(LinkSetTestCase):
    def test_old_or_replayed_sets_are_ignored(self) -> None:
        self.claim(S2, HERE, S1, seq=100)
        self.claim(S1, HERE, S2)
        self.claim(S2, HERE, seq=50)  # older: ignored, S2 still claims S1
        self.claim(S2, HERE, seq=100)  # a replay: ignored
        self.assertEqual(self.mesh.counters["dropped.link_set_old"], 2)
        self.clear()
        self.receive(self.links[S1], self.advertise(S1))
        self.assertEqual(self.got(S2), 0)

    def test_a_set_relayed_for_another_server_is_ignored(self) -> None:
        self.claim(S1, HERE, S2)
        self.claim(S2, HERE, S1, via=S3)  # S2's claims arriving on S3's link count for nothing
        self.assertEqual(self.mesh.counters["dropped.link_set_relayed"], 1)
        self.clear()
        self.receive(self.links[S1], self.advertise(S1))
        self.assertEqual(self.got(S2), 1)

    def test_malformed_and_forged_sets_are_dropped(self) -> None:
        for payload in (
            {"servers": "x", "seq": 5},
            {"servers": ["not-a-uuid"], "seq": 5},
            {"servers": [S1], "seq": -1},
            {"servers": [S1]},
            {"servers": [S1] * 1001, "seq": 5},
        ):
            self.receive(self.links[S2], self.frame("SERVER_LINKS", S2, payload, to=HERE))
        self.assertEqual(self.mesh.counters["dropped.bad_gossip"], 5)
        self.receive(self.links[S2], self.frame("SERVER_LINKS", S2, {"servers": [S1], "seq": 5}, signer=S3))
        self.assertEqual(self.mesh.counters["verify_failed"], 1)
        self.assertIsNone(self.mesh._by_server[S2].claims)
        self.assertEqual(self.mesh.counters["unknown_type"], 0)

    def test_claims_end_with_the_link(self) -> None:
        self.full_mesh()
        self.hub.link_closed(self.links[S2], "gone")
        self.links[S2] = self.link_in(S2, ext=EXT)
        self.receive(self.links[S2], self.frame("HEARTBEAT", S2, {}, to=HERE))
        self.clear()
        self.receive(self.links[S1], self.advertise(S1))
        self.assertEqual(self.got(S2), 1)  # a new link has told us nothing yet


class HeartbeatTests(LinkSetTestCase):
    def test_one_signature_per_round_each_addressed_to_its_peer(self) -> None:
        calls = self.node.workers.calls
        rounds = 4
        for _ in range(rounds):
            self.clock.advance(self.mesh.heartbeat_interval)
            for sid, link in self.links.items():
                self.receive(link, self.frame("HEARTBEAT", sid, {}, to=HERE))
        self.assertLessEqual(self.node.workers.calls - calls, rounds)
        self.assertGreaterEqual(self.node.workers.calls - calls, rounds - 1)
        key = crypto.load_public_key(pub(HERE))
        for sid, link in self.links.items():
            beats = [f for f in link.frames() if f["type"] == "HEARTBEAT"]
            self.assertEqual(len(beats), rounds)
            for beat in beats:
                self.assertEqual((beat["from"], beat["to"], beat["payload"]), (HERE, sid, {}))
                self.assertTrue(crypto.verify_payload(key, beat["payload"], beat["sig"]))
