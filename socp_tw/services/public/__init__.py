"""The public channel (PROTOCOL.md §6): membership, version, group keys, and ``/all`` fan-out.

Every user who completes ``USER_HELLO`` joins the group ``"public"``; a user leaves
when it goes offline network-wide.  docs/PUBLIC-CHANNEL.md is the reference; the package
has one module per concern:

* :mod:`.state`: the membership CRDT that every server merges (pure, no Twisted).  Each
  join or leave is an *event* ``(origin server, seq)`` with a Lamport timestamp; servers
  that have seen the same events agree on the version and the members whatever the order.
* :mod:`.keys`: group-key crypto: a fresh 256-bit key per version, wrapped for each member
  (RSA-OAEP), its shares signed (content_sig) in parts; parsing and checking key parts.
* :mod:`.channel`: the :class:`PublicChannel` service, the facade: life cycle, loading and
  persisting the state (our own events are persisted before they are sent: a restart never
  reuses a sequence number), and the events of local users (a join at the hello, a leave
  when the user disconnects; a server re-joins its own connected users if a race made them
  look gone).
* :mod:`.gossip`: anti-entropy with other servers: events flood in ``PUBLIC_CHANNEL_ADD``;
  when a server link comes up both sides send their whole state.
* :mod:`.sweep`: the *leader* (lowest id among this server and its live peers) cleans up
  after servers that vanished and joins users of servers that don't speak these frames.
* :mod:`.rekey`: the leader makes a key for every version it settles on (at most one per
  ``rekey_interval``) and sends it as ``PUBLIC_CHANNEL_UPDATED``; servers keep only the
  wrapped keys.
* :mod:`.pushes`: local users are told the membership in ``PUBLIC_CHANNEL_UPDATED`` frames
  (a snapshot after the hello, then one update per version change) and get their share in
  a ``PUBLIC_CHANNEL_KEY_SHARE``.
* :mod:`.messages`: ``MSG_PUBLIC_CHANNEL`` from a local user (one per member, encrypted to
  that member) is checked (sender key, content_sig, recipient a member) and routed like a
  DM; the server never sees plaintext.

The parts reach each other only through the facade; the service's collaborators are the
interfaces of ``socp_tw.interfaces`` (IStore, IPresence, IPeerLinks, IRouter, IUserFrames,
ISigner, IWorkers).
"""

from socp_tw.services.public.channel import PublicChannel
from socp_tw.services.public.keys import GroupKey, make_key_parts
from socp_tw.services.public.state import GROUP, ChannelState, MemberState, parse_event, parse_origins

__all__ = [
    "GROUP",
    "ChannelState",
    "GroupKey",
    "MemberState",
    "PublicChannel",
    "make_key_parts",
    "parse_event",
    "parse_origins",
]
