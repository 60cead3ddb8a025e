"""Group-key crypto of the public channel: make, wrap and sign keys; read and check key parts.

A group key is 256 random bits, wrapped for each member with RSA-OAEP; the wrapped shares
travel in parts of bounded size, each with its creator's ``content_sig`` over
``keyshare_preimage(shares, creator_pub)`` (docs/PUBLIC-CHANNEL.md §6).  Servers only
ever hold the wrapped shares; the clear key exists only inside :func:`make_key_parts`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from socp_tw import crypto, wire
from socp_tw.services.public.state import MAX_COUNTER, MAX_EVENTS_PER_FRAME, MAX_KEY_TEXT, chunks

__all__ = [
    "MAX_PENDING_KEYS",
    "WRAPPED_NAMES",
    "GroupKey",
    "KeyNotWanted",
    "KeyPart",
    "PartialKey",
    "make_key_parts",
    "parse_key_part",
]

MAX_WRAPPED_CHARS = 1024  # one RSA-4096 block is 683 b64u characters
MAX_PENDING_KEYS = 4  # incomplete or future keys kept while waiting for their version
MAX_KEY_PARTS = 8192  # 100 000 members in parts of 16

#: Names other implementations use for a wrapped key inside ``wraps``/``shares``.
WRAPPED_NAMES = ("wrapped_key", "wrapped", "wrapped_public_channel_key")


@dataclass
class GroupKey:
    """One group key: the version it belongs to, who made it, and its signed shares."""

    version: int
    creator: str
    creator_pub: str
    parts: list[dict[str, Any]]  # [{"shares": [{member, wrapped_public_channel_key}], "content_sig"}]

    def wraps(self) -> dict[str, str]:
        return {
            share["member"]: share["wrapped_public_channel_key"]
            for part in self.parts
            for share in part["shares"]
        }

    def member_ids(self) -> set[str]:
        return {share["member"] for part in self.parts for share in part["shares"]}

    def server_payloads(self) -> list[dict[str, Any]]:
        """The PUBLIC_CHANNEL_UPDATED payloads (one per part) announcing this key to servers."""
        return [
            {
                "version": self.version,
                "wraps": [
                    {"member_id": s["member"], "wrapped_key": s["wrapped_public_channel_key"]}
                    for s in part["shares"]
                ],
                "creator": self.creator,
                "creator_pub": self.creator_pub,
                "content_sig": part["content_sig"],
                "part": index,
                "parts": len(self.parts),
            }
            for index, part in enumerate(self.parts)
        ]

    def share_payload(self, index: int) -> dict[str, Any]:
        """The PUBLIC_CHANNEL_KEY_SHARE payload of part ``index``, for the members it holds."""
        part = self.parts[index]
        return {
            "shares": part["shares"],
            "creator_pub": self.creator_pub,
            "content_sig": part["content_sig"],
            "version": self.version,
            "creator": self.creator,
            "part": index,
            "parts": len(self.parts),
        }


class KeyNotWanted(Exception):
    """The membership moved on while its key was being made: the rest is not worth making."""


def make_key_parts(
    sign: Callable[[bytes], str],
    creator_pub: str,
    members: list[tuple[str, str]],
    shares_per_part: int,
    still_wanted: Callable[[], bool] | None = None,
) -> list[dict[str, Any]]:
    """Make a fresh 256-bit group key, wrap it for each (member id, pubkey), sign the shares.

    ``sign`` makes a content_sig over a preimage (``ISigner.sign_content_now``).  Runs on the
    worker pool.  The clear key exists only inside this call.  ``still_wanted`` is asked
    before each part: when it says no (the version changed), :class:`KeyNotWanted` is raised,
    so a key outdated during a storm costs one part, not all of them (10,000 members: ~1.6 s).
    """
    group_key = secrets.token_bytes(32)
    parts = []
    try:
        for chunk in chunks(members, shares_per_part):
            if still_wanted is not None and not still_wanted():
                raise KeyNotWanted()
            shares = [
                {
                    "member": member,
                    "wrapped_public_channel_key": crypto.oaep_encrypt(
                        crypto.load_public_key(pubkey), group_key
                    ),
                }
                for member, pubkey in chunk
            ]
            content_sig = sign(crypto.keyshare_preimage(shares, creator_pub))
            parts.append({"shares": shares, "content_sig": content_sig})
    finally:
        del group_key
    return parts


@dataclass
class PartialKey:
    """The parts of one (version, creator) key received so far."""

    version: int
    creator: str
    creator_pub: str
    count: int
    parts: dict[int, dict[str, Any]] = field(default_factory=dict)

    def complete(self) -> GroupKey | None:
        if len(self.parts) != self.count:
            return None
        return GroupKey(
            self.version, self.creator, self.creator_pub, [self.parts[i] for i in range(self.count)]
        )


@dataclass(frozen=True)
class KeyPart:
    """One part of a key as a server announced it in ``PUBLIC_CHANNEL_UPDATED``."""

    version: int
    creator: str
    creator_pub: str
    content_sig: str
    part: int
    count: int
    shares: list[dict[str, str]]

    def check_creator(self, pinned: RSAPublicKey | None) -> None:
        """Raise ``INVALID_SIG`` unless ``creator_pub`` is ``pinned``, the creator's pinned key."""
        try:
            offered = crypto.load_public_key(self.creator_pub)
        except crypto.BadKey as e:
            raise wire.InvalidSig(f"creator_pub: {e.detail}") from None
        if pinned is None or crypto.encode_public_key(offered) != crypto.encode_public_key(pinned):
            raise wire.InvalidSig(f"creator_pub is not the key pinned for server {self.creator}")

    def signed_by(self, pinned: RSAPublicKey) -> bool:
        """True if ``content_sig`` over the shares verifies with ``pinned``."""
        preimage = crypto.keyshare_preimage(self.shares, self.creator_pub)
        return crypto.verify_content_sig(pinned, preimage, self.content_sig)


