"""Incoming DMs and public-channel copies: every check before the text is shown, decryption in
arrival order, and the reassembly of multi-part messages."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from socp_tw import crypto, wire
from socp_tw.client.pins import CHANGED, NEW
from socp_tw.client.session.core import SessionCore
from socp_tw.client.session.dms import MAX_PARTS, PART_RE
from socp_tw.client.text import printable
from socp_tw.logs import get_logger

_log = get_logger("socp_tw.client.session")

MAX_PENDING_PER_SENDER = 8
MAX_PENDING_TOTAL = 64
_MAX_CIPHERTEXT_CHARS = 1024  # one RSA-4096 block is 683 b64u characters


@dataclass
class _Partial:
    sender: str
    msg_id: str
    count: int
    parts: dict[int, str] = field(default_factory=dict)
    timer: IDelayedCall | None = None
    public: bool = False  # a public-channel message (/all), not a DM
    held: bool = False  # a DM the server held while we were offline


class Inbox(SessionCore):
    """Check, decrypt, reassemble and show what other users sent us."""

    def _on_user_deliver(self, envelope: wire.Envelope) -> None:
        self._receive_message(envelope, public=False)

    def _receive_message(self, envelope: wire.Envelope, public: bool) -> None:
        """Check a DM (``USER_DELIVER``) or a public-channel copy end to end, then queue its
        decryption (off the reactor, shown in arrival order).

        In order: logged in, the server's signature, addressed to us, a sender id and the three
        fields, the content signature by ``sender_pub`` (the DM or the public preimage), and that
        key against the one pinned for the sender.  A public copy seen before is dropped quietly
        (a relay's repeat).  Anything else is a ``[WARNING] rejected ...`` line.
        """
        what = "public message" if public else "DM"
        payload = envelope.payload
        sender = payload.get("sender")
        claimed = sender if wire.is_uuid(sender) else "an unnamed sender"

        def reject(reason: str) -> None:
            self._count("public_rejected" if public else "dm_rejected")
            _log.info(
                "Rejected a {what} claiming to be from {sender}: {reason}",
                what=what,
                sender=claimed,
                reason=reason,
            )
            self.show(
                f"[WARNING] rejected {what} claiming to be from {printable(str(claimed)[:64])}: {reason}"
            )

        if not self.logged_in or self._key is None:
            return reject("received before login")
        if self._signed_by_server(envelope) is not True:
            return reject("invalid server signature")
        if envelope.to != self.user_id:
            return reject("not addressed to you")
        if not wire.is_uuid(sender):
            return reject("no valid sender id")
        ciphertext, content_sig, sender_pub = (
            payload.get(n) for n in ("ciphertext", "content_sig", "sender_pub")
        )
        if not all(isinstance(v, str) and v for v in (ciphertext, content_sig, sender_pub)):
            return reject("malformed (ciphertext, content_sig or sender_pub missing)")
        if len(ciphertext) > _MAX_CIPHERTEXT_CHARS:
            return reject("ciphertext too long")
        if public and (sender, content_sig) in self._public_seen:
            self._count("public_duplicates")
            return None  # the same frame again (a relay's repeat): shown once already
        try:
            sender_key = crypto.load_public_key(sender_pub)
        except crypto.BadKey as e:
            return reject(f"unusable sender key ({e.detail})")
        if public:
            signed = crypto.verify_public_content_sig(
                sender_key, ciphertext, sender, envelope.ts, content_sig
            )
        else:
            signed = crypto.verify_dm_content_sig(
                sender_key, ciphertext, sender, envelope.to, envelope.ts, content_sig
            )
        if not signed:
            return reject("invalid signature")
        check = self.pins.check_user(sender, sender_pub)
        self._seen_keys[sender] = sender_pub
        if check.status == CHANGED:
            if (sender, check.fingerprint) not in self._warned_keys:
                self._warned_keys.add((sender, check.fingerprint))
                self._key_changed_warning(sender, check.pinned_fingerprint, check.fingerprint)
            return reject("signed by a key different from the one pinned for this user")
        if check.status == NEW and sender != self.user_id:
            self.pins.pin_user(sender, sender_pub)
            self.show(f"[KEY] pinned the key of {sender} [{check.fingerprint}] (first contact)")
        if public:
            self._public_seen.append((sender, content_sig))
        key = self._key
        held = payload.get("held") is True and not public

        def decrypt(_: object) -> Deferred:
            done = self._workers.run(crypto.oaep_decrypt, key, ciphertext)
            done.addCallbacks(
                self._decrypted,
                self._undecryptable,
                callbackArgs=(sender, public, envelope.ts, held),
                errbackArgs=(sender, public),
            )
            return done.addErrback(self._internal_error)

        self._inbox.addCallback(decrypt)
        return None

    def _undecryptable(self, failure: Any, sender: str, public: bool = False) -> None:
        self._count("public_rejected" if public else "dm_rejected")
        reason = (
            "it does not decrypt with your key" if failure.check(crypto.DecryptError) else "internal error"
        )
        if not failure.check(crypto.DecryptError):
            _log.failure("Decrypting a DM failed", failure)
        what = "public message" if public else "DM"
        self.show(f"[WARNING] rejected {what} claiming to be from {sender}: {reason}")

    def _show_message(
        self, sender: str, text: str, public: bool, ts: int | None = None, held: bool = False
    ) -> None:
        """``DM from <uuid>: text`` / ``[public] <uuid>: text``, a known name right after the id
        (``<uuid> (alice)``); the ui puts the (signed) time ``ts`` in front on a terminal.  A DM
        held for us while we were offline says when it was sent: ``[sent YYYY-MM-DD HH:MM]``."""
        who = printable(self.names.tag(sender))
        if public:
            self._count("public_received")
            self.show_message(f"[public] {who}: {printable(text)}", ts)
        else:
            self._count("dm_received")
            self.names.talked.add(sender)
            self._follow([sender])
            sent = ""
            if held and ts is not None:
                sent = time.strftime("[sent %Y-%m-%d %H:%M] ", time.localtime(ts / 1000))
            self.show_message(f"{sent}DM from {who}: {printable(text)}", ts)

    def _decrypted(
        self, plaintext: bytes, sender: str, public: bool = False, ts: int | None = None, held: bool = False
    ) -> None:
        text = plaintext.decode("utf-8", "replace")
        match = PART_RE.match(text)
        if match is None:
            self._show_message(sender, text, public, ts, held)
            return
        index, count, msg_id = int(match.group(1)), int(match.group(2)), match.group(3)
        self._add_part(sender, msg_id, index, count, text[match.end() :], public, ts, held)

    def _add_part(
        self,
        sender: str,
        msg_id: str,
        index: int,
        count: int,
        piece: str,
        public: bool = False,
        ts: int | None = None,
        held: bool = False,
    ) -> None:
        slot = (sender, f"public:{msg_id}" if public else msg_id)  # /all and DM parts never mix
        what = "public message" if public else "DM"
        if not (1 <= index <= count <= MAX_PARTS):
            self.show(f"[WARNING] dropped a {what} part from {sender}: bad part header {index}/{count}")
            return
        if slot in self._completed:
            return  # a duplicate of a message already shown
        partial = self._partials.get(slot)
        if partial is None:
            self._make_room(sender)
            partial = _Partial(sender, msg_id, count, public=public, held=held)
            partial.timer = self._clock.callLater(self._reassembly_timeout, self._partial_expired, slot)
            self._partials[slot] = partial
        elif partial.count != count:
            self.show(
                f"[WARNING] dropped a {what} part from {sender}: it claims {count} parts, not {partial.count}"
            )
            return
        partial.parts.setdefault(index, piece)
        if len(partial.parts) < count:
            return
        del self._partials[slot]
        if partial.timer is not None and partial.timer.active():
            partial.timer.cancel()
        self._completed.append(slot)
        text = "".join(partial.parts[i] for i in range(1, count + 1))
        self._show_message(sender, text, public, ts, held or partial.held)

    def _make_room(self, sender: str) -> None:
        mine = [slot for slot in self._partials if slot[0] == sender]
        if len(mine) >= MAX_PENDING_PER_SENDER:
            self._drop_partial(mine[0], "too many incomplete messages from this sender")
        if len(self._partials) >= MAX_PENDING_TOTAL:
            self._drop_partial(next(iter(self._partials)), "too many incomplete messages")

    def _partial_expired(self, slot: tuple[str, str]) -> None:
        partial = self._partials.get(slot)
        if partial is not None:
            partial.timer = None
            self._drop_partial(slot, f"the rest did not arrive within {self._reassembly_timeout:g} s")

    def _drop_partial(self, slot: tuple[str, str], why: str) -> None:
        partial = self._partials.pop(slot)
        if partial.timer is not None and partial.timer.active():
            partial.timer.cancel()
        missing = [str(i) for i in range(1, partial.count + 1) if i not in partial.parts]
        self._count("public_incomplete" if partial.public else "dm_incomplete")
        what = "public message" if partial.public else "DM"
        self.show(
            f"[WARNING] incomplete {what} from {partial.sender}: "
            f"{len(partial.parts)} of {partial.count} parts arrived (missing {', '.join(missing)}); "
            f"{why}; message dropped"
        )
