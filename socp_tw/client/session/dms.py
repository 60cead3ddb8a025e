"""Sending DMs (``/tell``): split into parts when long, encrypted and signed on the workers;
and the ``[FAILED]`` line when the server reports one it could not deliver."""

from __future__ import annotations

import re
import secrets
import time

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from twisted.internet.defer import Deferred, DeferredList

from socp_tw import crypto, wire
from socp_tw.client.pins import CHANGED, NEW
from socp_tw.client.session.core import RequestFailed, ServerError, SessionCore, signed_frame
from socp_tw.client.text import printable

# Multi-part DMs (our client's convention, docs/CLIENT.md): a header line inside the
# plaintext of every part: "[SOCP-PART <index>/<count> id=<16 hex>]\n" (index from 1).
PART_MAGIC = "[SOCP-PART "
PART_RE = re.compile(r"\[SOCP-PART ([1-9][0-9]{0,2})/([1-9][0-9]{0,2}) id=([0-9a-f]{16})\]\n")
PART_HEADER_MAX = 40
PART_TEXT_BYTES = crypto.OAEP_MAX_PLAINTEXT - PART_HEADER_MAX
MAX_PARTS = 64
MAX_DM_BYTES = MAX_PARTS * PART_TEXT_BYTES


def _dm_frame(
    key: RSAPrivateKey,
    recipient_key: RSAPublicKey,
    sender_pub: str,
    from_: str,
    to: str,
    ts: int,
    plain: bytes,
) -> bytes:
    """One MSG_DIRECT: OAEP to the recipient, content_sig over the §2 DM preimage, transport sig."""
    ciphertext = crypto.oaep_encrypt(recipient_key, plain)
    preimage = crypto.dm_preimage(ciphertext, from_, to, ts)
    return message_frame(key, "MSG_DIRECT", from_, to, ts, ciphertext, sender_pub, preimage)


def message_frame(
    key: RSAPrivateKey,
    ftype: str,
    from_: str,
    to: str,
    ts: int,
    ciphertext: str,
    sender_pub: str,
    preimage: bytes,
) -> bytes:
    """A MSG_DIRECT or MSG_PUBLIC_CHANNEL: ``content_sig`` by ``key`` over ``preimage``, and the
    transport signature.  Runs on the workers."""
    content_sig = crypto.sign_content(key, preimage)
    payload = {"ciphertext": ciphertext, "sender_pub": sender_pub, "content_sig": content_sig}
    return signed_frame(key, ftype, from_, to, ts, payload)


async def parts_to_send(session: SessionCore, text: str) -> list[bytes] | None:
    """The plaintext parts of a message about to be sent (``/tell``, ``/all``), or None after
    saying why not (not online, too long)."""
    if not await session._require_online():
        return None
    try:
        return encode_dm_parts(text)
    except ValueError as e:
        session.show(f"[ERROR] message not sent: {e}")
        return None


def encode_dm_parts(text: str, msg_id: str | None = None) -> list[bytes]:
    """The plaintext blocks of a DM: the text itself if it fits one OAEP block, else parts
    with a ``[SOCP-PART i/n id=…]`` header.  ``ValueError`` over :data:`MAX_DM_BYTES`."""
    raw = text.encode("utf-8")
    if len(raw) <= crypto.OAEP_MAX_PLAINTEXT and not text.startswith(PART_MAGIC):
        return [raw]
    pieces = crypto.split_text(text, PART_TEXT_BYTES)
    if len(pieces) > MAX_PARTS:
        raise ValueError(f"the message is {len(raw)} bytes; the limit is {MAX_DM_BYTES}")
    msg_id = msg_id or secrets.token_hex(8)
    count = len(pieces)
    return [
        f"[SOCP-PART {i}/{count} id={msg_id}]\n".encode() + piece.encode("utf-8")
        for i, piece in enumerate(pieces, 1)
    ]


