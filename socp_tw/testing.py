"""In-memory fakes of socp-tw's interfaces, and helpers for loopback tests.

Shipped with the package (not under ``test/``) so other projects can test against
our contracts.  Every fake here is checked by the same contract tests as the real
implementation.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from twisted.internet.defer import Deferred, DeferredQueue, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from socp_tw import crypto, wire
from socp_tw.interfaces import (
    ILink,
    ILinkHandler,
    IPeerLinks,
    IPresence,
    IPresenceObserver,
    IRouter,
    ISigner,
    IStore,
    IUserFrames,
    IWorkers,
)
from socp_tw.protocols.links import OrderedSender


@implementer(IWorkers)
class SynchronousWorkers:
    """Run work at once on the calling thread: deterministic tests, no threads."""

    size = 1

    def __init__(self) -> None:
        self.calls = 0

    def run(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        self.calls += 1
        try:
            return succeed(f(*args, **kwargs))
        except Exception:
            return fail()


@implementer(ISigner)
class NeverSigner:
    """Enough of ISigner for a hub that never signs: ``frame`` never fires, ``frame_now`` is empty."""

    public_key_text = ""

    def __init__(self, server_id: str = "00000000-0000-4000-8000-000000000000") -> None:
        self.server_id = server_id

    def frame(self, type: str, to: str, payload: dict, ts: int | None = None) -> Deferred:
        return Deferred()

    def frame_now(self, type: str, to: str, payload: dict, ts: int | None = None) -> bytes:
        return b""

    def sign_content_now(self, preimage: bytes) -> str:
        return ""


@implementer(ILink)
class FakeLink:
    """A link that records what is sent on it, in call order like a real link.

    Sending goes through the real :class:`OrderedSender`: a frame still being signed
    holds back the ones sent after it, and a frame whose signing failed is skipped.
    """

    def __init__(self, link_id: str = "fake-1", role: str = "pending", identity: str | None = None) -> None:
        self.link_id = link_id
        self.peer = "127.0.0.1:1"
        self.role = role
        self.identity = identity
        self.outgoing = False
        self.sent: list[bytes] = []
        self.closed: tuple[int, str | None] | None = None
        self.sender = OrderedSender(self.sent.append, describe=link_id)

    def send(self, frame: bytes | Deferred) -> None:
        self.sender.send(frame)

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason)

    def frames(self) -> list[dict]:
        """Everything sent so far, parsed as JSON."""
        return [json.loads(f) for f in self.sent]


@implementer(ILinkHandler)
class RecordingHandler:
    """A link handler that records what it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[ILink, wire.Envelope]] = []
        self.closed: list[ILink] = []

    def frame_received(self, link: ILink, envelope: wire.Envelope) -> None:
        self.received.append((link, envelope))

    def link_closed(self, link: ILink, reason: str | None) -> None:
        self.closed.append(link)


