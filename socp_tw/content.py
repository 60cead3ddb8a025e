"""End-to-end checks of user content: shape and ``content_sig`` per frame kind.

Used where a user frame enters the network (the sender's server, before routing)
and where it leaves (the recipient's server, before delivery), so a forged frame is
refused as close to its source as possible and never reaches a client as genuine.
The server never decrypts: it only checks signatures over ciphertext.
"""

from __future__ import annotations

from typing import Any

from socp_tw import crypto, wire

#: The user frame kinds that can cross servers, and the payload fields each carries.
USER_CONTENT_FIELDS: dict[str, tuple[str, ...]] = {
    "MSG_DIRECT": ("ciphertext", "content_sig"),
    "MSG_PUBLIC_CHANNEL": ("ciphertext", "content_sig"),
    "FILE_START": ("file_id", "name", "size", "sha256", "mode"),
    "FILE_CHUNK": ("file_id", "index", "ciphertext"),
    "FILE_END": ("file_id",),
}

#: Payload fields a kind may carry but need not (relayed when present): our profile's signed
#: FILE_END (docs/FILES.md) adds the number of chunks sent and a content_sig over them.  The
#: spec defines no content_sig for files; our profile signs FILE_START and FILE_CHUNK, other
#: clients do not (docs/INTEROP.md row 4): an unsigned one is relayed, a signed one must verify,
#: and the receiving client shows the file as "unsigned: sender not verified".
USER_CONTENT_OPTIONAL_FIELDS: dict[str, tuple[str, ...]] = {
    "FILE_START": ("content_sig",),
    "FILE_CHUNK": ("content_sig",),
    "FILE_END": ("chunks", "content_sig"),
}

MAX_CIPHERTEXT_CHARS = 1024  # one RSA-4096 block is 512 bytes = 683 b64u chars


class ContentError(wire.InvalidSig):
    """User content failed its end-to-end check."""


def extract_fields(kind: str, payload: dict[str, Any]) -> dict[str, Any]:
    """Validate and copy the payload fields of a user frame of ``kind``.

    Raises a precise :class:`wire.FrameError` (missing field, bad type) so the
    sender learns what was wrong.
    """
    if kind not in USER_CONTENT_FIELDS:
        raise wire.BadFieldType(f"{kind} is not user content", "type")
    fields: dict[str, Any] = {}
    optional = USER_CONTENT_OPTIONAL_FIELDS.get(kind, ())
    for name in USER_CONTENT_FIELDS[kind] + optional:
        if name in optional and payload.get(name) is None:
            continue
        if name in ("size", "index", "chunks"):
            fields[name] = wire.require_int(payload, name, minimum=0, maximum=2**53)
        elif name == "ciphertext":
            fields[name] = wire.require_str(payload, name, max_len=MAX_CIPHERTEXT_CHARS)
        elif name == "file_id":
            fields[name] = wire.require_str(payload, name, max_len=128)
        elif name == "name":
            fields[name] = wire.require_str(payload, name, max_len=1024)
        elif name == "mode":
            mode = payload.get("mode", "dm")
            if mode not in ("dm", "public"):
                raise wire.BadFieldType("mode must be 'dm' or 'public'", "mode")
            fields[name] = mode
        else:
            fields[name] = wire.require_str(payload, name, max_len=2048)
    return fields


def file_end_preimage(file_id: str, chunks: int, from_: str, to: str, ts: int) -> bytes:
    """Our profile's FILE_END content_sig preimage: ``SOCP-FILE-END|file_id|chunks|from|to|ts``.

    The tag keeps it apart from every preimage of PROTOCOL.md §2 (none starts with it).
    """
    return f"SOCP-FILE-END|{file_id}|{chunks}|{from_}|{to}|{ts}".encode()


def verify_user_content(
    kind: str, fields: dict[str, Any], sender: str, recipient: str, ts: int, sender_pub: str
) -> None:
    """Raise :class:`ContentError` unless ``fields`` carry a valid content_sig by ``sender_pub``.

    ``crypto.BadKey`` propagates for an unusable ``sender_pub``.
    """
    key = crypto.load_public_key(sender_pub)
    if kind in ("FILE_START", "FILE_CHUNK") and "content_sig" not in fields:
        return  # unsigned file frames of other clients (docs/INTEROP.md row 4)
    sig = fields.get("content_sig", "")
    if kind == "MSG_DIRECT":
        ok = crypto.verify_dm_content_sig(key, fields["ciphertext"], sender, recipient, ts, sig)
    elif kind == "MSG_PUBLIC_CHANNEL":
        ok = crypto.verify_public_content_sig(key, fields["ciphertext"], sender, ts, sig)
    elif kind == "FILE_START":
        preimage = crypto.file_start_preimage(
            fields["file_id"], fields["name"], fields["size"], fields["sha256"], sender, recipient, ts
        )
        ok = crypto.verify_content_sig(key, preimage, sig)
    elif kind == "FILE_CHUNK":
        preimage = crypto.file_chunk_preimage(
            fields["ciphertext"], fields["file_id"], fields["index"], sender, recipient, ts
        )
        ok = crypto.verify_content_sig(key, preimage, sig)
    elif kind == "FILE_END":
        # Unsigned in SOCP v1.3 (accepted as is); ours signs the chunk count (docs/FILES.md).
        ok = True
        if "content_sig" in fields:
            if "chunks" not in fields:
                raise ContentError("FILE_END content_sig without chunks cannot be verified")
            preimage = file_end_preimage(fields["file_id"], fields["chunks"], sender, recipient, ts)
            ok = crypto.verify_content_sig(key, preimage, sig)
    else:
        raise ContentError(f"{kind} is not user content")
    if not ok:
        raise ContentError(f"content_sig of {kind} from {sender} does not verify")
