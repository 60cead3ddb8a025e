"""User frames forwarded under the user's own id (docs/INTEROP.md row 10).

Some servers forward a user's frame with ``from`` = the *user's* id: a ``SERVER_DELIVER``
whose payload nests the user's whole original envelope plus ``user_id``, or the raw
``MSG_PUBLIC_CHANNEL``.  No server key is pinned for a user id, so the frame can only be
the server's at the other end of the link it came on: it is accepted only if that server's
pinned key verifies it, then read as the SERVER_DELIVER of our profile from that server, so
the router's checks (content_sig by the sender's key, the user key pin, the ts window) and
its answers (to that server) are the usual ones.
"""

from __future__ import annotations

from typing import Any

from socp_tw import wire
from socp_tw.content import USER_CONTENT_FIELDS
from socp_tw.services.mesh.seen import SeenCache
from socp_tw.services.mesh.state import _LinkState

#: Frame types a peer may send under a user's id.
USER_FROM_TYPES = frozenset({"SERVER_DELIVER", "MSG_PUBLIC_CHANNEL"})


def as_delivery(envelope: wire.Envelope, via: str, here: str) -> wire.Envelope:
    """The SERVER_DELIVER from ``via`` that ``envelope`` (``from`` = a user id) stands for."""
    payload = envelope.payload
    if envelope.type == "SERVER_DELIVER":
        nested = payload.get("envelope")
        inner: dict[str, Any] = nested if isinstance(nested, dict) else payload
        fields = inner.get("payload")
        if not isinstance(fields, dict):
            raise wire.MissingField(
                "a SERVER_DELIVER from a user id must nest the user's envelope", "payload"
            )
        kind = inner.get("type", "MSG_DIRECT")
        sender = inner.get("from", envelope.from_)
        ts = inner.get("ts", envelope.ts)
        recipient = payload.get("user_id", inner.get("to"))
    else:
        fields, kind, sender, ts, recipient = payload, envelope.type, envelope.from_, envelope.ts, envelope.to
    if not isinstance(kind, str) or kind not in USER_CONTENT_FIELDS:
        raise wire.BadFieldType(f"nested frame type {str(kind)[:32]!r} is not user content", "type")
    if sender != envelope.from_:
        raise wire.BadFieldType("the nested envelope's 'from' is not the frame's 'from'", "from")
    if isinstance(ts, float) and ts.is_integer():
        ts = int(ts)
    if isinstance(ts, bool) or not isinstance(ts, int):
        raise wire.BadFieldType("the nested envelope's 'ts' must be an integer", "ts")
    if not wire.is_uuid(recipient):
        raise wire.BadUUID("the recipient must be a user id", "user_id")
    flat = {k: v for k, v in fields.items() if k not in ("user_id", "sender", "type")}
    flat.update(user_id=recipient, sender=sender)
    if kind != "MSG_DIRECT":
        flat["type"] = kind
    return wire.Envelope("SERVER_DELIVER", via, here, ts, flat, "")


class UserFrom:
    """Mesh part: frames whose ``from`` is a user id, attributed to the link's server."""

    def _user_from(self, state: _LinkState, envelope: wire.Envelope, body: bytes | None) -> None:
        via = state.server_id
        known = self._known.get(via) if via is not None else None
        if known is None or "SERVER_DELIVER" not in self._handlers:
            self.counters["dropped.unknown_origin"] += 1
            return
        if body is None:
            body = wire.canonical(envelope.payload)
        seen_key = SeenCache.key(envelope, body)
        if seen_key in self._seen:
            self.counters["dropped.duplicate"] += 1
            return
        if not self._verify(state, envelope, known.key, body):  # the link's server key, or nothing
            return
        self._seen.add(seen_key)
        try:
            delivery = as_delivery(envelope, via, self.server_id)
        except wire.FrameError as e:
            self.counters["dropped.user_from"] += 1
            count = self._refusals.hit(("user-from-bad", via))
            if count is not None:
                self._log.warn(
                    "Dropped {type} from user {user} forwarded by server {via}: {detail}"
                    " ({count} in the last minute)",
                    type=envelope.type,
                    user=envelope.from_,
                    via=via,
                    detail=e.detail,
                    count=count,
                )
            return
        self.counters["user_from.attributed"] += 1
        if self._refusals.hit(("user-from", via)) is not None:
            self._log.info(
                "Server {via} forwards user frames under the user's id ({type} from {user}):"
                " read as its SERVER_DELIVER, verified with its key",
                via=via,
                type=envelope.type,
                user=envelope.from_,
            )
        self._routed(state, delivery)