@implementer(IPeerLinks)
class FakePeerLinks:
    """An in-memory mesh: servers are "linked" by naming them; sent frames are recorded."""

    def __init__(self, linked: list[str] | None = None) -> None:
        self.linked: set[str] = set(linked or [])
        self.keys: dict[str, Any] = {}
        self.sent: list[tuple[str, bytes]] = []
        self.broadcasts: list[tuple[bytes, str | None]] = []
        self.handlers: dict[str, Callable[..., None]] = {}
        self.preparers: dict[str, Callable[..., Any]] = {}
        self.counters: Counter[str] = Counter()
        self.observers: list[Callable[[], None]] = []
        #: Servers that confirm deliveries (``acks_deliveries``); time each was last heard from.
        self.acking: set[str] = set()
        self.last_heard: dict[str, float] = {}
        self.unresponsive_calls: list[tuple[str, float]] = []

    def connected_servers(self) -> list[str]:
        return sorted(self.linked)

    def acks_deliveries(self, server_id: str) -> bool:
        return server_id in self.acking

    def heard_since(self, server_id: str, when: float) -> bool:
        return server_id in self.linked and self.last_heard.get(server_id, float("-inf")) >= when

    def unresponsive(self, server_id: str, since: float) -> None:
        self.unresponsive_calls.append((server_id, since))

    def add_change_observer(self, callback: Callable[[], None]) -> None:
        self.observers.append(callback)

    def link(self, server_id: str) -> None:
        """Simulate a link to ``server_id`` coming up (observers are told, like the real mesh)."""
        if server_id not in self.linked:
            self.linked.add(server_id)
            for callback in list(self.observers):
                callback()

    def unlink(self, server_id: str) -> None:
        """Simulate the link to ``server_id`` going down."""
        if server_id in self.linked:
            self.linked.discard(server_id)
            for callback in list(self.observers):
                callback()

    def deliver(self, envelope: wire.Envelope, link: ILink | None = None) -> None:
        """Hand a verified server frame to the handler registered for its type (like the mesh)."""
        if link is None:
            link = FakeLink("fake-server", role="server", identity=envelope.from_)
        self.handlers[envelope.type](envelope, link)

    def server_key(self, server_id: str) -> Any:
        return self.keys.get(server_id)

    def send_to_server(self, server_id: str, frame: bytes | Deferred) -> bool:
        if server_id not in self.linked:
            return False
        if isinstance(frame, Deferred):
            frame.addCallback(lambda data: self.sent.append((server_id, data)))
        else:
            self.sent.append((server_id, frame))
        return True

    def broadcast(self, frame: bytes | Deferred, exclude: str | None = None) -> int:
        if isinstance(frame, Deferred):
            frame.addCallback(lambda data: self.broadcasts.append((data, exclude)))
        else:
            self.broadcasts.append((frame, exclude))
        return len(self.linked)

    def on_frame(
        self, type: str, handler: Callable[..., None], prepare: Callable[..., Any] | None = None
    ) -> None:
        self.handlers[type] = handler
        if prepare is not None:
            self.preparers[type] = prepare

    def sent_frames(self) -> list[tuple[str, dict]]:
        """(server_id, decoded frame) of everything sent to a server."""
        return [(server_id, json.loads(data)) for server_id, data in self.sent]


@implementer(IPresence)
class FakePresence:
    """An in-memory :class:`IPresence` with the same rules as the real table, and a call log.

    ``calls`` records (method, user_id, ...) in order, so tests can assert what the
    code under test told the presence table.
    """

    def __init__(self, server_id: str) -> None:
        self.server_id = server_id
        self.users: dict[str, Any] = {}
        self.observers: list[Any] = []
        self.calls: list[tuple] = []

    def add_observer(self, observer: Any) -> None:
        self.observers.append(IPresenceObserver(observer))

    def _notify(self, method: str, entry: Any) -> None:
        for observer in list(self.observers):
            getattr(observer, method)(entry)

    def update_local_meta(self, user_id: str, meta: dict[str, Any]) -> Any:
        self.calls.append(("update_local_meta", user_id))
        entry = self.users.get(user_id)
        if entry is None or not entry.local:
            return None
        entry.meta = dict(meta)
        self._notify("user_online", entry)
        return entry

    def user_online_local(self, user_id: str, pubkey: str, meta: dict[str, Any], link: ILink) -> Any:
        from socp_tw.services.presence import NameInUse, UserPresence

        self.calls.append(("user_online_local", user_id))
        current = self.users.get(user_id)
        if current is not None and current.local:
            raise NameInUse(user_id)
        entry = self.users[user_id] = UserPresence(user_id, self.server_id, pubkey, dict(meta), link)
        self._notify("user_online", entry)
        return entry

    def user_offline_local(self, user_id: str, link: ILink | None = None) -> bool:
        self.calls.append(("user_offline_local", user_id))
        entry = self.users.get(user_id)
        if entry is None or not entry.local or (link is not None and entry.link is not link):
            return False
        del self.users[user_id]
        self._notify("user_offline", entry)
        return True

    def user_online_remote(self, user_id: str, server_id: str, pubkey: str, meta: dict[str, Any]) -> bool:
        from socp_tw.services.presence import UserPresence

        self.calls.append(("user_online_remote", user_id, server_id))
        current = self.users.get(user_id)
        if current is not None and (
            current.local or (current.server_id, current.pubkey, current.meta) == (server_id, pubkey, meta)
        ):
            return False
        entry = self.users[user_id] = UserPresence(user_id, server_id, pubkey, dict(meta))
        self._notify("user_online", entry)
        return True

    def user_offline_remote(self, user_id: str, server_id: str) -> bool:
        self.calls.append(("user_offline_remote", user_id, server_id))
        entry = self.users.get(user_id)
        if entry is None or entry.local or entry.server_id != server_id:
            return False
        del self.users[user_id]
        self._notify("user_offline", entry)
        return True

    def server_lost(self, server_id: str) -> list[str]:
        self.calls.append(("server_lost", server_id))
        gone = self.users_on(server_id)
        for user_id in gone:
            self.user_offline_remote(user_id, server_id)
        return gone

    def lookup(self, user_id: str) -> Any:
        return self.users.get(user_id)

    def local_link(self, user_id: str) -> ILink | None:
        entry = self.users.get(user_id)
        return entry.link if entry is not None else None

    def online_users(self) -> list[str]:
        return sorted(self.users)

    def local_entries(self) -> list[Any]:
        return [e for e in self.users.values() if e.local]

    def users_on(self, server_id: str) -> list[str]:
        return sorted(u for u, e in self.users.items() if e.server_id == server_id and not e.local)


