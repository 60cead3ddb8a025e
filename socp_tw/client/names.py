"""Who is who: the ids the client knows, the names users claim and the names you give them.

A *claimed* name (``/nick``) arrives in ``USER_ADVERTISE.meta.name`` and is only a claim:
anybody may call themselves ``alice``.  A *petname* (``/name <id> <petname>``) is yours,
kept in the pins file, and wins over the claim.  A name picks a recipient only when exactly
one user answers to it; otherwise the candidates are listed and nothing is sent.  A unique
prefix of an id is accepted wherever an id is.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from socp_tw import wire
from socp_tw.client.text import one_line
from socp_tw.usernames import MAX_NAME_CHARS, clean_name

__all__ = ["MAX_NAME_CHARS", "Names", "Unresolved", "clean_name", "short_id"]

_ID_CHARS = set("0123456789abcdef-")


class Unresolved(Exception):
    """A user reference that names nobody, or more than one user; ``str`` says which.
    ``unknown`` is True when it names nobody this client knows of (asking the server may help)."""

    def __init__(self, text: str, unknown: bool = False) -> None:
        super().__init__(text)
        self.unknown = unknown


def short_id(user_id: str) -> str:
    """The first 8 hex digits of an id: enough to tell people apart, and a valid prefix."""
    return user_id[:8]


class Names:
    """Known ids, claimed names and petnames (the latter persisted through ``pins``)."""

    def __init__(self, pins: Any = None) -> None:
        self._pins = pins
        self.claims: dict[str, str] = {}
        self.known: set[str] = set()
        self.talked: set[str] = set()  # users you exchanged DMs with in this session

    # ------------------------------------------------------------ facts in

    def see(self, user_id: str) -> None:
        """``user_id`` exists (presence, /list, a message): a candidate for prefixes and Tab."""
        if wire.is_uuid(user_id):
            self.known.add(user_id.lower())

    def claim(self, user_id: str, meta: object) -> None:
        """What ``USER_ADVERTISE.meta`` says the user calls themselves (a bad name is ignored)."""
        self.see(user_id)
        name = meta.get("name") if isinstance(meta, dict) else None
        cleaned = clean_name(name) if isinstance(name, str) else None
        if cleaned is None:
            self.claims.pop(user_id, None)
        else:
            self.claims[user_id] = cleaned

    def petname(self, user_id: str) -> str | None:
        return self._pins.petname(user_id) if self._pins is not None else None

    def set_petname(self, user_id: str, name: str | None) -> None:
        """Give ``user_id`` your own name for them (``None``: forget it)."""
        self.see(user_id)
        if self._pins is not None:
            self._pins.set_petname(user_id, name)

    # ------------------------------------------------------------ facts out

    def label(self, user_id: str) -> str | None:
        """The name to show for ``user_id``: your petname, else their claim, else None."""
        return self.petname(user_id) or self.claims.get(user_id)

    def tag(self, user_id: str) -> str:
        """``<uuid> (name)`` when a name is known, else the bare ``<uuid>`` (the guide's lines)."""
        label = self.label(user_id)
        return f"{user_id} ({label})" if label else user_id

    def who(self, user_id: str) -> str:
        """``name (577eab50)`` when a name is known, else the full id: short, for status lines."""
        label = self.label(user_id)
        return f"{label} ({short_id(user_id)})" if label else user_id

    def ids(self) -> set[str]:
        """Every id a prefix or Tab may stand for."""
        ids = set(self.known) | set(self.claims)
        if self._pins is not None:
            ids |= set(self._pins.user_ids()) | set(self._pins.petnames())
        return ids

    # ------------------------------------------------------------ lookups

    def resolve(self, token: str) -> str:
        """The one user id ``token`` stands for: a full id, your petname, a unique id prefix or
        a name exactly one user claims.  :class:`Unresolved` otherwise, listing candidates
        (its text is escaped, ready to print)."""
        lowered = token.strip().lower()
        if wire.is_uuid(lowered):
            return lowered
        shown = one_line(token, 64)
        folded = _fold(token)
        ids = self.ids()
        by_petname = sorted(u for u in ids if _fold(self.petname(u) or "") == folded)
        if len(by_petname) == 1:
            return by_petname[0]
        if len(by_petname) > 1:
            raise Unresolved(self._ambiguous(f"{len(by_petname)} users are called {shown}", by_petname))
        if lowered and set(lowered) <= _ID_CHARS:
            by_prefix = sorted(u for u in ids if u.startswith(lowered))
            if len(by_prefix) == 1:
                return by_prefix[0]
            if len(by_prefix) > 1:
                raise Unresolved(self._ambiguous(f"{shown} matches {len(by_prefix)} users", by_prefix))
        by_claim = sorted(u for u, name in self.claims.items() if _fold(name) == folded)
        if len(by_claim) == 1:
            return by_claim[0]
        if len(by_claim) > 1:
            raise Unresolved(
                self._ambiguous(
                    f"{len(by_claim)} users call themselves {shown} (a name is only a claim;"
                    " use the id, or give one a name of your own with /name <id> <petname>)",
                    by_claim,
                )
            )
        raise Unresolved(f"no known user matches {shown} (/list shows who is online)", unknown=True)

    def _ambiguous(self, headline: str, candidates: list[str]) -> str:
        lines = [headline + ":"] + [f"  {one_line(self.tag(u), 100)}" for u in candidates[:20]]
        if len(candidates) > 20:
            lines.append(f"  ... and {len(candidates) - 20} more")
        return "\n".join(lines)

    def complete(self, prefix: str) -> list[str]:
        """Ids ``prefix`` may be completed to: ids starting with it, or whose name does."""
        lowered, folded = prefix.lower(), _fold(prefix)
        found = set()
        for user_id in self.ids():
            label = self.label(user_id)
            if user_id.startswith(lowered) or (folded and label and _fold(label).startswith(folded)):
                found.add(user_id)
        return sorted(found)


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()
