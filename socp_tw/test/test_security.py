"""Hardening (docs/SECURITY.md), unit level: replay windows, identity binding on server links,
per-peer pacing, bounded send queues, peer TLS policy, and the limits agreeing with the code.

The connection limits of the hub have their own tests in services/test_hub; the end-to-end
versions of these checks are in test_tls_e2e and services/mesh/test_faults_e2e.
"""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import SSL4ServerEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import content, crypto, tls, wire
from socp_tw.auth.login import SrpClient
from socp_tw.identity import ServerIdentity
from socp_tw.limits import DEFAULT_LIMITS, Limits
from socp_tw.protocols.peer import PeerClientFactory
from socp_tw.protocols.websocket import send_overflow
from socp_tw.services import mesh as mesh_module
from socp_tw.services import presence as presence_module
from socp_tw.services import users as users_module
from socp_tw.services.hub import Hub
from socp_tw.services.mesh import OutgoingLinks
from socp_tw.services.presence import Presence
from socp_tw.services.router import Router
from socp_tw.signer import FrameSigner
from socp_tw.tap import Options, makeService
from socp_tw.test.keys import test_key, vector_id, vector_key
from socp_tw.test.servers import open_server_link, prepare_data_dir
from socp_tw.test.services.mesh.support import HERE, S1, S2, S3, MeshTestCase, Node
from socp_tw.test.services.users.test_users import PASSWORD, UserSideTestBase, alice_key, bob_key
from socp_tw.test.tls_certs import shared_pki, write_pem
from socp_tw.testing import FakeLink, FakePeerLinks, NeverSigner, RecordingPeerLinkEvents, SynchronousWorkers

USER = "7c9e6679-7425-40de-944b-e07fc1f90ae7"


# -- replay protection on the user side --------------------------------------------------------------


