"""In-memory fakes of socp-tw's interfaces, and helpers for loopback tests.

Shipped with the package (not under ``test/``) so other projects can test against
our contracts.  Every fake here is checked by the same contract tests as the real
implementation.

The package, fakes by area (every name is re-exported here):
:mod:`~socp_tw.testing.links`, :mod:`~socp_tw.testing.mesh`,
:mod:`~socp_tw.testing.presence`, :mod:`~socp_tw.testing.routing`,
:mod:`~socp_tw.testing.users`, :mod:`~socp_tw.testing.store`,
:mod:`~socp_tw.testing.signing`, :mod:`~socp_tw.testing.workers`, and
:mod:`~socp_tw.testing.websocket` (a raw loopback WebSocket client).
"""

from socp_tw.interfaces import ISigner
from socp_tw.testing.dialing import FakeDialer, FakeOutgoingLinks, RecordingPeerLinkEvents
from socp_tw.testing.links import FakeLink, RecordingHandler
from socp_tw.testing.mesh import FakePeerLinks
from socp_tw.testing.presence import FakePresence
from socp_tw.testing.routing import FakeRouter
from socp_tw.testing.signing import NeverSigner, verify_server_frame
from socp_tw.testing.store import MemoryStore
from socp_tw.testing.users import FakeUserFrames
from socp_tw.testing.websocket import CollectingClientFactory
from socp_tw.testing.workers import SynchronousWorkers

__all__ = [
    "CollectingClientFactory",
    "FakeDialer",
    "FakeLink",
    "FakeOutgoingLinks",
    "FakePeerLinks",
    "FakePresence",
    "FakeRouter",
    "FakeUserFrames",
    "ISigner",
    "MemoryStore",
    "NeverSigner",
    "RecordingHandler",
    "RecordingPeerLinkEvents",
    "SynchronousWorkers",
    "verify_server_frame",
]
