"""The fakes the client's file tests share: a real ClientSession whose link records frames and
whose "server" is test_key(0) signing frames by hand."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from socp_tw import crypto, wire
from socp_tw.client.pins import PinStore
from socp_tw.client.session import ClientSession
from socp_tw.test.file_frames import FakeTCP
from socp_tw.test.keys import test_key, vector_key
from socp_tw.testing import SynchronousWorkers


class RecordingUI:
    def __init__(self, interactive: bool = False) -> None:
        self.lines: list[str] = []
        self.statuses: list[str] = []
        self.interactive = interactive

    def show(self, text: str) -> None:
        self.lines.extend(text.split("\n"))

    def status(self, text: str) -> None:
        self.statuses.append(text)

    def ask_password(self, prompt: str) -> Deferred:
        raise AssertionError("no password here")

    def find(self, pattern: str) -> list[str]:
        return [line for line in self.lines if re.search(pattern, line)]


class RecordingLink:
    """The session's WebSocket: records frames; ``on_send`` may react (e.g. fill the buffer)."""

    def __init__(self) -> None:
        self.sent: list[dict] = []
        self.transport = FakeTCP()
        self.on_send: Any = None

    def send(self, data: bytes) -> None:
        self.sent.append(json.loads(data))
        if self.on_send is not None:
            self.on_send(self.sent[-1])

    def close(self, code: int = 1000, reason: str | None = None) -> None:
        pass

    def of_type(self, ftype: str) -> list[dict]:
        return [f for f in self.sent if f["type"] == ftype]


class ClientFilesBase(SynchronousTestCase):
    interactive = False

    def setUp(self) -> None:
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.ui = RecordingUI(self.interactive)
        self.download = Path(self.mktemp())
        self.download.mkdir(parents=True)
        self.me, self.peer, self.server_id = wire.new_uuid4(), wire.new_uuid4(), wire.new_uuid4()
        self.my_key, self.peer_key, self.server_key = vector_key("bob"), vector_key("alice"), test_key(0)
        self.session = ClientSession(
            self.ui,
            PinStore(self.mktemp()),
            "ws://127.0.0.1:9",
            workers=SynchronousWorkers(),
            clock=self.clock,
            download_dir=str(self.download),
            file_stall_timeout=60.0,
        )
        self.link = RecordingLink()
        self.session.connection_made(self.link)
        s = self.session
        s.user_id, s._key, s._pub = self.me, self.my_key, crypto.encode_public_key(self.my_key)
        s.server_id, s._server_key = self.server_id, self.server_key.public_key()
        s.logged_in = s._want_online = True
        s._seen_keys[self.peer] = crypto.encode_public_key(self.peer_key)
        self.addCleanup(self.session.shutdown)

    def make_file(self, data: bytes, name: str = "data.bin") -> Path:
        folder = Path(self.mktemp())
        folder.mkdir(parents=True)
        (folder / name).write_bytes(data)
        return folder / name

    # frames "from the server"
    def push(
        self, ftype: str, payload: dict, ts: int = 1_700_000_000_000, key=None, to: str | None = None
    ) -> None:
        sig = crypto.sign_payload(key or self.server_key, payload)
        self.session.frame_received(wire.Envelope(ftype, self.server_id, to or self.me, ts, payload, sig))

    def relayed(self, payload: dict) -> dict:
        return dict(payload, sender=self.peer, sender_pub=crypto.encode_public_key(self.peer_key))


class ManualWorkers:
    """Workers whose jobs run only when the test says so."""

    size = 1

    def __init__(self) -> None:
        self.jobs: list[tuple[Deferred, Any, tuple]] = []

    def run(self, f, *args, **kwargs) -> Deferred:
        d: Deferred = Deferred()
        self.jobs.append((d, f, args))
        return d

    def run_all(self) -> None:
        while self.jobs:
            d, f, args = self.jobs.pop(0)
            try:
                d.callback(f(*args))
            except Exception as e:
                d.errback(e)