class UserReplayTests(UserSideTestBase):
    def setUp(self) -> None:
        super().setUp()
        self.alice, self.bob = wire.new_uuid4(), wire.new_uuid4()
        self.alice_link = self.online(self.alice, alice_key())
        self.bob_link = self.online(self.bob, bob_key())
        self.take(self.alice_link)
        self.take(self.bob_link)

    def now_ms(self) -> int:
        return int(self.clock.seconds() * 1000)

    def dm(self, ts: int, text: bytes = b"hi", from_: str | None = None) -> dict:
        ciphertext = crypto.oaep_encrypt(bob_key().public_key(), text)
        sig = crypto.sign_content(alice_key(), crypto.dm_preimage(ciphertext, self.alice, self.bob, ts))
        payload = {
            "ciphertext": ciphertext,
            "sender_pub": crypto.encode_public_key(alice_key()),
            "content_sig": sig,
        }
        self.send(self.alice_link, "MSG_DIRECT", payload, from_=from_ or self.alice, to=self.bob, ts=ts)
        return payload

    def resend(self, payload: dict, ts: int) -> None:
        self.send(self.alice_link, "MSG_DIRECT", payload, from_=self.alice, to=self.bob, ts=ts)

    def test_window_edges(self) -> None:
        now = self.now_ms()
        for ts in (now - 300_000, now + 300_000):
            self.dm(ts)
            self.assertEqual(self.one(self.bob_link, "USER_DELIVER")["ts"], ts)
        self.dm(now - 300_001)
        error = self.error(self.alice_link, "BAD_TS")
        self.assertEqual(error["msg_ref"], "MSG_DIRECT")
        self.assertEqual(error["detail"], "ts is 300.001 s behind server time; the window is ±300 s")
        self.dm(now + 3_600_000)
        self.assertIn("60.0 min ahead of server time", self.error(self.alice_link, "BAD_TS")["detail"])
        self.assertEqual(self.take(self.bob_link), [])

    def test_identical_frame_is_a_replay(self) -> None:
        ts = self.now_ms()
        payload = self.dm(ts)
        self.one(self.bob_link, "USER_DELIVER")
        self.resend(payload, ts)
        error = self.error(self.alice_link, "REPLAY")
        self.assertEqual(error["msg_ref"], "MSG_DIRECT")
        self.assertIn("already received", error["detail"])
        self.assertEqual(self.take(self.bob_link), [])
        self.assertEqual(self.users.counters["replayed"], 1)
        # The same text again is a new message (new ts, new ciphertext and signature).
        self.dm(ts + 1)
        self.one(self.bob_link, "USER_DELIVER")

    def test_a_refused_frame_is_remembered_too(self) -> None:
        # Even a frame that failed (recipient offline) cannot be replayed later to reach the user.
        ts = self.now_ms()
        payload = self.dm(ts)
        self.take(self.bob_link)
        self.resend(payload, ts)
        self.error(self.alice_link, "REPLAY")

    def test_replay_after_the_seen_window_is_stale(self) -> None:
        ts = self.now_ms()
        payload = self.dm(ts)
        self.one(self.bob_link, "USER_DELIVER")
        self.clock.advance(DEFAULT_LIMITS.seen_ids_ttl + 1)
        self.resend(payload, ts)
        self.error(self.alice_link, "BAD_TS")
        self.assertEqual(self.take(self.bob_link), [])

    def test_window_is_configurable(self) -> None:
        self.users.limits = replace(DEFAULT_LIMITS, ts_window=60.0)
        self.dm(self.now_ms() - 61_000)
        self.assertIn("the window is ±60 s", self.error(self.alice_link, "BAD_TS")["detail"])

    def test_every_kind_of_user_content_is_checked(self) -> None:
        seen: list[str] = []
        for kind in ("MSG_PUBLIC_CHANNEL", "FILE_START", "FILE_CHUNK", "FILE_END"):
            self.users.register_user_frame(kind, lambda link, user, envelope: seen.append(envelope.type))
            self.send(self.alice_link, kind, {"n": 1}, from_=self.alice, to=self.bob, ts=1)
            self.error(self.alice_link, "BAD_TS")
            self.send(self.alice_link, kind, {"n": 1}, from_=self.alice, to=self.bob)
            self.send(self.alice_link, kind, {"n": 1}, from_=self.alice, to=self.bob)
            self.error(self.alice_link, "REPLAY")
        self.assertEqual(seen, ["MSG_PUBLIC_CHANNEL", "FILE_START", "FILE_CHUNK", "FILE_END"])

    def test_requests_are_not_content(self) -> None:
        self.send(self.alice_link, "LIST_REQUEST", {}, from_=self.alice, ts=1)
        self.one(self.alice_link, "LIST_RESPONSE")
        self.send(self.alice_link, "LIST_REQUEST", {}, from_=self.alice, ts=1)
        self.one(self.alice_link, "LIST_RESPONSE")

    def test_from_is_checked_first(self) -> None:
        self.dm(1, from_=self.bob)
        self.error(self.alice_link, "BAD_FROM")

    def test_user_link_cannot_speak_for_a_server(self) -> None:
        pubkey = crypto.encode_public_key(bob_key())
        advert = {"user_id": USER, "server_id": S1, "pubkey": pubkey, "meta": {}}
        self.send(self.alice_link, "USER_ADVERTISE", advert, from_=self.alice)
        self.error(self.alice_link, "UNKNOWN_TYPE")
        self.send(self.alice_link, "SERVER_DELIVER", {"user_id": self.bob}, from_=self.alice)
        self.error(self.alice_link, "UNKNOWN_TYPE")
        self.assertIsNone(self.presence.lookup(USER))
        self.assertEqual(self.take(self.bob_link), [])

    def test_replayed_login_proof_fails(self) -> None:
        user_id = wire.new_uuid4()
        link = self.open_link()
        self.register(link, user_id, alice_key())
        client = SrpClient(user_id, PASSWORD)
        self.send(link, "USER_LOGIN_START", {"user_id": user_id, "A": client.start()}, from_=user_id)
        challenge = self.one(link, "USER_LOGIN_CHALLENGE")
        proof = {"user_id": user_id, "M1": client.process_challenge(challenge["payload"])}
        self.send(link, "USER_LOGIN_PROOF", proof, from_=user_id)
        self.one(link, "USER_LOGIN_OK")
        # The captured proof, replayed: on the same connection the attempt is spent ...
        self.send(link, "USER_LOGIN_PROOF", proof, from_=user_id)
        self.assertIn("no login attempt", self.error(link, "LOGIN_FAILED")["detail"])
        # ... and after a new start (fresh server secret) it no longer matches: a wrong proof.
        other = self.open_link()
        self.send(other, "USER_LOGIN_START", {"user_id": user_id, "A": client.start()}, from_=user_id)
        self.one(other, "USER_LOGIN_CHALLENGE")
        self.send(other, "USER_LOGIN_PROOF", proof, from_=user_id)
        self.assertEqual(self.error(other, "LOGIN_FAILED")["detail"], "wrong password")