@implementer(IRouter)
class FakeRouter:
    """An :class:`IRouter` that records what it is asked to route.

    ``locations`` maps recipient -> "local" or a hosting server id; an unknown
    recipient raises ``UserNotFound`` like the real router.
    """

    def __init__(self, locations: dict[str, str] | None = None) -> None:
        self.locations: dict[str, str] = dict(locations or {})
        self.routed: list[tuple[str, str, dict[str, Any], int, str, str]] = []
        self.from_servers: list[tuple[wire.Envelope, ILink]] = []

    def route(
        self,
        kind: str,
        recipient: str,
        fields: dict[str, Any],
        ts: int,
        sender: str,
        sender_pub: str,
        verified: Callable[[], bool] | None = None,
    ) -> str:
        """Record the frame; with ``verified``, only if it passes (else ``Unverified``, as the real one)."""
        from socp_tw.interfaces import Unverified, UserNotFound

        if verified is not None and not verified():
            raise Unverified("the content signature does not verify")
        where = self.locations.get(recipient)
        if where is None:
            raise UserNotFound(recipient)
        self.routed.append((kind, recipient, dict(fields), ts, sender, sender_pub))
        return where

    def deliver_from_server(self, envelope: wire.Envelope, origin_link: ILink) -> None:
        self.from_servers.append((envelope, origin_link))


