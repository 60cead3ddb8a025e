"""The server's database."""

from __future__ import annotations

from zope.interface import Interface


class IStore(Interface):
    """The server's database (PROTOCOL.md §3).  Every method returns a Deferred.

    User ids compare case-insensitively (a look-alike spelling of a known id is the
    same id); keys are compared as the exact text given, so callers pass one
    normalised encoding (b64u DER).
    """

    def get_user(user_id):
        """Fire with a dict of the ``users`` row or None.

        Keys: ``user_id``, ``pubkey``, ``privkey_store``, ``pake_password`` (both None for a
        TOFU pin), ``meta`` (decoded dict), ``version``, ``created_at`` (Unix ms),
        ``home_server`` (None for a user registered or first seen here, else the server whose
        advertise pinned its key).
        """

    def add_user(user_id, pubkey, privkey_store, pake_password, meta):
        """Insert a registered user; fire True, or False if ``user_id`` already exists
        (registered or pinned)."""

    def update_user_meta(user_id, changes):
        """Merge ``changes`` into the user's ``meta`` (a None value removes that key); fire
        True, or False if the id has no row here."""

    def pin_user_key(user_id, pubkey):
        """Record a first-use key for an id never registered here (no privkey_store,
        no verifier).  Fire True if pinned now or already pinned to the same key, False if the id
        holds another key or is registered (a registered id must prove possession instead)."""

    def pin_remote_user(user_id, pubkey, home_server):
        """Pin the key another server advertised for a user id this server does not know yet
        (``home_server``: that server).  Fire True if pinned now, False if the id is known."""

    def load_group(group_id):
        """Fire with the replicated state of a group (docs/PUBLIC-CHANNEL.md), or None if unknown.

        A dict: ``group_id``, ``creator_id``, ``version`` (the sum of ``origins``), ``meta``
        (decoded dict), ``origins`` ({origin server id: highest event seq}), ``states`` (a list
        of dicts ``member_id``, ``present`` (bool), ``lamport``, ``origin_id``, ``seq``,
        ``host_id``, ``pubkey`` (None for a leave): the newest event known per member) and
        ``members`` ({member id: wrapped group key or None}: the current members).
        """

    def save_group_state(group_id, states, origins):
        """Record member states (each replaces that member's state) and raise per-origin counters
        (a counter is never lowered).  Current members follow the states: a present one is added
        (without a key) if missing, an absent one removed.  Fire with the group's new version;
        fail with ``ValueError`` for an unknown group or a malformed state, writing nothing."""

    def set_group_key(group_id, wraps, meta):
        """Store a new group key, wrapped per member: ``wraps`` {member id: wrapped key} sets
        each current member's ``wrapped_key`` (members not in ``wraps`` get None) and ``meta``
        entries are merged into the group's meta.  Fire with the number of members given a key;
        ``ValueError`` for an unknown group."""


__all__ = ["IStore"]