# -- replay protection between servers ---------------------------------------------------------------


class ServerDeliverWindowTests(SynchronousTestCase):
    NOW = 1_700_000_500_000
    BOB = vector_id("bob")
    ALICE = vector_id("alice")

    def setUp(self) -> None:
        self.presence = Presence(HERE)
        key = test_key(0)
        identity = ServerIdentity(HERE, key, crypto.encode_public_key(key))
        self.signer = FrameSigner(identity, SynchronousWorkers(), now_ms=lambda: self.NOW)
        self.peers = FakePeerLinks([S1])
        self.router = Router(
            self.presence, self.signer, self.peers, ts_window=300.0, now_ms=lambda: self.NOW, clock=Clock()
        )
        self.bob_link = FakeLink("bob", "user", self.BOB)
        self.presence.user_online_local(self.BOB, crypto.encode_public_key(bob_key()), {}, self.bob_link)

    def deliver(self, ts: int) -> None:
        ciphertext = wire.b64u_encode(b"\x01" * 512)
        sig = crypto.sign_content(
            vector_key("alice"), crypto.dm_preimage(ciphertext, self.ALICE, self.BOB, ts)
        )
        payload = {
            "user_id": self.BOB,
            "ciphertext": ciphertext,
            "content_sig": sig,
            "sender": self.ALICE,
            "sender_pub": crypto.encode_public_key(vector_key("alice")),
        }
        self.peers.deliver(wire.Envelope("SERVER_DELIVER", S1, HERE, ts, payload, "checked-by-the-mesh"))

    def test_fresh_delivered_stale_refused_to_the_origin(self) -> None:
        self.deliver(self.NOW - 299_000)
        self.assertEqual([f["type"] for f in self.bob_link.frames()], ["USER_DELIVER"])
        self.deliver(self.NOW - 301_000)
        self.assertEqual(len(self.bob_link.frames()), 1)
        [(server_id, error)] = self.peers.sent_frames()
        self.assertEqual(server_id, S1)
        self.assertEqual(error["type"], "ERROR")
        self.assertEqual(error["payload"]["code"], "BAD_TS")
        self.assertEqual(error["payload"]["msg_ref"], "SERVER_DELIVER")
        self.assertEqual(error["payload"]["sender"], self.ALICE)
        self.assertEqual(self.router.counters["bad_deliver"], 1)

    def test_no_window_no_check(self) -> None:
        router = Router(Presence(HERE), self.signer, FakePeerLinks([S1]), clock=Clock())
        self.assertIsNone(router._ts_window_ms)


