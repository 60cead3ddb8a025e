"""Start real socp servers on 127.0.0.1 port 0 for end-to-end tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from socp_tw import wire
from socp_tw.identity import IDENTITY_FILE, KEY_FILE
from socp_tw.tap import Options, makeService
from socp_tw.test.keys import test_key
from socp_tw.testing import CollectingClientFactory


def prepare_data_dir(case: TestCase, key_index: int, server_id: str | None = None) -> str:
    """A data dir holding a pre-made identity, so tests skip the 0.5 s key generation."""
    path = Path(case.mktemp())
    path.mkdir(parents=True, mode=0o700)
    key = test_key(key_index)
    (path / KEY_FILE).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    os.chmod(path / KEY_FILE, 0o600)
    (path / IDENTITY_FILE).write_text(json.dumps({"server_id": server_id or wire.new_uuid4()}))
    return str(path)


class RunningServer:
    """A started server service and what tests need to reach it."""

    def __init__(
        self,
        case: TestCase,
        key_index: int = 0,
        extra_args: list[str] | None = None,
        data_dir: str | None = None,
    ) -> None:
        self.data_dir = data_dir or prepare_data_dir(case, key_index)
        config = Options()
        config.parseOptions(["--bind", "ws://127.0.0.1:0", "--data-dir", self.data_dir, *(extra_args or [])])
        self.service = makeService(config)
        self.service.startService()
        listener = self.service.getServiceNamed("listener")
        self.url: str = listener.url
        self.port: int = listener.port.getHost().port
        self.server_id: str = self.service.identity.server_id
        self.public_key_text: str = self.service.identity.public_key_text
        self.hub = self.service.getServiceNamed("hub")
        self._stopped = False

    def stop(self) -> Deferred:
        if self._stopped:
            return Deferred.fromCoroutine(_none())
        self._stopped = True
        return self.service.stopService()


async def _none() -> None:
    return None


@inlineCallbacks
def connect_raw(case: TestCase, url: str):
    """Open a raw WebSocket to ``url``; closed (and waited for) at test cleanup."""
    from autobahn.twisted.websocket import connectWS

    factory = CollectingClientFactory(url)
    connector = connectWS(factory)
    protocol = yield factory.opened

    @inlineCallbacks
    def cleanup():
        if not factory.closed.called:
            protocol.sendClose(1000)
            yield factory.closed
        connector.disconnect()

    case.addCleanup(cleanup)
    return factory


__all__ = ["RunningServer", "connect_raw", "prepare_data_dir", "reactor"]
