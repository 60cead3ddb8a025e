"""The server's side of ``socpctl``: the ``admin`` service, AMP on ``<data-dir>/socpctl.sock``.

The socket is created mode 0600, so only the user the server runs as (and root) may connect:
that is the whole access control.  A lock file next to it (Twisted's ``wantPID``) lets a
restart replace the socket a killed server left behind.  Every command answers JSON; the
command line formats it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.internet import endpoints
from twisted.internet.defer import maybeDeferred
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from socp_tw import crypto, wire
from socp_tw.admin import SOCKET_NAME
from socp_tw.admin.commands import (
    AdminError,
    DeleteUser,
    ForgetPeer,
    Kick,
    Peers,
    SetLogLevel,
    Status,
    Users,
)
from socp_tw.admin.peers import forget_server
from socp_tw.logs import LEVEL_NAMES, get_logger, set_log_level

#: WebSocket close code sent to a kicked user (1008: policy violation).
KICK_CLOSE_CODE = 1008

_log = get_logger("socp_tw.admin")


def _registered_users(txn) -> list[tuple[str, int]]:
    txn.execute("SELECT user_id, created_at FROM users WHERE pake_password IS NOT NULL ORDER BY user_id")
    return txn.fetchall()


def _delete_user(txn, user_id: str) -> int:
    txn.execute("DELETE FROM users WHERE user_id = ? AND pake_password IS NOT NULL", (user_id,))
    return txn.rowcount


class Admin:
    """What each command does, on the server's services (named as in ``makeService``)."""

    def __init__(self, services: dict[str, Any], clock: Any) -> None:
        self._s = services
        self._clock = clock
        self.started = clock.seconds()

    def status(self) -> dict[str, Any]:
        s, now = self._s, self._clock.seconds()
        mesh, listener = s["mesh"], s["listener"]
        links = []
        for server_id, state in sorted(mesh._by_server.items()):
            links.append(
                {
                    "server_id": server_id,
                    "direction": state.direction,
                    "state": "up" if state.healthy else "linking",
                    "last_heard_s": round(now - state.last_seen, 1) if state.last_seen else None,
                    "rtt_ms": _rtt_ms(state.link),
                }
            )
        local, total = s["presence"].counts()
        queue = getattr(s["workers"], "_jobs", None)
        return {
            "server_id": s["server_id"],
            "uptime_s": round(now - self.started, 1),
            "listen": listener.url,
            "advertise": "{}:{}".format(*mesh.advertised_address()),
            "links": links,
            "users": {"local": local, "total": total},
            "queues": {
                "signing": queue.qsize() if queue is not None else 0,
                "dm_awaiting_ack": len(s["router"].deliveries),
                "connections_pending": s["hub"].pending_links(),
            },
        }

    def users(self, everyone: bool) -> Any:
        online = [
            {"user_id": e.user_id, "peer": getattr(e.link, "peer", None)}
            for e in self._s["presence"].local_entries()
        ]
        if not everyone:
            return {"online": online}
        d = self._s["store"]._run(_registered_users)
        d.addCallback(
            lambda rows: {"online": online, "registered": [{"user_id": u, "created_ms": t} for u, t in rows]}
        )
        return d

    def peers(self) -> dict[str, Any]:
        mesh, sweeper = self._s["mesh"], self._s.get("sweeper")
        connected = set(mesh.connected_servers())
        seen = sweeper.seen if sweeper is not None else {}
        peers = []
        for server_id in mesh.known_servers():
            known = mesh._known[server_id]
            peers.append(
                {
                    "server_id": server_id,
                    "fingerprint": crypto.fingerprint(known.key),
                    "address": f"{known.host}:{known.port}" if known.host else None,
                    "reachable": server_id in connected,
                    "last_seen": seen.get(server_id),
                    "redialled": known.linked,
                }
            )
        forget_after = sweeper.forget_after if sweeper is not None else None
        return {"peers": peers, "forget_after_s": forget_after}

    def forget_peer(self, server_id: str) -> dict[str, Any]:
        if not forget_server(self._s["mesh"], server_id, "socpctl forget-peer"):
            raise AdminError(f"no known server {server_id}")
        sweeper = self._s.get("sweeper")
        if sweeper is not None:
            sweeper.seen.pop(server_id, None)
        return {"forgotten": server_id}

    def kick(self, user_id: str, why: str = "kicked by the server's operator") -> dict[str, Any]:
        link = self._s["presence"].local_link(user_id)
        if link is None:
            raise AdminError(f"user {user_id} is not logged in here")
        link.close(KICK_CLOSE_CODE, why)
        _log.warn("Kicked user {user} (socpctl)", user=user_id)
        return {"kicked": user_id}

    def delete_user(self, user_id: str) -> Any:
        if not wire.is_uuid4(user_id):
            raise AdminError(f"{user_id!r} is not a user id (UUID v4)")

        def deleted(count: int) -> dict[str, Any]:
            if not count:
                raise AdminError(f"no user {user_id} is registered here")
            self._s["user_keys"]._pins.pop(user_id.lower(), None)
            online = self._s["presence"].local_link(user_id) is not None
            if online:
                self.kick(user_id, "account deleted by the server's operator")
            _log.warn("Deleted user {user} (socpctl)", user=user_id)
            return {"deleted": user_id, "was_online": online}

        return self._s["store"]._run(_delete_user, user_id).addCallback(deleted)

    def set_log_level(self, level: str) -> dict[str, Any]:
        if level not in LEVEL_NAMES:
            raise AdminError(f"level must be one of {', '.join(LEVEL_NAMES)}")
        set_log_level(level)
        _log.warn("Log level set to {new_level} (socpctl)", new_level=level)
        return {"log_level": level}