class ServerLinkBindingTests(MeshTestCase):
    """A server link speaks for its own server, or relays frames that its origin signed."""

    def advertise(self, origin: str, signer: str | None = None, user: str = USER) -> bytes:
        pubkey = crypto.encode_public_key(test_key(6))
        payload = {"user_id": user, "server_id": origin, "pubkey": pubkey, "meta": {}}
        return self.frame("USER_ADVERTISE", origin, payload, signer=signer)

    def announce_via(self, link: FakeLink, origin: str) -> None:
        self.receive(link, self.frame("SERVER_ANNOUNCE", origin, self.address(origin)))

    def test_relayed_frame_signed_by_its_origin_is_accepted(self) -> None:
        link = self.link_in(S1)
        self.announce_via(link, S2)
        self.receive(link, self.advertise(S2))
        self.assertEqual(self.presence.lookup(USER).server_id, S2)

    def test_frame_claiming_another_origin_is_dropped_and_counted(self) -> None:
        link = self.link_in(S1)
        self.announce_via(link, S2)
        other = self.link_in(S3)
        sent_before = len(link.sent) + len(other.sent)
        self.receive(link, self.advertise(S2, signer=S1))  # S1 speaking as S2
        self.assertIsNone(self.presence.lookup(USER))
        self.assertEqual(self.mesh.counters["verify_failed"], 1)
        self.assertTrue(any("signature does not verify" in line for line in self.lines()))
        self.assertEqual(len(link.sent) + len(other.sent), sent_before)  # not answered, not forwarded

    def test_unsigned_and_unknown_origin(self) -> None:
        link = self.link_in(S1)
        self.announce_via(link, S2)
        self.receive(link, self.frame("USER_ADVERTISE", S2, {"user_id": USER}, sig=""))
        self.assertEqual(self.mesh.counters["verify_failed"], 1)
        self.receive(link, self.advertise(S3))  # S3 was never announced: nobody to check it with
        self.assertEqual(self.mesh.counters["dropped.unknown_origin"], 1)
        self.receive(link, self.advertise(HERE, signer=S1))
        self.assertEqual(self.mesh.counters["dropped.own_frame"], 1)
        self.assertIsNone(self.presence.lookup(USER))

    def test_presence_is_spoken_only_by_the_hosting_server(self) -> None:
        # S1 joined honestly and signs with its own key, but speaks for S2's users.
        link = self.link_in(S1)
        self.announce_via(link, S2)
        self.receive(link, self.advertise(S2))
        other = self.link_in(S3)
        sent_before = len(other.sent)
        pubkey = crypto.encode_public_key(test_key(6))
        invented = wire.new_uuid4()
        for payload, kind in (
            ({"user_id": USER, "server_id": S2}, "USER_REMOVE"),
            ({"user_id": invented, "server_id": S2, "pubkey": pubkey}, "USER_ADVERTISE"),
        ):
            self.receive(link, self.frame(kind, S1, payload))
        self.assertEqual(self.presence.lookup(USER).server_id, S2)  # not removed
        self.assertIsNone(self.presence.lookup(invented))  # not invented
        self.assertEqual(self.mesh.counters["dropped.not_hosting_server"], 2)
        self.assertEqual(len(other.sent), sent_before)  # not forwarded
        warnings = [line for line in self.lines() if "only a user's own server may" in line]
        self.assertEqual(len(warnings), 1)  # once a minute per origin, with the count
        self.assertIn(f"from server {S1}", warnings[0])
        self.clock.advance(61)
        self.receive(link, self.frame("USER_REMOVE", S1, {"user_id": USER, "server_id": S2, "n": 1}))
        warnings = [line for line in self.lines() if "only a user's own server may" in line]
        self.assertIn("(2 such frames", warnings[-1])

    def test_takeover_with_another_key_is_refused(self) -> None:
        link = self.link_in(S1)
        self.announce_via(link, S2)
        self.receive(link, self.advertise(S2))
        taken = {"user_id": USER, "server_id": S1, "pubkey": crypto.encode_public_key(test_key(5))}
        self.receive(link, self.frame("USER_ADVERTISE", S1, taken))
        entry = self.presence.lookup(USER)
        self.assertEqual((entry.server_id, entry.pubkey), (S2, crypto.encode_public_key(test_key(6))))
        self.assertEqual(self.mesh.counters["user_key_refused"], 1)
        self.assertTrue(any(f"REFUSED changed key for user {USER}" in line for line in self.lines()))
        # The same key from the user's new server moves it (a proven hello there).
        moved = {"user_id": USER, "server_id": S1, "pubkey": crypto.encode_public_key(test_key(6))}
        self.receive(link, self.frame("USER_ADVERTISE", S1, moved))
        self.assertEqual(self.presence.lookup(USER).server_id, S1)

    def test_replayed_server_frames_are_dropped(self) -> None:
        handled: list[Any] = []
        self.mesh.on_frame("SERVER_DELIVER", lambda envelope, link: handled.append(envelope))
        link = self.link_in(S1)
        data = self.frame("SERVER_DELIVER", S1, {"user_id": USER, "x": 1}, to=HERE)
        self.receive(link, data)
        self.receive(link, data)
        self.assertEqual(len(handled), 1)
        self.assertEqual(self.mesh.counters["dropped.duplicate"], 1)

    def test_replayed_hello_does_not_displace_a_live_link(self) -> None:
        hello = self.frame("SERVER_HELLO_LINK", S1, self.address(S1), to=HERE)
        first = FakeLink("in-first")
        self.hub.link_opened(first)
        self.receive(first, hello)
        replay = FakeLink("in-replay")
        self.hub.link_opened(replay)
        self.receive(replay, hello)
        self.assertIs(self.mesh.link_to(S1), first)