@implementer(IUserFrames)
class FakeUserFrames:
    """An :class:`IUserFrames` without links to authenticate: handlers are called by :meth:`deliver`.

    ``authenticated_key`` answers from ``presence`` (the key of a local user), as the real
    user side does; ERRORs are recorded as ``(link, payload)`` with the payload the real one
    would sign.
    """

    def __init__(self, presence: IPresence) -> None:
        self.presence = IPresence(presence)
        self.handlers: dict[str, Callable[[ILink, str, wire.Envelope], Deferred | None]] = {}
        self.errors: list[tuple[ILink, dict[str, Any]]] = []

    def register_user_frame(
        self, frame_type: str, handler: Callable[[ILink, str, wire.Envelope], Deferred | None]
    ) -> None:
        self.handlers[frame_type] = handler

    def send_error(
        self, link: ILink, code: str, detail: str, ref: str | None = None, to: str | None = None, **extra: Any
    ) -> None:
        payload: dict[str, Any] = wire.error_payload(code, detail)
        if ref is not None:
            payload["msg_ref"] = ref
        payload.update(extra)
        self.errors.append((link, payload))

    def authenticated_key(self, user_id: str) -> str | None:
        entry = self.presence.lookup(user_id)
        return entry.pubkey if entry is not None and entry.local else None

    def deliver(self, link: ILink, envelope: wire.Envelope) -> Deferred | None:
        """Hand a frame of ``link``'s user to its handler; a failure is answered with ERROR
        (a ``FrameError`` with its code and detail, anything else with ``INTERNAL``)."""
        handler = self.handlers[envelope.type]

        def failed(failure: Failure) -> None:
            error = failure.value
            if isinstance(error, wire.FrameError):
                self.send_error(link, error.code, error.detail, ref=envelope.type)
            else:
                self.send_error(
                    link, "INTERNAL", f"the server failed handling {envelope.type}", ref=envelope.type
                )

        try:
            d = handler(link, link.identity, envelope)
        except Exception:
            failed(Failure())
            return None
        if d is not None:
            d.addErrback(failed)
        return d


@implementer(IStore)
class MemoryStore:
    """An in-memory :class:`IStore`: the same answers as ``SQLiteStore``, already fired."""

    def __init__(self, now_ms: Callable[[], int] = wire.now_ms) -> None:
        self._now_ms = now_ms
        self.users: dict[str, dict[str, Any]] = {}  # keyed by user_id.lower()
        #: group_id -> {creator_id, meta, origins, states: {member: state}, members: {member: wrapped}}
        self.groups: dict[str, dict[str, Any]] = {
            "public": {"creator_id": "system", "meta": {}, "origins": {}, "states": {}, "members": {}}
        }
        self.calls = 0

    def get_user(self, user_id: str) -> Deferred:
        self.calls += 1
        row = self.users.get(user_id.lower())
        return succeed(None if row is None else {**row, "meta": json.loads(json.dumps(row["meta"]))})

    def update_user_meta(self, user_id: str, changes: dict[str, Any]) -> Deferred:
        self.calls += 1
        row = self.users.get(user_id.lower())
        if row is None:
            return succeed(False)
        merged = {**row["meta"], **changes}
        row["meta"] = {k: v for k, v in merged.items() if v is not None}
        return succeed(True)

    def add_user(
        self, user_id: str, pubkey: str, privkey_store: str, pake_password: str, meta: dict[str, Any]
    ) -> Deferred:
        self.calls += 1
        if not all(isinstance(v, str) and v for v in (user_id, pubkey, privkey_store, pake_password)):
            return fail(ValueError("add_user needs non-empty strings for id, key, key store and verifier"))
        if user_id.lower() in self.users:
            return succeed(False)
        self._insert(user_id, pubkey, privkey_store, pake_password, meta or {})
        return succeed(True)

    def pin_user_key(self, user_id: str, pubkey: str) -> Deferred:
        self.calls += 1
        if not all(isinstance(v, str) and v for v in (user_id, pubkey)):
            return fail(ValueError("pin_user_key needs a non-empty id and key"))
        row = self.users.get(user_id.lower())
        if row is None:
            self._insert(user_id, pubkey, None, None, {})
            return succeed(True)
        return succeed(row["pake_password"] is None and row["pubkey"] == pubkey)

    def pin_remote_user(self, user_id: str, pubkey: str, home_server: str) -> Deferred:
        self.calls += 1
        if not all(isinstance(v, str) and v for v in (user_id, pubkey, home_server)):
            return fail(ValueError("pin_remote_user needs a non-empty id, key and home server"))
        if user_id.lower() in self.users:
            return succeed(False)
        self._insert(user_id, pubkey, None, None, {}, home_server)
        return succeed(True)

    def load_group(self, group_id: str) -> Deferred:
        self.calls += 1
        group = self.groups.get(group_id)
        if group is None:
            return succeed(None)
        return succeed(
            {
                "group_id": group_id,
                "creator_id": group["creator_id"],
                "version": sum(group["origins"].values()),
                "meta": json.loads(json.dumps(group["meta"])),
                "origins": dict(group["origins"]),
                "states": [dict(group["states"][m]) for m in sorted(group["states"])],
                "members": dict(group["members"]),
            }
        )

    def save_group_state(
        self, group_id: str, states: list[dict[str, Any]], origins: dict[str, int]
    ) -> Deferred:
        from socp_tw.services.store import validate_group_state

        self.calls += 1
        group = self.groups.get(group_id)
        try:
            validate_group_state(states, origins)
            if group is None:
                raise ValueError(f"no group {group_id!r}")
        except ValueError:
            return fail()
        for origin, seq in origins.items():
            group["origins"][origin] = max(seq, group["origins"].get(origin, 0))
        for state in states:
            member = state["member_id"]
            group["states"][member] = dict(state)
            if state["present"]:
                group["members"].setdefault(member, None)
            else:
                group["members"].pop(member, None)
        return succeed(sum(group["origins"].values()))

    def set_group_key(self, group_id: str, wraps: dict[str, str], meta: dict[str, Any]) -> Deferred:
        self.calls += 1
        group = self.groups.get(group_id)
        try:
            if not isinstance(wraps, dict) or not isinstance(meta, dict):
                raise ValueError("wraps and meta must be dicts")
            if not all(isinstance(k, str) and isinstance(v, str) and k and v for k, v in wraps.items()):
                raise ValueError("wraps maps member ids to wrapped keys (non-empty strings)")
            meta = json.loads(json.dumps(meta))
            if group is None:
                raise ValueError(f"no group {group_id!r}")
        except (TypeError, ValueError) as e:
            return fail(ValueError(f"set_group_key: {e}"))
        group["meta"].update(meta)
        members = group["members"]
        for member in members:
            members[member] = wraps.get(member)
        return succeed(sum(1 for member in wraps if member in members))

    def _insert(self, user_id, pubkey, privkey_store, pake_password, meta, home_server=None) -> None:
        self.users[user_id.lower()] = {
            "home_server": home_server,
            "user_id": user_id,
            "pubkey": pubkey,
            "privkey_store": privkey_store,
            "pake_password": pake_password,
            "meta": json.loads(json.dumps(meta, sort_keys=True)),
            "version": 1,
            "created_at": self._now_ms(),
        }