def _unexpected(failure: Any) -> None:
    """A command that failed for a reason of ours: logged, and told to socpctl in one line."""
    if failure.check(AdminError):
        return failure
    _log.failure("socpctl command failed", failure)
    raise AdminError(f"the server failed: {failure.getErrorMessage() or failure.type.__name__}")


def _answer(f: Any, *args: Any) -> Any:
    """``f(*args)``'s value (or Deferred value) as the command's JSON ``result``."""
    return maybeDeferred(f, *args).addCallbacks(lambda value: {"result": json.dumps(value)}, _unexpected)


class AdminProtocol(amp.AMP):
    """One ``socpctl`` connection."""

    def __init__(self, admin: Admin) -> None:
        super().__init__()
        self._admin = admin

    def makeConnection(self, transport: Any) -> None:
        """As AMP's, without its two log lines per connection (one per ``socpctl`` run)."""
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Any) -> None:
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None

    @Status.responder
    def _status(self):
        return _answer(self._admin.status)

    @Users.responder
    def _users(self, all: bool):
        return _answer(self._admin.users, all)

    @Peers.responder
    def _peers(self):
        return _answer(self._admin.peers)

    @ForgetPeer.responder
    def _forget(self, server_id: str):
        return _answer(self._admin.forget_peer, server_id)

    @Kick.responder
    def _kick(self, user_id: str):
        return _answer(self._admin.kick, user_id)

    @DeleteUser.responder
    def _delete(self, user_id: str):
        return _answer(self._admin.delete_user, user_id)

    @SetLogLevel.responder
    def _log_level(self, level: str):
        return _answer(self._admin.set_log_level, level)


#: Longest AF_UNIX socket path Linux takes (sun_path is 108 bytes, with its NUL).
MAX_SOCKET_PATH = 107


class AdminService(StreamServerEndpointService):
    """The ``admin`` service: the AMP socket, created mode 0600 in the data dir.

    A data dir whose socket path is too long for AF_UNIX (deep test directories) gets no
    socket, with a warning: the server runs, ``socpctl`` cannot reach it.
    """

    name = "admin"

    def __init__(self, reactor: Any, data_dir: str | Path, admin: Admin) -> None:
        self.path = Path(data_dir).absolute() / SOCKET_NAME
        endpoint = endpoints.UNIXServerEndpoint(reactor, str(self.path), mode=0o600, wantPID=True)
        factory = Factory.forProtocol(lambda: AdminProtocol(admin))
        factory.noisy = False
        super().__init__(endpoint, factory)
        self._raiseSynchronously = True
        self.admin = admin

    def privilegedStartService(self) -> None:
        if len(bytes(self.path)) > MAX_SOCKET_PATH:
            _log.warn("No socpctl socket: {path} is too long for a UNIX socket", path=str(self.path))
            return
        super().privilegedStartService()

    def startService(self) -> None:
        if len(bytes(self.path)) > MAX_SOCKET_PATH:
            self.running = True
            return
        super().startService()

    def stopService(self) -> Any:
        if self._waitingForPort is None:  # never listened
            self.running = False
            return None
        return super().stopService()


def _rtt_ms(link: Any) -> float | None:
    """The link's last WebSocket ping round trip in ms (pinged once per heartbeat), or None."""
    rtt = getattr(link, "rtt", None)
    return None if rtt is None else round(rtt * 1000, 1)