def _wrapped_of(item: dict[str, Any]) -> str:
    for name in WRAPPED_NAMES:
        if item.get(name) is not None:
            return wire.require_str(item, name, max_len=MAX_WRAPPED_CHARS)
    raise wire.MissingField("each wrap needs 'wrapped_key' (or 'wrapped')", "wraps")


def parse_key_part(envelope: wire.Envelope) -> KeyPart:
    """Validate a server's ``PUBLIC_CHANNEL_UPDATED`` (shape only: see :meth:`KeyPart.check_creator`)."""
    payload = envelope.payload
    # Relayed keys name their creator; a key sent by its creator may leave it out.
    creator = wire.require_uuid(payload, "creator") if "creator" in payload else envelope.from_
    version = wire.require_int(payload, "version", minimum=1, maximum=MAX_COUNTER)
    raw_wraps = wire.require_list(payload, "wraps", max_len=MAX_EVENTS_PER_FRAME)
    if payload.get("creator_pub") is None or payload.get("content_sig") is None:
        raise wire.MissingField("PUBLIC_CHANNEL_UPDATED without creator_pub/content_sig cannot be checked")
    creator_pub = wire.require_str(payload, "creator_pub", max_len=MAX_KEY_TEXT)
    content_sig = wire.require_str(payload, "content_sig", max_len=2048)
    part = wire.require_int(payload, "part", minimum=0, maximum=MAX_KEY_PARTS) if "part" in payload else 0
    count = wire.require_int(payload, "parts", minimum=1, maximum=MAX_KEY_PARTS) if "parts" in payload else 1
    if part >= count:
        raise wire.BadFieldType("part must be below parts", "part")
    shares = []
    for item in raw_wraps:
        if not isinstance(item, dict):
            raise wire.BadFieldType("each wrap must be an object", "wraps")
        shares.append(
            {"member": wire.require_uuid(item, "member_id"), "wrapped_public_channel_key": _wrapped_of(item)}
        )
    return KeyPart(version, creator, creator_pub, content_sig, part, count, shares)
