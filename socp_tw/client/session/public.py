"""The public channel (docs/PUBLIC-CHANNEL.md): the membership and group-key share the server
pushes, ``/members``, and ``/all`` (one ``MSG_PUBLIC_CHANNEL`` per member, made on the workers)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey
from twisted.internet.defer import Deferred, DeferredList

from socp_tw import crypto, wire
from socp_tw.client.pins import CHANGED, NEW
from socp_tw.client.session.core import SessionCore
from socp_tw.client.session.dms import message_frame, parts_to_send
from socp_tw.client.text import printable
from socp_tw.logs import get_logger

_log = get_logger("socp_tw.client.session")

MAX_PUBLIC_MEMBERS = 100_000


def _public_frame(
    key: RSAPrivateKey,
    recipient_pub: str,
    sender_pub: str,
    from_: str,
    to: str,
    ts: int,
    plain: bytes,
) -> bytes:
    """One member's MSG_PUBLIC_CHANNEL: OAEP to that member, content_sig over the §2 public
    preimage (``ciphertext + from + ts``), transport sig.  Runs on the workers."""
    ciphertext = crypto.oaep_encrypt(crypto.load_public_key(recipient_pub), plain)
    preimage = crypto.public_preimage(ciphertext, from_, ts)
    return message_frame(key, "MSG_PUBLIC_CHANNEL", from_, to, ts, ciphertext, sender_pub, preimage)


class PublicChannel(SessionCore):
    """``/all``, ``/members`` and the server's public-channel frames."""

    def send_all(self, text: str) -> Deferred:
        """``/all <text>``: one MSG_PUBLIC_CHANNEL per public-channel member, each encrypted to that
        member and content-signed (split like DMs when long); the RSA work runs on the workers."""
        return Deferred.fromCoroutine(self._send_all(text)).addErrback(self._internal_error)

    async def _send_all(self, text: str) -> None:
        plaintexts = await parts_to_send(self, text)
        if plaintexts is None:
            return
        # Right after the login (or subscribing) the membership snapshot may still be on its way.
        await self._membership()
        if self.public_version is None:
            self.show("[ERROR] message not sent: the server has not told us the public channel's members")
            return
        recipients, newly_pinned = [], 0
        for member, key_text in sorted(self.public_members.items()):
            if member == self.user_id:
                continue
            try:
                check = self.pins.check_user(member, key_text)
            except crypto.BadKey:
                continue
            if check.status == CHANGED:
                if (member, check.fingerprint) not in self._warned_keys:
                    self._warned_keys.add((member, check.fingerprint))
                    self._key_changed_warning(member, check.pinned_fingerprint, check.fingerprint)
                self.show(f"[WARNING] /all skips {member}: its key changed")
                continue
            if check.status == NEW:
                self.pins.pin_user(member, key_text)
                newly_pinned += 1
            recipients.append((member, key_text))
        if newly_pinned:
            self.show(f"[KEY] pinned the keys of {newly_pinned} public channel members (first contact)")
        if not recipients:
            self.show("[public] nobody else is in the public channel: message not sent")
            return
        if not self.logged_in or self._sender is None:
            self.show("[ERROR] message not sent: the connection was lost")
            return
        frames, failures = [], []
        for plain in plaintexts:
            ts = self._now_ms()
            for member, key_text in recipients:
                frame = self._workers.run(
                    _public_frame, self._key, key_text, self._pub, self.user_id, member, ts, plain
                )
                frame.addErrback(lambda failure: failures.append(failure) or failure)
                self._sender.send(frame)
                frames.append(frame)
        await DeferredList(frames, consumeErrors=True)
        if failures:
            self.show(
                f"[ERROR] /all: {len(failures)} of {len(frames)} frames could not be encrypted or signed"
            )
        self._count("public_sent")
        suffix = f", {len(plaintexts)} parts each" if len(plaintexts) > 1 else ""
        members = "1 member" if len(recipients) == 1 else f"{len(recipients)} members"
        self.show(f"[public] sent to {members}{suffix}: {printable(text)}")

    def _subscribe_public(self) -> None:
        """``PUBLIC_CHANNEL_SUBSCRIBE``, once per link, if the membership has not come by itself:
        our server sends the channel to a client in follow mode only once it asks."""
        if self.public_version is None and not self._public_subscribed and self.logged_in:
            self._public_subscribed = True
            self._send("PUBLIC_CHANNEL_SUBSCRIBE", self.server_id or "*", {})

    async def _membership(self) -> None:
        """Ask for the membership if need be, and wait (bounded) until it is known."""
        self._subscribe_public()
        await self._wait_until(
            lambda: self.public_version is not None or not self.logged_in, self._pubkey_timeout
        )

    def members(self) -> Deferred:
        """``/members``: the public channel's members as the server last told us, with fingerprints."""
        return Deferred.fromCoroutine(self._members()).addErrback(self._internal_error)

    async def _members(self) -> None:
        if self.public_version is None and self.logged_in:
            await self._membership()
        if self.public_version is None:
            self.show("[public] the membership is not known yet (it arrives after the login)")
            return
        lines = [f"Public channel, version {self.public_version} ({len(self.public_members)} members):"]
        for member in sorted(self.public_members):
            lines.append(self._list_line(member))
        share = self.public_key_share
        if share is not None:
            lines.append(f"Group key: version {share['version']}, made by server {share['creator']}")
        self.show("\n".join(lines))

    def _on_public_updated(self, envelope: wire.Envelope) -> None:
        """The server's membership push: a snapshot (``reset``) or the changes of one version."""
        if self._signed_by_server(envelope) is not True:
            self._count("bad_server_sig")
            _log.warn("Ignored a PUBLIC_CHANNEL_UPDATED frame not signed by the server key")
            return
        payload = envelope.payload
        version, members, removed = payload.get("version"), payload.get("members"), payload.get("removed", [])
        if type(version) is not int or not isinstance(members, list) or not isinstance(removed, list):
            self._count("bad_public_update")
            _log.warn("Ignored a malformed PUBLIC_CHANNEL_UPDATED frame")
            return
        if payload.get("reset") is True:
            self.public_members.clear()
        for item in members[:MAX_PUBLIC_MEMBERS]:
            if not isinstance(item, dict):
                continue
            member, key_text = item.get("user_id"), item.get("pubkey")
            if not wire.is_uuid(member) or not isinstance(key_text, str):
                continue
            if member == self.user_id or self._saw_key(member, key_text):
                self.public_members[member] = key_text
                self.names.see(member)
        for member in removed[:MAX_PUBLIC_MEMBERS]:
            if isinstance(member, str):
                self.public_members.pop(member, None)
        self.public_version = version
        self._changed()

    def _on_public_key_share(self, envelope: wire.Envelope) -> None:
        """Our share of the group key, content-signed by the server that made it."""
        payload = envelope.payload
        shares, creator_pub, content_sig = (payload.get(n) for n in ("shares", "creator_pub", "content_sig"))
        creator = payload.get("creator")

        def reject(reason: str) -> None:
            self._count("key_share_rejected")
            _log.warn("Rejected a PUBLIC_CHANNEL_KEY_SHARE: {reason}", reason=reason)

        if self._signed_by_server(envelope) is not True:
            return reject("invalid server signature")
        if not (isinstance(shares, list) and isinstance(creator_pub, str) and isinstance(content_sig, str)):
            return reject("malformed")
        try:
            creator_key = crypto.load_public_key(creator_pub)
        except crypto.BadKey as e:
            return reject(f"unusable creator key ({e.detail})")
        if creator == self.server_id and crypto.encode_public_key(creator_key) != crypto.encode_public_key(
            self._server_key
        ):
            return reject("creator_pub is not our server's key")
        if not crypto.verify_content_sig(
            creator_key, crypto.keyshare_preimage(shares, creator_pub), content_sig
        ):
            return reject("invalid content_sig")
        for share in shares:
            if isinstance(share, dict) and share.get("member") == self.user_id:
                wrapped = next(
                    (
                        share[n]
                        for n in ("wrapped_public_channel_key", "wrapped", "wrapped_key")
                        if n in share
                    ),
                    None,
                )
                if isinstance(wrapped, str):
                    self.public_key_share = {
                        "version": payload.get("version"),
                        "creator": creator if isinstance(creator, str) else envelope.from_,
                        "wrapped": wrapped,
                    }
                    self._count("key_shares")
                    return None
        return reject("no share for us")

    def _on_public_message(self, envelope: wire.Envelope) -> None:
        """One member's copy of an /all message: checked like a DM, shown once."""
        self._receive_message(envelope, public=True)
