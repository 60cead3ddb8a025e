"""What the public channel tells its local users: membership updates, snapshots, key shares.

Local users learn the membership (ids and public keys) in ``PUBLIC_CHANNEL_UPDATED``
frames: a snapshot after the hello (``reset``), then one update per version change, at
most one per ``push_interval``; each member gets the signed part holding its key share
in a ``PUBLIC_CHANNEL_KEY_SHARE``.  Every such frame is signed once, to ``"*"``, and the
same bytes go to every user it is for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.python.failure import Failure

from socp_tw.interfaces import ILink
from socp_tw.logs import get_logger
from socp_tw.services.public.keys import GroupKey
from socp_tw.services.public.state import chunks
from socp_tw.transport.fanout import copies_of, sign_for_all

if TYPE_CHECKING:
    from socp_tw.services.public.channel import PublicChannel

__all__ = ["Pushes"]


def wants_pushes(link: ILink) -> bool:
    """False for a link in follow mode that has not subscribed to the channel (yet)."""
    return getattr(link, "public_pushes", True)


class Pushes:
    """The frames that go to this server's users (one per :class:`PublicChannel`)."""

    _log = get_logger("socp_tw.public")

    def __init__(self, channel: PublicChannel) -> None:
        self._channel = channel
        self.pushed: dict[str, str] = {}  # the membership local users were last told
        self.pushed_version = 0
        self._awaiting_snapshot: dict[str, ILink] = {}
        #: The local users told of the channel (all but unsubscribed follow-mode links), kept
        #: as they come and go: a push names its links without a scan of every local user.
        self._told: dict[str, ILink] = {}
        self._last_push: float | None = None  # clock time local users were last told a change
        self._push_timer: IDelayedCall | None = None
        # The snapshot frames of ``pushed`` (signed once, to "*"), shared by the users arriving
        # before the next push; dropped at that push, or soon after when nobody arrives.
        self.snapshot: tuple[dict[str, str], list[bytes | Deferred]] | None = None
        self._snapshot_expiry: IDelayedCall | None = None

    def loaded(self) -> None:
        """The state was loaded: what it holds is what users are told first."""
        self.pushed = dict(self._channel.state.members())
        self.pushed_version = self._channel.state.version

    def stop(self) -> None:
        if self._push_timer is not None and self._push_timer.active():
            self._push_timer.cancel()
        self._push_timer = None
        self.drop_snapshot()

    # ------------------------------------------------------------ who is told

    def user_arrived(self, user_id: str, link: ILink) -> None:
        """``user_id`` completed its hello on ``link``: its snapshot comes first, then the rest.

        Not for a link whose client asked to be told only once it subscribes (follow mode,
        services/users/follows.py): :meth:`subscribe` sends it the same then.
        """
        if not wants_pushes(link):
            return
        self._told[user_id] = link
        self._awaiting_snapshot[user_id] = link
        # After the USER_HELLO's ACK, which the user side sends once observers returned.
        channel = self._channel
        channel.clock.callLater(0, channel.when_ready, lambda: self._send_snapshot(user_id, link))

    def subscribe(self, user_id: str, link: ILink) -> None:
        """``PUBLIC_CHANNEL_SUBSCRIBE`` from ``user_id`` on ``link``: from now on it gets the pushes
        and key shares, starting with a snapshot (again, if it was subscribed already)."""
        link.public_pushes = True
        self.user_arrived(user_id, link)

    def user_left(self, user_id: str, link: ILink) -> None:
        if self._awaiting_snapshot.get(user_id) is link:
            del self._awaiting_snapshot[user_id]
        if self._told.get(user_id) is link:
            del self._told[user_id]

    def awaiting_snapshot(self, user_id: str, link: ILink) -> bool:
        """True while ``user_id`` on ``link`` waits for its snapshot (nothing else goes before it)."""
        return self._awaiting_snapshot.get(user_id) is link

    def _local_links(self) -> list[ILink]:
        """The links a push goes to: users told of the channel, their snapshot sent."""
        local_link = self._channel.presence.local_link
        return [
            link
            for user_id, link in self._told.items()
            if self.gets_shares(user_id, link) and local_link(user_id) is link
        ]

    def gets_shares(self, user_id: str, link: ILink) -> bool:
        """Whether pushes and ``user_id``'s key share go to ``link`` now: told of the channel
        (not a follow-mode link that has not subscribed), its snapshot sent."""
        return self._told.get(user_id) is link and self._awaiting_snapshot.get(user_id) is not link

    def _fan_out(self, frame_type: str, payload: dict[str, Any], links: list[ILink]) -> None:
        """Sign one frame (to ``"*"``) and send the same bytes on every link of ``links``."""
        if links:
            sign_for_all(self._channel.signer, self._log, frame_type, payload, links)

    # ------------------------------------------------------------ membership

    def push_when_due(self) -> None:
        """Tell local users the change now, or once ``push_interval`` has passed since the last push.

        A burst of joins (a reconnect storm) is then one update to every local user per
        interval, carrying all the changes since the previous one, instead of one per join:
        each update is a signature and a frame to every local user.  Users who arrive
        meanwhile get the membership as of the last push in their snapshot and the rest in
        the next update, like everybody else.
        """
        channel = self._channel
        if not channel.running:
            return  # stopping: our users are going offline with us
        if self._push_timer is not None and self._push_timer.active():
            return  # the update already waiting will carry this change too
        if self._last_push is not None:
            wait = self._last_push + channel.push_interval - channel.clock.seconds()
            if wait > 0:
                channel.counters["pushes_deferred"] += 1
                self._push_timer = channel.clock.callLater(wait, self._push_due)
                return
        self._push_membership()

    def _push_due(self) -> None:
        self._push_timer = None
        if self._channel.live():
            self._push_membership()

    def _push_membership(self) -> None:
        """Tell local users what changed since the last push (one frame per chunk of members)."""
        channel = self._channel
        current = channel.state.members()
        version = channel.state.version
        added = [
            {"user_id": m, "pubkey": pk} for m, pk in sorted(current.items()) if self.pushed.get(m) != pk
        ]
        removed = sorted(m for m in self.pushed if m not in current)
        if not added and not removed and version == self.pushed_version:
            return
        self._last_push = channel.clock.seconds()
        self.pushed, self.pushed_version = dict(current), version
        self.drop_snapshot()
        links = self._local_links()
        for index, chunk in enumerate(chunks(added, channel.members_per_frame)):
            payload = {
                "version": version,
                "wraps": [],
                "members": chunk,
                "removed": removed if index == 0 else [],
                "reset": False,
            }
            self._fan_out("PUBLIC_CHANNEL_UPDATED", payload, links)
        channel.counters["membership_pushed"] += 1

    # ------------------------------------------------------------ snapshots

    def _send_snapshot(self, user_id: str, link: ILink) -> None:
        """After the hello: the whole membership (``reset``), then the user's key share if any."""
        if self._awaiting_snapshot.get(user_id) is not link:
            return
        self._channel.flush_pending()  # its own join first: the snapshot shows it a member
        del self._awaiting_snapshot[user_id]
        if self._channel.presence.local_link(user_id) is not link:
            return
        for frame in self._snapshot_frames():
            link.send(frame)
        key = self._channel.key
        if key is not None and user_id in key.member_ids():
            self.send_shares(key, {user_id: link})

    def _snapshot_frames(self) -> list[bytes | Deferred]:
        """The snapshot of ``pushed`` for one user: signed once (to "*") for every user arriving
        until the next push, as a fan-out is; a storm of arrivals shares it."""
        channel = self._channel
        cached = self.snapshot
        if cached is None or cached[0] is not self.pushed:
            members = [{"user_id": m, "pubkey": pk} for m, pk in sorted(self.pushed.items())]
            frames: list[bytes | Deferred] = []
            cached = self.snapshot = (self.pushed, frames)
            for index, chunk in enumerate(chunks(members, channel.members_per_frame)):
                payload = {
                    "version": self.pushed_version,
                    "wraps": [],
                    "members": chunk,
                    "removed": [],
                    "reset": index == 0,
                }
                d = channel.signer.frame("PUBLIC_CHANNEL_UPDATED", "*", payload)
                frames.append(d)
                d.addCallbacks(
                    self._snapshot_signed,
                    self._snapshot_failed,
                    callbackArgs=(frames, index),
                    errbackArgs=(frames,),
                )
            channel.counters["snapshots_signed"] += 1
            if self._snapshot_expiry is None or not self._snapshot_expiry.active():
                keep = max(1.0, channel.push_interval)
                self._snapshot_expiry = channel.clock.callLater(keep, self.drop_snapshot)
        return [copies_of(frame, 1)[0] for frame in cached[1]]

    def _snapshot_signed(self, data: bytes, frames: list, index: int) -> bytes:
        frames[index] = data  # later users get the bytes themselves
        return data

    def _snapshot_failed(self, failure: Failure, frames: list) -> None:
        self._log.failure("Could not sign a public channel snapshot", failure)
        if self.snapshot is not None and self.snapshot[1] is frames:
            self.snapshot = None  # the next user gets a freshly signed one
        # Handled: the users' copies fail with "not signed" and their senders skip it.

    def drop_snapshot(self) -> None:
        if self._snapshot_expiry is not None and self._snapshot_expiry.active():
            self._snapshot_expiry.cancel()
        self._snapshot_expiry = None
        self.snapshot = None

    # ------------------------------------------------------------ key shares

    def send_shares(self, key: GroupKey, links: dict[str, ILink]) -> None:
        """PUBLIC_CHANNEL_KEY_SHARE to local members: each gets the signed part holding its share."""
        for index, part in enumerate(key.parts):
            targets = [links[s["member"]] for s in part["shares"] if s["member"] in links]
            self._fan_out("PUBLIC_CHANNEL_KEY_SHARE", key.share_payload(index), targets)
            self._channel.counters["key_shares_sent"] += len(targets)