def verify_server_frame(frame: dict, public_key_text: str) -> bool:
    """True if ``frame``'s transport signature verifies with ``public_key_text``."""
    return crypto.verify_payload(crypto.load_public_key(public_key_text), frame["payload"], frame["sig"])


class _CollectingProtocol(WebSocketClientProtocol):
    def onOpen(self) -> None:
        self.factory.proto = self
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.messages.put(json.loads(payload))

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.close_info = (wasClean, code, reason)
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"closed before open: {code} {reason}"))
        self.factory.closed.callback((code, reason))


class CollectingClientFactory(WebSocketClientFactory):
    """A raw WebSocket client for tests: send anything, collect every frame received."""

    protocol = _CollectingProtocol

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.opened: Deferred = Deferred()
        self.closed: Deferred = Deferred()
        self.messages: DeferredQueue = DeferredQueue()
        self.close_info: tuple | None = None
        self.proto: WebSocketClientProtocol | None = None

    def send(self, data: bytes | str | dict, binary: bool = False) -> None:
        """Send raw bytes, text, or a dict as JSON."""
        if isinstance(data, dict):
            data = json.dumps(data)
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.proto.sendMessage(data, isBinary=binary)


__all__ = [
    "CollectingClientFactory",
    "FakeLink",
    "FakePeerLinks",
    "FakePresence",
    "FakeRouter",
    "ISigner",
    "MemoryStore",
    "RecordingHandler",
    "SynchronousWorkers",
    "verify_server_frame",
]
