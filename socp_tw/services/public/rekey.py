"""Re-keying the public channel: one group key per version, made by the leader, adopted by all.

For every version it settles on, the leader makes a fresh key (on the workers), wraps it
for each member and sends it to the servers as ``PUBLIC_CHANNEL_UPDATED``; servers keep
only the wrapped keys and hand each local member its share.  While the version keeps
changing the leader makes at most one key per ``rekey_interval``.  A server that gets no
key for a version within ``key_timeout`` makes one itself; of two keys for one version
the one made by the lower server id wins (docs/PUBLIC-CHANNEL.md §6).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from socp_tw import wire
from socp_tw.interfaces import ILink
from socp_tw.logs import get_logger
from socp_tw.services.public.keys import (
    MAX_PENDING_KEYS,
    GroupKey,
    KeyNotWanted,
    PartialKey,
    make_key_parts,
    parse_key_part,
)
from socp_tw.services.public.state import GROUP

if TYPE_CHECKING:
    from socp_tw.services.public.channel import PublicChannel

__all__ = ["Rekeying"]


class Rekeying:
    """Keeps :attr:`PublicChannel.key` the key of the current version (one per channel)."""

    _log = get_logger("socp_tw.public")

    def __init__(self, channel: PublicChannel) -> None:
        self._channel = channel
        self._pending_keys: dict[tuple[int, str], PartialKey] = {}
        self._generating = False
        self._generate_again = False
        self._last_key_started: float | None = None  # clock time the last key generation started
        self._rekey_timer: IDelayedCall | None = None
        self._watchdog: IDelayedCall | None = None
        self._watchdog_version = 0

    def stop(self) -> None:
        self._cancel_watchdog()
        self._cancel_rekey_timer()

    def _cancel_watchdog(self) -> None:
        if self._watchdog is not None and self._watchdog.active():
            self._watchdog.cancel()
        self._watchdog = None

    def _cancel_rekey_timer(self) -> None:
        if self._rekey_timer is not None and self._rekey_timer.active():
            self._rekey_timer.cancel()
        self._rekey_timer = None

    def valid(self, key: GroupKey | None, members: dict[str, str] | None = None) -> bool:
        """True if ``key`` is the key of the current version and members."""
        state = self._channel.state
        members = state.members() if members is None else members
        return key is not None and key.version == state.version and key.member_ids() == set(members)

    def check(self) -> None:
        """Make sure the current version has a key: adopt one received, or make one (leader)."""
        channel = self._channel
        if not channel.live():
            return
        version = channel.state.version
        members = channel.state.members()
        for slot in [s for s in self._pending_keys if s[0] < version]:
            del self._pending_keys[slot]
        if not members:
            self._cancel_watchdog()
            return
        candidates = [
            key
            for key in (p.complete() for p in self._pending_keys.values())
            if key is not None and self.valid(key, members)
        ]
        if candidates:
            best = min(candidates, key=lambda k: k.creator.lower())
            current = channel.key
            if not self.valid(current, members) or best.creator.lower() < current.creator.lower():
                self._adopt(best)
        if self.valid(channel.key, members):
            self._cancel_watchdog()
            return
        if channel.is_leader():
            self._cancel_watchdog()
            self._generate_when_due()
        elif self._watchdog is None or not self._watchdog.active() or self._watchdog_version != version:
            # Re-armed on every version change: it fires only once a version stayed keyless.
            self._cancel_watchdog()
            self._watchdog_version = version
            self._watchdog = channel.clock.callLater(channel.key_timeout, self._watchdog_fired)

    def _watchdog_fired(self) -> None:
        """No key from the leader in time (it may not make keys at all): make one ourselves."""
        self._watchdog = None
        if self._channel.live() and not self.valid(self._channel.key):
            self._channel.counters["key_watchdog"] += 1
            self._generate()

    # ------------------------------------------------------------ making keys

    def _generate_when_due(self) -> None:
        """Make a key now, or once ``rekey_interval`` has passed since the last one was started.

        While the version keeps changing (a burst of joins), the leader makes at most one key
        per interval: the key made when the timer fires is for the membership of that moment,
        so a burst costs one key after it instead of one per join.  The first change after a
        quiet interval is keyed at once.
        """
        if self._generating:
            self._generate_again = True  # checked again when that one is over
            return
        channel = self._channel
        if self._last_key_started is not None:
            wait = self._last_key_started + channel.rekey_interval - channel.clock.seconds()
            if wait > 0:
                if self._rekey_timer is None or not self._rekey_timer.active():
                    channel.counters["rekeys_deferred"] += 1
                    self._rekey_timer = channel.clock.callLater(wait, self._rekey_due)
                return
        self._generate()

    def _rekey_due(self) -> None:
        self._rekey_timer = None
        self.check()  # the key may have come from elsewhere meanwhile, or the leader changed

    def _generate(self) -> None:
        if self._generating:
            self._generate_again = True
            return
        self._cancel_rekey_timer()
        channel = self._channel
        version = channel.state.version
        members = sorted(channel.state.members().items())
        self._generating = True
        self._last_key_started = channel.clock.seconds()
        channel.counters["keys_started"] += 1
        signer = channel.signer
        state = channel.state

        def still_wanted() -> bool:  # read from the pool's thread: one int compared
            return state.version == version

        d = channel.workers.run(
            make_key_parts,
            signer.sign_content_now,
            signer.public_key_text,
            members,
            channel.shares_per_part,
            still_wanted,
        )
        d.addCallbacks(self._generated, self._generate_failed, callbackArgs=(version,))
        d.addBoth(self._generation_over)

    def _generated(self, parts: list[dict[str, Any]], version: int) -> None:
        channel = self._channel
        if not channel.running:
            return
        key = GroupKey(version, channel.server_id, channel.signer.public_key_text, parts)
        members = channel.state.members()
        if not self.valid(key, members):
            channel.counters["keys_outdated"] += 1  # the version moved on meanwhile: made again below
            self._generate_again = True
            return
        current = channel.key
        if self.valid(current, members) and current.creator.lower() < channel.server_id.lower():
            return  # a lower server made one first
        channel.counters["keys_made"] += 1
        self._log.info(
            "Public channel key for version {version} made here for {count} members",
            version=version,
            count=len(members),
        )
        for payload in key.server_payloads():
            channel.peers.broadcast(channel.signer.frame("PUBLIC_CHANNEL_UPDATED", "*", payload))
        self._adopt(key)

    def _generate_failed(self, failure: Failure) -> None:
        if failure.check(KeyNotWanted):
            self._channel.counters["keys_abandoned"] += 1  # made again (when due) below
            self._generate_again = True
            return
        self._channel.counters["keys_failed"] += 1
        self._log.failure("Could not make a public channel key", failure)

    def _generation_over(self, _: object) -> None:
        self._generating = False
        if self._generate_again:
            self._generate_again = False
            self.check()

    # ------------------------------------------------------------ adopting keys

    def _adopt(self, key: GroupKey) -> None:
        """``key`` is the key of the current version: keep it (wrapped only) and hand out shares."""
        channel = self._channel
        channel.key = key
        self._cancel_watchdog()
        for slot in [s for s in self._pending_keys if s[0] <= key.version]:
            del self._pending_keys[slot]
        channel.counters["keys_adopted"] += 1
        if key.creator != channel.server_id:
            self._log.info(
                "Public channel key for version {version} adopted from server {creator}",
                version=key.version,
                creator=key.creator,
            )
        d = channel.store.set_group_key(
            GROUP, key.wraps(), {"key_version": key.version, "key_creator": key.creator}
        )
        d.addErrback(channel.persist_failed)
        local = {}
        for member in key.member_ids():
            link = channel.presence.local_link(member)
            if link is not None and channel.pushes.gets_shares(member, link):
                local[member] = link
        channel.pushes.send_shares(key, local)

    def updated_received(self, envelope: wire.Envelope, link: ILink) -> None:
        """A server's PUBLIC_CHANNEL_UPDATED: one signed part of a key; adopt the key once whole."""
        channel = self._channel
        if "creator_pub" not in envelope.payload and "content_sig" not in envelope.payload:
            # The spec's own shape {version, wraps} (other servers, docs/INTEROP.md row 6): nobody
            # signed those wraps, so they cannot be adopted or passed on; not an attack either.
            channel.counters["ignored.unsigned_update"] += 1
            self._log.debug(
                "Ignored PUBLIC_CHANNEL_UPDATED from server {origin}: the spec's unsigned form"
                " (no creator_pub/content_sig)",
                origin=envelope.from_,
            )
            return
        part = parse_key_part(envelope)
        pinned = channel.peers.server_key(part.creator)
        part.check_creator(pinned)
        if not part.signed_by(pinned):
            channel.counters["key_invalid_sig"] += 1
            raise wire.InvalidSig("content_sig of the key shares does not verify")
        channel.gossip.flood(envelope, link)
        if part.version < channel.state.version:
            channel.counters["keys_stale"] += 1
            return
        slot = (part.version, part.creator)
        pending = self._pending_keys.get(slot)
        if pending is None or pending.count != part.count or pending.creator_pub != part.creator_pub:
            while len(self._pending_keys) >= MAX_PENDING_KEYS:
                del self._pending_keys[min(self._pending_keys)]
            pending = PartialKey(part.version, part.creator, part.creator_pub, part.count)
            self._pending_keys[slot] = pending
        pending.parts[part.part] = {"shares": part.shares, "content_sig": part.content_sig}
        if pending.complete() is not None:
            self.check()
