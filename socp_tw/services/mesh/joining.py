"""Joining the mesh, the dialler's side: the first frame of an outgoing link (JOIN or LINK), the
introducer's SERVER_WELCOME, learning its key in band, id adoption.  The accepting side of the
same exchange is ``handshake.py``."""

from __future__ import annotations

from typing import Any

from socp_tw import crypto, wire
from socp_tw.interfaces import IDialer, ILink
from socp_tw.services.mesh.state import (
    CLOSE_POLICY,
    MAX_KNOWN_SERVERS,
    KeyRefused,
    _host_port,
    _LinkState,
    _note_ext,
    _parse_address_payload,
    envelope_list,
)
from socp_tw.transport.fanout import send_to_all


class Joining:
    """Mixin of :class:`~socp_tw.services.mesh.service.Mesh`: the links it dials, until identified."""

    def join(self, host: str, port: int) -> IDialer:
        """Join (or re-join) the mesh through the introducer at ``host:port``, now."""
        dialer = self._outgoing.dialer(host, port, server_id=None, join=True)
        self._introducers.append(dialer)
        dialer.resume()
        return dialer

    def outgoing_opened(self, link: ILink, dialer: IDialer) -> None:
        """An outgoing WebSocket opened: identify ourselves (JOIN or LINK)."""
        now = self._clock.seconds()
        state = _LinkState(link, dialer, last_seen=now)
        self._links[link.link_id] = state
        link.role = "server"
        self._log.info("Connected to peer {url}", url=dialer.url)
        if dialer.server_id is None or dialer.join:
            state.joining = True
            payload = self._address_payload(dialer.server_id, dialer.pem)
            link.send(self._signer.frame("SERVER_HELLO_JOIN", _host_port(dialer.host, dialer.port), payload))
            self._arm_dead_timer(state)
            return
        link.identity = dialer.server_id
        state.opened_with = (
            "SERVER_ANNOUNCE" if getattr(dialer, "announce_first", False) else "SERVER_HELLO_LINK"
        )
        to = "*" if state.opened_with == "SERVER_ANNOUNCE" else dialer.server_id
        link.send(self._signer.frame(state.opened_with, to, self._address_payload(dialer.server_id)))
        self._link_up(state, dialer.server_id)

    def _never_answered(self, state: _LinkState, reason: str | None) -> None:
        """An outgoing link closed before any verified frame of the peer: it may not know our
        first frame.  Some servers do not know SERVER_HELLO_LINK and expect SERVER_ANNOUNCE, a
        third refuses exactly that (docs/INTEROP.md row 11): the next dial opens with the other."""
        dialer = state.dialer
        if dialer is None or state.joining or state.healthy or state.opened_with is None:
            return
        dialer.announce_first = state.opened_with == "SERVER_HELLO_LINK"
        self.counters["link.first_frame_switched"] += 1
        self._log.info(
            "Server {server_id} never answered our {first} ({reason}): the next dial opens with {other}",
            server_id=state.server_id,
            first=state.opened_with,
            reason=reason or "closed",
            other="SERVER_ANNOUNCE" if dialer.announce_first else "SERVER_HELLO_LINK",
        )

    def _joining_frame(self, state: _LinkState, envelope: wire.Envelope) -> None:
        if envelope.type == "SERVER_WELCOME":
            self._welcome(state, envelope)
        elif envelope.type == "SERVER_ANNOUNCE" and state.pending_welcome is not None:
            self._introducer_announced(state, envelope)
        elif envelope.type == "ERROR":
            payload = envelope.payload
            self._log.warn(
                "Introducer {url} answered ERROR {code}: {detail}",
                url=state.dialer.url,
                code=str(payload.get("code"))[:64],
                detail=str(payload.get("detail"))[:200],
            )
        elif envelope.type == "CTRL_CLOSE":
            self._close_later(state, "CTRL_CLOSE")
        else:
            self.counters["dropped.before_welcome"] += 1

    def _welcome_entries(self, payload: dict[str, Any]) -> list[tuple[str, str, int, str]]:
        """(server_id, host, port, pubkey) of both lists of a SERVER_WELCOME, malformed entries skipped."""
        entries: dict[str, tuple[str, str, int, str]] = {}
        for list_name, id_field in (("servers", "server_id"), ("clients", "user_id")):
            items = envelope_list(payload, list_name)
            for item in items[:MAX_KNOWN_SERVERS]:
                try:
                    server_id = wire.require_uuid(item, id_field)
                    host, port, key_text = _parse_address_payload(item)
                except (wire.FrameError, AttributeError, TypeError):
                    self.counters["welcome.bad_entry"] += 1
                    continue
                entries.setdefault(server_id, (server_id, host, port, key_text))
        return list(entries.values())

    def _ask_introducer_key(self, state: _LinkState, envelope: wire.Envelope) -> None:
        """A signed WELCOME that names no key of its introducer (docs/INTEROP.md row 8): keep it,
        and ask for the key in band: that server answers SERVER_HELLO_LINK with a signed
        SERVER_ANNOUNCE carrying its key, against which the kept WELCOME is then checked."""
        state.pending_welcome = envelope
        self.counters["welcome.key_asked"] += 1
        self._log.info(
            "SERVER_WELCOME from {url} carries no key of its server: asking for it with SERVER_HELLO_LINK",
            url=state.dialer.url,
        )
        payload = self._address_payload(envelope.from_, state.dialer.pem)
        state.link.send(self._signer.frame("SERVER_HELLO_LINK", envelope.from_, payload))

    def _introducer_announced(self, state: _LinkState, envelope: wire.Envelope) -> None:
        welcome, state.pending_welcome = state.pending_welcome, None
        try:
            if envelope.from_ != welcome.from_:
                raise KeyRefused("BAD_FRAME", "the SERVER_ANNOUNCE is from another server than the WELCOME")
            _, _, key_text = _parse_address_payload(envelope.payload)
            key = crypto.load_public_key(key_text)
            if not crypto.verify_payload(key, envelope.payload, envelope.sig):
                raise KeyRefused("INVALID_SIG", "its SERVER_ANNOUNCE is not signed by the key it carries")
        except (wire.FrameError, KeyRefused) as e:
            self.counters["welcome.refused"] += 1
            state.welcome_refused = e.detail
            self._log.error(
                "Refused SERVER_WELCOME from {url}: {detail}", url=state.dialer.url, detail=e.detail
            )
            state.link.close(CLOSE_POLICY, e.detail[:120])
            return
        self._welcome(state, welcome, key_text)

    def _welcome(self, state: _LinkState, envelope: wire.Envelope, learnt_key: str | None = None) -> None:
        dialer = state.dialer
        introducer = envelope.from_
        payload = envelope.payload
        if not wire.is_uuid(introducer) or introducer == self.server_id:
            self._log.error(
                "Peer {url} is this server itself (or sent a bad SERVER_WELCOME id): not joining through it",
                url=dialer.url,
            )
            self._outgoing.remove(dialer)
            self._forget_introducer(dialer)
            state.link.close(CLOSE_POLICY, "not a valid introducer")
            return
        entries = self._welcome_entries(payload)
        own_entry = next((e for e in entries if e[0] == introducer), None)
        offered_text = payload.get("server_pub") if isinstance(payload.get("server_pub"), str) else None
        if offered_text is None and own_entry is not None:
            offered_text = own_entry[3]
        if offered_text is None:
            offered_text = learnt_key
        if offered_text is None and envelope.sig and self._known.get(introducer) is None:
            if self._boot_keys.get((dialer.host, dialer.port)) is None:
                self._ask_introducer_key(state, envelope)
                return
        address = (own_entry[1], own_entry[2]) if own_entry is not None else (dialer.host, dialer.port)
        try:
            known = self._known.get(introducer)
            expected = known.pubkey if known is not None else self._boot_keys.get((dialer.host, dialer.port))
            if offered_text is None and expected is None:
                raise KeyRefused("BAD_KEY", "SERVER_WELCOME does not carry the introducer's key")
            key_text = offered_text if offered_text is not None else expected
            key, _ = self._check_key(introducer, key_text, "SERVER_WELCOME", (dialer.host, dialer.port))
            if not envelope.sig:
                # Some servers never sign their WELCOME (docs/INTEROP.md row 7): accepted when its
                # own entry carries exactly the pinned key (or none is pinned yet); _check_key has
                # refused any other key, and every later frame on the link is verified with it.
                if offered_text is None:
                    raise KeyRefused("INVALID_SIG", "SERVER_WELCOME has no signature and carries no key")
                self.counters["welcome.unsigned"] += 1
                self._log.info(
                    "SERVER_WELCOME from {url} has no signature: accepted, it carries {which} key",
                    url=dialer.url,
                    which="the pinned" if expected is not None else "its (now pinned)",
                )
            elif not crypto.verify_payload(key, payload, envelope.sig):
                raise KeyRefused("INVALID_SIG", "SERVER_WELCOME signature does not verify")
            known = self._remember(introducer, key, key_text, address, "SERVER_WELCOME", linked=True)
            own_item = next(
                (
                    item
                    for item in envelope_list(payload, "servers")
                    if isinstance(item, dict) and item.get("server_id") == introducer
                ),
                {},
            )
            _note_ext(known, own_item)
        except KeyRefused as e:
            self.counters["welcome.refused"] += 1
            state.welcome_refused = e.detail
            self._log.error("Refused SERVER_WELCOME from {url}: {detail}", url=dialer.url, detail=e.detail)
            state.link.close(CLOSE_POLICY, e.detail[:120])
            return
        assigned = payload.get("assigned_id")
        if wire.is_uuid(assigned) and assigned != self.server_id:
            self._adopt_id(assigned, introducer)
        elif assigned is not None and not wire.is_uuid(assigned):
            self._log.warn("Ignored invalid assigned_id from introducer {server_id}", server_id=introducer)
        state.joining = False
        state.healthy = True
        dialer.server_id = introducer
        dialer.join = False
        dialer.mark_healthy()
        state.link.identity = introducer
        existing = self._by_server.get(introducer)
        if existing is not None and existing.link.outgoing:
            # We already dialled the introducer by another address: keep that link, drop this one.
            self._forget_introducer(dialer)
            self._close_state(state, "duplicate link")
            self._outgoing.remove(dialer)
        else:
            self._adopt_dialer(dialer, introducer)
            self._link_up(state, introducer)
        listed = 0
        for server_id, host, port, key_text in entries:
            if server_id in (introducer, self.server_id):
                continue
            try:
                key, _ = self._check_key(
                    server_id, key_text, f"SERVER_WELCOME from {introducer}", (host, port)
                )
                self._remember(server_id, key, key_text, (host, port), f"SERVER_WELCOME from {introducer}")
            except KeyRefused:
                self.counters["welcome.refused_entry"] += 1
                continue
            listed += 1
            self._want_link(server_id)
        self._log.info(
            "Joined the mesh through {introducer} ({url}); {count} other servers listed",
            introducer=introducer,
            url=dialer.url,
            count=listed,
        )
        self._announce_self()

    def _announce_self(self) -> None:
        """SERVER_ANNOUNCE to every link, our key in the encoding of each peer's own key (§8:
        a PEM-only peer cannot verify a DER key): one frame per encoding, at most two signatures."""
        by_encoding: dict[bool, list[ILink]] = {}
        for server_id, state in self._by_server.items():
            known = self._known.get(server_id)
            by_encoding.setdefault(known is not None and known.pem, []).append(state.link)
        for pem, links in sorted(by_encoding.items()):
            send_to_all(links, self._signer.frame("SERVER_ANNOUNCE", "*", self._address_payload(pem=pem)))

    def _adopt_id(self, assigned: str, introducer: str) -> None:
        old = self.server_id
        self._log.warn(
            "Introducer {introducer} assigned us the id {assigned} instead of {old}: using it until restart",
            introducer=introducer,
            assigned=assigned,
            old=old,
        )
        self._signer.server_id = assigned
        rename = getattr(self._presence, "rename_server", None)
        if rename is not None:
            rename(assigned)
        else:
            self._presence.server_id = assigned

    def _forget_introducer(self, dialer: IDialer) -> None:
        if dialer in self._introducers:
            self._introducers.remove(dialer)

    def _adopt_dialer(self, dialer: IDialer, server_id: str) -> None:
        """An introducer's dialer now knows its server: it becomes that server's dialer."""
        self._forget_introducer(dialer)
        previous = self._dialers.get(server_id)
        if previous is not None and previous is not dialer:
            self._outgoing.remove(previous)
        self._dialers[server_id] = dialer
