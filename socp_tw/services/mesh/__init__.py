"""The server mesh (PROTOCOL.md §4): joining, pinned keys, presence gossip, liveness, routing.

One :class:`Mesh` owns every server-to-server link, whichever side dialled it:
incoming links reach it through the hub (it claims the identifying frame types),
outgoing ones through its dialers (``dialing``: :class:`OutgoingLinks`, which owns the
redialling and builds the WebSocket client protocol with the factory it is given).  Every
frame on a server link takes the same path: liveness, de-duplication, one
verification step (the pinned key of its ``from``), then a per-type handler.

docs/MESH.md describes the behaviour (join flow, pinning, gossip, liveness, routing
and limits); the comments here say how the code does it.  One module per concern,
mixed into :class:`Mesh` (``service``), all sharing its state: ``pins``, ``seen``,
``handshake``, ``links``, ``linksets`` (the relay rule of floods, with ``retained``),
``liveness``, ``verify``, ``gossip``, ``relay``; ``state`` holds the per-link state and the
constants they share, ``shared`` one signature for the frames of one payload to many peers.
``dialing`` is a service of its own; it and the mesh hold each other as ``IOutgoingLinks`` /
``IDialer`` and ``IPeerLinkEvents``.
"""

from socp_tw.services.mesh.dialing import OutgoingLinks, PeerDialer, backoff_policy
from socp_tw.services.mesh.pins import PEERS_FILE, KnownServer, PinStore, PinStoreError
from socp_tw.services.mesh.seen import SeenCache
from socp_tw.services.mesh.service import Mesh
from socp_tw.services.mesh.state import (
    CLAIMED_TYPES,
    EXT_DELIVER_ACK,
    EXT_LINK_SET,
    GOSSIP_TYPES,
    MAX_ANSWERED_TYPES,
    MAX_KNOWN_SERVERS,
    MAX_META_BYTES,
    NEVER_ANSWERED,
    OUR_EXTENSIONS,
    KeyRefused,
    envelope_list,
)

__all__ = [
    "CLAIMED_TYPES",
    "EXT_DELIVER_ACK",
    "EXT_LINK_SET",
    "GOSSIP_TYPES",
    "MAX_ANSWERED_TYPES",
    "MAX_KNOWN_SERVERS",
    "MAX_META_BYTES",
    "NEVER_ANSWERED",
    "OUR_EXTENSIONS",
    "PEERS_FILE",
    "KeyRefused",
    "KnownServer",
    "Mesh",
    "OutgoingLinks",
    "PeerDialer",
    "PinStore",
    "PinStoreError",
    "SeenCache",
    "backoff_policy",
    "envelope_list",
]
