"""Server-side user key pins (docs/SECURITY.md §"User keys"): the first key wins.

A server keeps, for every user id it has met, the first RSA key it learnt for it: at a
registration here, at a first-use ``USER_HELLO`` here, or from another server's
``USER_ADVERTISE``.  The rows live in the ``users`` table (schema 3 adds ``home_server``);
this service holds a digest of each in memory so the mesh and the user side can check a
key synchronously, on the frame's own reactor turn, before it moves a user or reaches a
client.  A later key for the same id is refused by every caller; only the operator can
lift a pin (docs/SECURITY.md says how).

Memory: one 32-byte digest, the home server id and a flag per user id (~200 bytes).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from twisted.application.service import Service
from zope.interface import implementer

from socp_tw import crypto
from socp_tw.interfaces import IStore, IUserKeys
from socp_tw.interfaces.users import DIFFERS, FULL, NEW, SAME
from socp_tw.limits import DEFAULT_LIMITS
from socp_tw.logs import get_logger


@dataclass(frozen=True, slots=True)
class UserKeyPin:
    """What this server pinned for one user id."""

    digest: bytes  # sha256 of the key's DER SubjectPublicKeyInfo
    home_server: str | None  # None: registered or first seen here; else the advertising server
    registered: bool  # registered here (has a password verifier)

    @property
    def fingerprint(self) -> str:
        """The key's short fingerprint, as :func:`socp_tw.crypto.fingerprint` prints it."""
        return crypto.digest_fingerprint(self.digest)


@lru_cache(maxsize=4096)
def key_digest(pubkey: str) -> bytes:
    """sha256(DER SPKI) of a key in any accepted encoding; :class:`crypto.BadKey` if unusable.
    Memoised on the text: every relayed DM's ``sender_pub`` is checked against its pin."""
    return crypto.spki_digest(pubkey)


@implementer(IUserKeys)
class UserKeys(Service):
    """The pin book: every known user id's key digest, loaded at start-up, written through."""

    name = "userkeys"
    _log = get_logger("socp_tw.userkeys")

    def __init__(
        self,
        store: IStore | None = None,
        rows: Iterable[tuple[str, str, str | None, bool]] = (),
        max_gossip_pins: int = DEFAULT_LIMITS.max_gossip_user_pins,
    ) -> None:
        """``rows``: (user_id, pubkey, home_server, registered) as ``store.read_user_keys`` reads
        them; ``store``: where new pins from gossip are written (None: memory only, for tests)."""
        self._store = IStore(store) if store is not None else None
        self.max_gossip_pins = max_gossip_pins
        self._pins: dict[str, UserKeyPin] = {}
        self._gossip_pins = 0
        self._full_logged = False
        for user_id, pubkey, home, registered in rows:
            try:
                self._add(user_id, UserKeyPin(key_digest(pubkey), home, registered))
            except crypto.BadKey:
                self._log.error("Stored key of user {user} is unusable: ignored", user=user_id)

    def _add(self, user_id: str, pin: UserKeyPin) -> None:
        previous = self._pins.get(user_id.lower())
        if previous is not None and previous.home_server is not None:
            self._gossip_pins -= 1
        if pin.home_server is not None:
            self._gossip_pins += 1
        self._pins[user_id.lower()] = pin

    def __len__(self) -> int:
        return len(self._pins)

    def lookup(self, user_id: str) -> UserKeyPin | None:
        return self._pins.get(user_id.lower())

    def check(self, user_id: str, pubkey: str) -> str:
        """``NEW`` (no pin), ``SAME`` or ``DIFFERS``; an unreadable key ``DIFFERS`` from any pin."""
        pin = self._pins.get(user_id.lower())
        if pin is None:
            return NEW
        try:
            return SAME if key_digest(pubkey) == pin.digest else DIFFERS
        except crypto.BadKey:
            return DIFFERS

    def pin_local(self, user_id: str, pubkey: str, registered: bool) -> None:
        """The store pinned ``pubkey`` here (a registration, or a first-use hello): mirror it."""
        self._add(user_id, UserKeyPin(key_digest(pubkey), None, registered))

    def pin_advertised(self, user_id: str, pubkey: str, server_id: str) -> str:
        """Check the key of a user another server advertises; pin it if the id is new.

        ``NEW`` (pinned now, written to the store), ``SAME``, ``DIFFERS`` (refuse the advert), or
        ``FULL`` (new, but the book holds ``max_gossip_pins`` pins from gossip already: refuse).
        """
        verdict = self.check(user_id, pubkey)
        if verdict != NEW:
            return verdict
        if self._gossip_pins >= self.max_gossip_pins:
            if not self._full_logged:
                self._full_logged = True
                self._log.error(
                    "User key pins full ({limit} learnt from other servers): refusing adverts of new users",
                    limit=self.max_gossip_pins,
                )
            return FULL
        self._add(user_id, UserKeyPin(key_digest(pubkey), server_id, False))
        if self._store is not None:
            normalised = crypto.encode_public_key(crypto.load_public_key(pubkey))
            d = self._store.pin_remote_user(user_id, normalised, server_id)
            d.addErrback(
                lambda f: self._log.failure("Could not store the key pin of user {user}", f, user=user_id)
            )
        return NEW


__all__ = ["DIFFERS", "FULL", "NEW", "SAME", "UserKeyPin", "UserKeys", "key_digest"]
