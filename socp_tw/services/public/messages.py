"""``MSG_PUBLIC_CHANNEL`` from local users: checked, then routed like a DM, one copy per member.

A sender sends one copy per member, encrypted to that member (SOCP v1.3 has no group
cipher).  The server checks the sender's key, the content_sig and that the recipient is
a member, and routes the copy; it never sees plaintext.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from socp_tw import crypto, wire
from socp_tw.content import extract_fields, verify_user_content
from socp_tw.interfaces import ILink, UserNotFound
from socp_tw.services.public.state import GROUP, MAX_KEY_TEXT

if TYPE_CHECKING:
    from socp_tw.services.public.channel import PublicChannel

__all__ = ["Messages"]


class _NotMember(wire.FrameError):
    code = "USER_NOT_FOUND"


class Messages:
    """Handles ``MSG_PUBLIC_CHANNEL`` on authenticated user links (registered with IUserFrames)."""

    def __init__(self, channel: PublicChannel) -> None:
        self._channel = channel
        channel.users.register_user_frame("MSG_PUBLIC_CHANNEL", self.user_message)
        channel.users.register_user_frame("PUBLIC_CHANNEL_SUBSCRIBE", self.subscribe)

    def subscribe(self, link: ILink, sender: str, envelope: wire.Envelope) -> None:
        """``PUBLIC_CHANNEL_SUBSCRIBE {}`` from a client in follow mode (docs/PUBLIC-CHANNEL.md §7):
        the snapshot, its key share and from then on every update."""
        self._channel.pushes.subscribe(sender, link)
        self._channel.counters["subscribed"] += 1

    def user_message(self, link: ILink, sender: str, envelope: wire.Envelope) -> Deferred | None:
        """One member's copy of a public message: check it and route it like a DM."""
        channel = self._channel
        if not channel.ready:
            if not channel.running:
                raise _NotMember("the public channel is not available on this server")
            d: Deferred = Deferred()
            channel.when_ready(lambda: d.callback(None))
            d.addCallback(lambda _: self.user_message(link, sender, envelope))
            return d
        payload = envelope.payload
        recipient = envelope.to
        if recipient != GROUP and not wire.is_uuid(recipient):
            raise wire.BadUUID("MSG_PUBLIC_CHANNEL 'to' must be a member's user id or \"public\"", "to")
        fields = extract_fields("MSG_PUBLIC_CHANNEL", payload)
        sender_pub = wire.require_str(payload, "sender_pub", max_len=MAX_KEY_TEXT)
        own = channel.users.authenticated_key(sender)
        if own is None or (sender_pub != own and _normalised(sender_pub) != own):
            raise wire.InvalidSig("sender_pub is not the key you authenticated with")
        if recipient != GROUP and not channel.state.is_member(recipient):
            channel.counters["not_member"] += 1
            raise _NotMember(f"user {recipient} is not a member of the public channel")
        key = crypto.load_public_key(sender_pub)
        preimage = crypto.public_preimage(fields["ciphertext"], sender, envelope.ts)
        if crypto.pss_verify(key, preimage, fields["content_sig"]):  # what conforming clients send
            self._send(link, recipient, fields, envelope.ts, sender, sender_pub)
            return None
        d = channel.workers.run(
            verify_user_content, "MSG_PUBLIC_CHANNEL", fields, sender, recipient, envelope.ts, sender_pub
        )
        d.addCallback(lambda _: self._send(link, recipient, fields, envelope.ts, sender, sender_pub))
        return d

    def _send(
        self, link: ILink, recipient: str, fields: dict[str, Any], ts: int, sender: str, sender_pub: str
    ) -> None:
        """One member's copy to that member; a copy ``to: "public"`` (other clients send one copy
        for the channel, docs/INTEROP.md row 5) to every online member but the sender, unchanged:
        its content_sig covers ciphertext, sender and ts only, so it verifies at each of them."""
        if recipient != GROUP:
            self._route(link, recipient, fields, ts, sender, sender_pub)
            return
        channel = self._channel
        channel.counters["to_public"] += 1
        for member in sorted(channel.state.members()):
            if member == sender or channel.presence.lookup(member) is None:
                continue
            try:
                channel.router.route("MSG_PUBLIC_CHANNEL", member, fields, ts, sender, sender_pub)
            except UserNotFound:
                continue
            channel.counters["routed"] += 1

    def _route(
        self, link: ILink, recipient: str, fields: dict[str, Any], ts: int, sender: str, sender_pub: str
    ) -> None:
        channel = self._channel
        try:
            channel.router.route("MSG_PUBLIC_CHANNEL", recipient, fields, ts, sender, sender_pub)
        except UserNotFound:
            channel.users.send_error(
                link,
                "USER_NOT_FOUND",
                f"member {recipient} is not online",
                ref="MSG_PUBLIC_CHANNEL",
                user_id=recipient,
            )
            return
        channel.counters["routed"] += 1  # counted, not logged: one copy per member per message


def _normalised(text: str) -> str | None:
    try:
        return crypto.encode_public_key(crypto.load_public_key(text))
    except crypto.BadKey:
        return None
