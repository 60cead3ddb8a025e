"""Receiving a file: every check of a ``FILE_START`` before a partial file is created for it."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

from twisted.internet.interfaces import IDelayedCall

from socp_tw import crypto, wire
from socp_tw.client.files.base import TransfersBase
from socp_tw.client.files.jobs import chunk_count
from socp_tw.client.files.progress import display_name
from socp_tw.client.pins import CHANGED, NEW
from socp_tw.client.text import printable
from socp_tw.logs import get_logger

_log = get_logger("socp_tw.client.files")

MAX_NAME_CHARS = 1024
MAX_RECEIVE_BYTES = 4 * 1024**3  # the largest incoming file we agree to assemble
MAX_INCOMING = 16  # incoming transfers at once
MAX_INCOMING_PER_SENDER = 4
MAX_SIG_CHARS = 2048
_MAX_KEY_CHARS = 16384

SAFE_FILE_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(eq=False)
class Incoming:
    """One file being received."""

    sender: str
    file_id: str
    name: str
    size: int
    sha256: str
    chunks: int
    sender_key: Any
    fd: int
    temp_path: str
    final_path: str
    state: bytearray  # per chunk: 0 missing, 1 being decrypted, 2 written
    received: int = 0
    written_bytes: int = 0
    in_flight: int = 0
    ended: bool = False
    sent_chunks: int | None = None  # what FILE_END says the sender sent
    finishing: bool = False
    done: bool = False
    timer: IDelayedCall | None = None
    unsigned: bool = False  # FILE_START had no content_sig (other clients): sender not verified


#: How an unsigned file (docs/INTEROP.md row 4) is labelled wherever it is shown.
UNSIGNED = "unsigned: sender not verified"


class Receiving(TransfersBase):
    """Incoming FILE_* frames: the start of a transfer."""

    def frame_received(self, envelope: wire.Envelope) -> None:
        """A FILE_START, FILE_CHUNK or FILE_END from our server."""
        if envelope.type == "FILE_START":
            self._on_start(envelope)
        elif envelope.type == "FILE_CHUNK":
            self._on_chunk(envelope)
        elif envelope.type == "FILE_END":
            self._on_end(envelope)

    def _refuse(self, sender: str, file_id: str, name: str | None, reason: str) -> None:
        self._count("files_refused")
        _log.info(
            "Refused file {file_id} from {sender}: {reason}",
            file_id=file_id[:128],
            sender=sender[:64],
            reason=reason,
        )
        label = f" ({display_name(name)})" if name else ""
        shown_id, shown_sender = printable(file_id[:128]), printable(sender[:64])
        self._show(f"[FILE] transfer {shown_id}{label} from {shown_sender} failed: {reason}")

    def _on_start(self, envelope: wire.Envelope) -> None:
        session = self._session
        payload = envelope.payload
        sender = payload.get("sender") if wire.is_uuid(payload.get("sender")) else None
        raw_id = payload.get("file_id")
        file_id = raw_id if isinstance(raw_id, str) else "?"
        name = payload.get("name") if isinstance(payload.get("name"), str) else None
        claimed = sender or "an unnamed sender"
        if not session.logged_in or session._key is None:
            return self._refuse(claimed, file_id, name, "received before login")
        if session._signed_by_server(envelope) is not True:
            return self._refuse(claimed, file_id, name, "invalid server signature")
        if envelope.to != session.user_id:
            return self._refuse(claimed, file_id, name, "not addressed to you")
        if sender is None:
            return self._refuse(claimed, file_id, name, "no valid sender id")
        sender = sender.lower()
        if not SAFE_FILE_ID.fullmatch(file_id):
            return self._refuse(sender, file_id, name, "file_id must be 1-128 letters, digits, '-' or '_'")
        if (sender, file_id) in self._incoming or (sender, file_id) in self._finished_incoming:
            self._count("duplicate_start")
            return None
        problem = self._start_problem(payload, name)
        if problem is not None:
            return self._refuse(sender, file_id, name, problem)
        size, sha256 = payload["size"], payload["sha256"].lower()
        try:
            sender_key = crypto.load_public_key(payload["sender_pub"])
        except crypto.BadKey as e:
            return self._refuse(sender, file_id, name, f"unusable sender key ({e.detail})")
        unsigned = "content_sig" not in payload  # the spec defines none for files; ours signs
        preimage = crypto.file_start_preimage(
            file_id, name, payload["size"], payload["sha256"], sender, envelope.to, envelope.ts
        )
        if not unsigned and not crypto.verify_content_sig(sender_key, preimage, payload["content_sig"]):
            return self._refuse(sender, file_id, name, "invalid signature")
        check = session.pins.check_user(sender, payload["sender_pub"])
        if not unsigned:
            session._seen_keys[sender] = payload["sender_pub"]
        if check.status == CHANGED:
            if (sender, check.fingerprint) not in session._warned_keys:
                session._warned_keys.add((sender, check.fingerprint))
                session._key_changed_warning(sender, check.pinned_fingerprint, check.fingerprint)
            return self._refuse(
                sender, file_id, name, "signed by a key different from the one pinned for this user"
            )
        mine = [t for t in self._incoming.values() if t.sender == sender]
        if len(mine) >= MAX_INCOMING_PER_SENDER or len(self._incoming) >= MAX_INCOMING:
            return self._refuse(sender, file_id, name, "too many incoming transfers at once")
        if check.status == NEW and sender != session.user_id and not unsigned:  # pin proven keys only
            session.pins.pin_user(sender, payload["sender_pub"])
            self._show(f"[KEY] pinned the key of {sender} [{check.fingerprint}] (first contact)")
        temp_path = os.path.join(self.download_dir, f".partial_{file_id}")
        final_path = os.path.join(self.download_dir, f"received_{file_id}")
        if os.path.lexists(final_path):
            return self._refuse(sender, file_id, name, f"{final_path} already exists")
        try:
            flags = (
                os.O_RDWR
                | os.O_CREAT
                | os.O_EXCL
                | getattr(os, "O_NOFOLLOW", 0)
                | getattr(os, "O_CLOEXEC", 0)
            )
            fd = os.open(temp_path, flags, 0o600)
        except OSError as e:
            return self._refuse(sender, file_id, name, f"cannot create {temp_path} ({e.strerror or e})")
        count = chunk_count(size)
        incoming = Incoming(
            sender,
            file_id,
            name,
            size,
            sha256,
            count,
            sender_key,
            fd,
            temp_path,
            final_path,
            bytearray(count),
            unsigned=unsigned,
        )
        self._incoming[(sender, file_id)] = incoming
        self._touch(incoming)
        self._count("files_incoming")
        _log.info(
            "Receiving file {file_id} ({size} bytes) from {sender}{unsigned}",
            file_id=file_id,
            size=size,
            sender=sender,
            unsigned=f" ({UNSIGNED})" if unsigned else "",
        )
        label = f" ({UNSIGNED})" if unsigned else ""
        self._show(f"[FILE] receiving {display_name(name)} ({size} bytes) from {sender}{label}")
        return None

    def _start_problem(self, payload: dict[str, Any], name: str | None) -> str | None:
        """What is wrong with a FILE_START payload's shape, or None."""
        if name is None or not name or len(name) > MAX_NAME_CHARS:
            return "malformed (name missing or too long)"
        size = payload.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            return "malformed (size)"
        if size > MAX_RECEIVE_BYTES:
            return f"the file is {size} bytes; this client accepts at most {MAX_RECEIVE_BYTES}"
        if not isinstance(payload.get("sha256"), str) or not SHA256_HEX.fullmatch(payload["sha256"]):
            return "malformed (sha256 must be 64 hex digits)"
        mode = payload.get("mode", "dm")
        if mode != "dm":
            return f"mode {printable(str(mode)[:16])!s} is not supported (only dm)"
        for field_name, limit in (("content_sig", MAX_SIG_CHARS), ("sender_pub", _MAX_KEY_CHARS)):
            if field_name == "content_sig" and field_name not in payload:
                continue  # an unsigned file (docs/INTEROP.md row 4)
            value = payload.get(field_name)
            if not isinstance(value, str) or not value or len(value) > limit:
                return f"malformed ({field_name})"
        return None

    def _lookup(self, envelope: wire.Envelope) -> Incoming | None:
        payload = envelope.payload
        sender, file_id = payload.get("sender"), payload.get("file_id")
        if not (wire.is_uuid(sender) and isinstance(file_id, str)):
            self._count("file_frames_malformed")
            return None
        incoming = self._incoming.get((sender.lower(), file_id))
        if incoming is None:
            self._count("file_frames_unknown")
            return None
        session = self._session
        if envelope.to != session.user_id or envelope.from_ != session.server_id:
            self._count("file_frames_misaddressed")
            return None
        return incoming