class DirectMessages(SessionCore):
    """``/tell`` and the reports of DMs that were not delivered."""

    def tell(self, user_id: str, text: str) -> Deferred:
        """``/tell <uuid> <text>``: encrypt to the pinned key, sign, send (split if long)."""
        return Deferred.fromCoroutine(self._tell(user_id, text)).addErrback(self._internal_error)

    async def _tell(self, user_id: str, text: str) -> None:
        plaintexts = await parts_to_send(self, text)
        if plaintexts is None:
            return
        try:
            key_text = await self._recipient_key(user_id)
        except (ServerError, RequestFailed) as e:
            self.show(f"[ERROR] message not sent: {printable(str(e))}")
            return
        if key_text is None:
            self.show(f"[ERROR] message not sent: no key known for {user_id} (is the user online?)")
            return
        check = self.pins.check_user(user_id, key_text)
        if check.status == CHANGED:
            self._key_changed_warning(user_id, check.pinned_fingerprint, check.fingerprint)
            self.show(f"[ERROR] message not sent: the key of {user_id} changed")
            return
        if check.status == NEW and user_id != self.user_id:
            self.pins.pin_user(user_id, key_text)
            self.show(f"[KEY] pinned the key of {user_id} [{check.fingerprint}] (first contact)")
        if not self.logged_in or self._sender is None:
            self.show("[ERROR] message not sent: the connection was lost")
            return
        recipient_key = crypto.load_public_key(key_text)
        frames, failures = [], []
        sent = self.sent_dms.add(user_id, text)
        for plain in plaintexts:
            ts = self._now_ms()
            self.sent_dms.add_part(sent, ts)
            frame = self._workers.run(
                _dm_frame, self._key, recipient_key, self._pub, self.user_id, user_id, ts, plain
            )
            frame.addErrback(lambda failure: failures.append(failure) or failure)
            self._sender.send(frame)  # the sender consumes the result: watch failures above
            frames.append(frame)
        await DeferredList(frames, consumeErrors=True)
        if failures:
            self.show("[ERROR] message not sent: it could not be encrypted or signed")
            return
        self._count("dm_sent")
        suffix = f" ({len(plaintexts)} parts)" if len(plaintexts) > 1 else ""
        self.names.talked.add(user_id)
        self._follow([user_id])
        self.show(f"DM to {printable(self.names.tag(user_id))}{suffix}: {printable(text)}")

    def _dm_status(self, payload: dict) -> None:
        """``ACK {msg_ref: MSG_DIRECT, user_id, ts, status}``: the server holds a DM of ours for a
        user who is offline or unreachable ("queued"), or handed a held one over ("delivered")."""
        recipient, status = payload.get("user_id"), payload.get("status")
        if not isinstance(recipient, str) or not wire.is_uuid(recipient):
            return
        recipient = recipient.lower()
        who = printable(recipient)
        message = self.sent_dms.find(recipient, payload.get("ts"))
        if status == "queued":
            if message is not None and message.queued:
                return  # another part of the same message
            if message is not None:
                message.queued = True
            if payload.get("reason") == "unreachable":
                self.show(
                    f"DM to {who} queued: the server of {who} cannot be reached now;"
                    " it will be delivered when it is back"
                )
            else:
                self.show(f"DM to {who} queued: {who} is offline; it will be delivered when they come online")
        elif status == "delivered":
            if message is not None and message.handed_over:
                return
            what = f"DM to {who}"
            if message is not None:
                message.handed_over = True
                sent = time.strftime("%H:%M:%S", time.localtime(message.sent_at))
                what += f' ("{message.preview}", sent {sent})'
            self.show(f"[DELIVERED] queued {what} was handed over")

    def _dm_failed(self, recipient: str, ts: object, code: str, detail: str) -> None:
        """The server could not deliver a DM of ours: say which one, once per message."""
        what = f"DM to {printable(recipient[:64])}"
        message = self.sent_dms.find(recipient, ts)
        if message is not None:
            if message.reported:
                self._count("dm_failures_repeated")
                return  # another part of a message already reported
            message.reported = True
            sent = time.strftime("%H:%M:%S", time.localtime(message.sent_at))
            what += f' ("{message.preview}", sent {sent})'
        self._count("dm_failures")
        self.show(f"[FAILED] {what} was not delivered: {printable(code[:64])}: {printable(detail[:1024])}")