class FakeTransport:
    """What the pacing needs of a transport: pause and resume reading."""

    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def pauseProducing(self) -> None:
        self.paused += 1

    def resumeProducing(self) -> None:
        self.resumed += 1


class PeerPacingTests(MeshTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.node.stop()
        self.node = Node(
            self, HERE, self.clock, limits=replace(DEFAULT_LIMITS, peer_rate=10.0, peer_burst=5.0)
        )
        self.mesh, self.hub, self.presence = self.node.mesh, self.node.hub, self.node.presence

    def test_fast_peer_is_read_slower_not_dropped(self) -> None:
        handled: list[Any] = []
        self.mesh.on_frame("SERVER_DELIVER", lambda envelope, link: handled.append(envelope))
        link = self.link_in(S1)  # the hello is not charged: the link's bucket holds 5 tokens
        link.transport = FakeTransport()
        for n in range(8):
            self.receive(link, self.frame("SERVER_DELIVER", S1, {"user_id": USER, "n": n}, to=HERE))
        self.assertEqual(len(handled), 8)  # nothing lost
        self.assertEqual(link.transport.paused, 1)
        self.assertEqual(self.mesh.counters["throttled"], 3)
        self.assertEqual(sum("reading it slower" in line for line in self.lines()), 1)
        self.clock.advance(0.1)
        self.assertEqual(link.transport.resumed, 1)
        self.receive(link, self.frame("SERVER_DELIVER", S1, {"user_id": USER, "n": 9}, to=HERE))
        self.assertEqual(link.transport.paused, 1)  # the bucket had refilled a token

    def test_pause_cancelled_when_the_link_closes(self) -> None:
        link = self.link_in(S1)
        link.transport = FakeTransport()
        for n in range(6):
            self.receive(link, self.frame("HEARTBEAT", S1, {"n": n}, to=HERE))
        self.assertEqual(link.transport.paused, 1)
        self.hub.link_closed(link, "gone")
        self.assertEqual(self.mesh._paused, {})
        self.assertEqual(self.mesh._peer_rate.retry_after(link.link_id), 0.0)

    def test_link_without_transport_is_only_counted(self) -> None:
        link = self.link_in(S1)
        for n in range(6):
            self.receive(link, self.frame("HEARTBEAT", S1, {"n": n}, to=HERE))
        self.assertEqual(self.mesh.counters["throttled"], 1)


# -- bounded send queues ---------------------------------------------------------------------------------


class Buffering:
    """A transport whose kernel buffer is full (``dataBuffer`` as Twisted's FileDescriptor keeps it)."""

    def __init__(self, size: int, inner: Any = None) -> None:
        self.dataBuffer = b"x" * size
        self.offset = 0
        self._tempDataLen = 0
        self.transport = inner


class SendOverflowTests(SynchronousTestCase):
    def test_bounds(self) -> None:
        protocol = type("P", (), {})()
        protocol.transport = Buffering(100)
        self.assertIsNone(send_overflow(protocol, 0, 10, 100))
        self.assertEqual(send_overflow(protocol, 10, 10, 100), "10 frames waiting to be sent")
        protocol.transport = Buffering(60, Buffering(41))  # a TLS wrapper over TCP
        self.assertEqual(send_overflow(protocol, 0, 10, 100), "101 bytes waiting to be read")

    def protocol(self, **limits) -> tuple[Any, StringTransport, Hub]:
        hub = Hub(NeverSigner(HERE), clock=Clock())
        protocol, transport = open_server_link(self, hub, limits=replace(DEFAULT_LIMITS, **limits))
        self.assertEqual(list(hub.links), [protocol.link_id])
        return protocol, transport, hub

    def test_slow_reader_is_closed(self) -> None:
        protocol, transport, hub = self.protocol(max_send_queue_bytes=1000)
        protocol.send(b'{"type":"A"}')
        self.assertIn(b'{"type":"A"}', transport.value())
        transport.dataBuffer = b"x" * 1001  # the peer stopped reading
        transport.clear()
        protocol.send(b'{"type":"B"}')
        protocol.send(b'{"type":"C"}')
        written = transport.value()
        self.assertNotIn(b'"B"', written)
        self.assertTrue(written.startswith(b"\x88"))  # a close frame...
        self.assertEqual(int.from_bytes(written[2:4], "big"), 1008)  # ... with code 1008
        self.assertIn(b"too slow: not reading", written)
        self.assertEqual(hub.counters["closed.send_overflow"], 1)

    def test_backlog_measured_once_the_transport_pauses_the_link(self) -> None:
        protocol, transport, hub = self.protocol()  # the default bound, far above 64 KiB
        self.assertTrue(protocol._flow_controlled)
        transport.dataBuffer = b"x" * (DEFAULT_LIMITS.max_send_queue_bytes + 1)
        protocol.send(b'{"type":"A"}')  # not paused: the transport holds < 64 KiB, nothing measured
        self.assertEqual(hub.counters["closed.send_overflow"], 0)
        protocol._sender.pauseProducing()  # what the transport does once past its buffer size
        protocol.send(b'{"type":"B"}')
        self.assertEqual(hub.counters["closed.send_overflow"], 1)

    def test_frames_waiting_for_signatures_are_bounded(self) -> None:
        protocol, _, hub = self.protocol(max_send_queue=3)
        waiting = [Deferred() for _ in range(4)]
        for frame in waiting:
            protocol.send(frame)
        self.assertEqual(hub.counters["closed.send_overflow"], 1)
        waiting[3].errback(RuntimeError("never signed"))  # the dropped frame's failure is handled


# -- the limits and the code agree --------------------------------------------------------------------


class LimitsAgreeWithCodeTests(SynchronousTestCase):
    def test_fixed_bounds(self) -> None:
        limits = DEFAULT_LIMITS
        self.assertEqual(limits.max_frame_bytes, wire.MAX_FRAME_BYTES)
        self.assertEqual(limits.max_json_depth, wire.MAX_DEPTH)
        self.assertEqual(limits.max_ciphertext_chars, content.MAX_CIPHERTEXT_CHARS)
        self.assertEqual(limits.max_pubkey_chars, users_module.MAX_KEY_TEXT)
        self.assertEqual(limits.max_client_name_chars, users_module.MAX_CLIENT_NAME)
        self.assertEqual(limits.max_meta_bytes, mesh_module.MAX_META_BYTES)
        self.assertEqual(limits.max_peers, mesh_module.MAX_KNOWN_SERVERS)
        self.assertEqual(limits.max_unknown_type_replies, mesh_module.MAX_ANSWERED_TYPES)
        self.assertEqual(limits.max_remote_users, presence_module.MAX_REMOTE_USERS)
        self.assertEqual(limits.login_attempt_ttl, users_module.LOGIN_TTL)
        self.assertEqual(limits.hello_nonce_ttl, users_module.NONCE_TTL)
        self.assertEqual(limits.max_auth_attempts, users_module.MAX_AUTH_ATTEMPTS_PER_LINK)
        self.assertEqual(limits.max_backlog, users_module.MAX_BACKLOG)
        self.assertEqual(limits.max_cached_adverts, users_module.MAX_CACHED_ADVERTS)
        self.assertEqual(limits.login_free_failures, users_module.LoginLimiter.FREE_FAILURES)
        self.assertEqual(limits.login_lockout_max, users_module.LoginLimiter.MAX_LOCK)
        self.assertEqual(limits.forged_limit, 10)
        self.assertEqual(limits.forged_window, 60.0)

    def test_field_bounds_in_content_checks(self) -> None:
        too_long = {"file_id": "f" * (DEFAULT_LIMITS.max_file_id_chars + 1), "index": 0, "ciphertext": "c"}
        self.assertRaises(
            wire.FrameError, content.extract_fields, "FILE_CHUNK", {**too_long, "content_sig": "s"}
        )
        name = "n" * (DEFAULT_LIMITS.max_file_name_chars + 1)
        start = {
            "file_id": "f",
            "name": name,
            "size": 1,
            "sha256": "0" * 64,
            "mode": "dm",
            "content_sig": "s",
        }
        self.assertRaises(wire.FrameError, content.extract_fields, "FILE_START", start)
        sig = {"ciphertext": "c", "content_sig": "s" * (DEFAULT_LIMITS.max_sig_chars + 1)}
        self.assertRaises(wire.FrameError, content.extract_fields, "MSG_DIRECT", sig)

    def test_every_field_positive(self) -> None:
        for field in dataclasses.fields(Limits):
            self.assertGreater(getattr(DEFAULT_LIMITS, field.name), 0, field.name)


# -- command line and peer TLS policy ---------------------------------------------------------------------


def tls_files(case: SynchronousTestCase) -> dict[str, str]:
    pki = shared_pki()
    base = Path(case.mktemp())
    return {
        "cert": write_pem(base / "cert.pem", pki.server.cert_pem),
        "key": write_pem(base / "key.pem", pki.server.key_pem),
        "ca": write_pem(base / "ca.pem", pki.root.cert_pem),
        "other_key": write_pem(base / "other.pem", pki.rogue_server.key_pem),
    }


class SecurityOptionsTests(SynchronousTestCase):
    def parse(self, *args: str) -> Options:
        config = Options()
        config.parseOptions(["--data-dir", self.mktemp(), *args])
        return config

    def refused(self, *args: str) -> str:
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(*args)
        return str(caught.exception)

    def test_defaults(self) -> None:
        config = self.parse()
        self.assertEqual(config["limits"], DEFAULT_LIMITS)
        self.assertIsNone(config["tls_context"])
        self.assertFalse(config["peer_tls"].default)

    def test_ts_window_and_identify_timeout(self) -> None:
        limits = self.parse("--ts-window", "900", "--identify-timeout", "5")["limits"]
        self.assertEqual((limits.ts_window, limits.seen_ids_ttl), (900.0, 1800.0))
        self.assertEqual(limits.identify_timeout, 5.0)
        self.assertEqual(self.parse("--ts-window", "60")["limits"].seen_ids_ttl, 600.0)
        self.assertIn("--ts-window must be between", self.refused("--ts-window", "0"))
        self.assertIn("--ts-window must be a number", self.refused("--ts-window", "soon"))
        self.assertIn("--identify-timeout", self.refused("--identify-timeout", "-1"))

    def test_wss_bind_needs_certificate_and_key(self) -> None:
        files = tls_files(self)
        self.assertIn("needs --tls-cert and --tls-key", self.refused("--bind", "wss://127.0.0.1:0"))
        self.assertIn(
            "does not belong",
            self.refused(
                "--bind", "wss://127.0.0.1:0", "--tls-cert", files["cert"], "--tls-key", files["other_key"]
            ),
        )
        self.assertIn(
            "need --bind wss://", self.refused("--tls-cert", files["cert"], "--tls-key", files["key"])
        )
        config = self.parse(
            "--bind", "wss://127.0.0.1:0", "--tls-cert", files["cert"], "--tls-key", files["key"]
        )
        self.assertIsNotNone(config["tls_context"])
        self.assertTrue(config["peer_tls"].default)
        self.assertEqual(config["bind_address"].url(8443), "wss://127.0.0.1:8443")

    def test_wss_listener_is_a_tls_endpoint(self) -> None:
        files = tls_files(self)
        config = Options()
        config.parseOptions(
            [
                "--bind",
                "wss://127.0.0.1:0",
                "--data-dir",
                prepare_data_dir(self, 0),
                "--tls-cert",
                files["cert"],
                "--tls-key",
                files["key"],
            ]
        )
        service = makeService(config)
        self.assertIsInstance(service.getServiceNamed("listener").endpoint, SSL4ServerEndpoint)
        self.assertEqual(service.getServiceNamed("hub").limits, config["limits"])

    def test_peer_pins(self) -> None:
        pin = tls.spki_pin(shared_pki().server.cert_pem)
        config = self.parse(
            "--peer-pin", f"Example.org={pin}", "--peer-pin", f"10.0.0.1:8765={pin}", "--pin-only"
        )
        peer_tls = config["peer_tls"]
        self.assertEqual(peer_tls.pins_for("example.org", 1), (pin,))
        self.assertEqual(peer_tls.pins_for("10.0.0.1", 8765), (pin,))
        self.assertEqual(peer_tls.pins_for("10.0.0.1", 8766), ())
        self.assertTrue(peer_tls.pin_only)
        self.assertIn("HOST=PIN", self.refused("--peer-pin", "example.org"))
        self.assertIn("neither sha256/", self.refused("--peer-pin", "example.org=nope"))
        self.assertIn("--pin-only needs", self.refused("--pin-only"))
        self.assertIn("cannot read TLS CA", self.refused("--tls-ca", "/nonexistent/ca.pem"))

    def test_peer_schemes(self) -> None:
        peer_tls = self.parse("--peer", "wss://a.example:1", "--peer", "ws://b.example:2")["peer_tls"]
        self.assertTrue(peer_tls.uses_tls("a.example", 1))
        self.assertFalse(peer_tls.uses_tls("b.example", 2))
        self.assertFalse(peer_tls.uses_tls("c.example", 3))  # learnt from gossip: like our own listener


class PeerTLSTests(SynchronousTestCase):
    def test_scheme_rules(self) -> None:
        pin = tls.spki_pin(shared_pki().server.cert_pem)
        policy = tls.PeerTLS(
            default=True, pins={"pinned.example": [pin]}, plain_addresses=[("plain.example", 1)]
        )
        self.assertEqual(policy.scheme("gossip.example", 1), "wss")
        self.assertEqual(policy.scheme("plain.example", 1), "ws")
        self.assertEqual(policy.scheme("plain.example", 2), "wss")
        plain = tls.PeerTLS(pins={"pinned.example": [pin]})
        self.assertEqual(plain.scheme("pinned.example", 9), "wss")  # a pin implies TLS
        self.assertEqual(plain.scheme("other.example", 9), "ws")

    def test_contexts_are_cached_and_checked(self) -> None:
        files = tls_files(self)
        policy = tls.PeerTLS(default=True, ca_file=files["ca"])
        policy.check()
        first = policy.context("127.0.0.1", 1)
        self.assertIs(policy.context("127.0.0.1", 1), first)
        self.assertIsNot(policy.context("localhost", 1), first)
        self.assertRaises(tls.TLSConfigError, tls.PeerTLS(pins={"x": ["bad"]}).check)
        self.assertRaises(tls.TLSConfigError, tls.PeerTLS(pins={"x": []}).check)

    def test_dialers_use_the_policy(self) -> None:
        files = tls_files(self)
        mesh = RecordingPeerLinkEvents()
        outgoing = OutgoingLinks(
            mesh,
            Clock(),
            client_factory=PeerClientFactory,
            tls_policy=tls.PeerTLS(default=True, ca_file=files["ca"]),
        )
        dialer = outgoing.dialer("127.0.0.1", 8765)
        self.assertEqual(dialer.url, "wss://127.0.0.1:8765")
        endpoint = outgoing.endpoint_for("127.0.0.1", 8765)
        self.assertEqual(type(endpoint).__name__, "_WrapperEndpoint")  # TLS around a HostnameEndpoint
        bad_name = outgoing.endpoint_for("-bad-.example", 1)  # IDNA refuses it: every dial fails
        failure = self.failureResultOf(bad_name.connect(None))
        self.assertIn("not a valid host name", failure.getErrorMessage())
        plain = OutgoingLinks(mesh, Clock(), client_factory=PeerClientFactory)
        self.assertEqual(plain.dialer("127.0.0.1", 1).url, "ws://127.0.0.1:1")
