"""``socpctl``: ask or tell the running server something, like ``prosodyctl``.

It connects to ``<data-dir>/socpctl.sock`` (AMP over a UNIX socket, mode 0600) and prints the
answer as text, or as JSON with ``--json``.  Exit codes: 0 done, 1 the server said no or is
not there, 2 a usage error.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import time
from pathlib import Path
from typing import Any

from socp_tw.admin import SOCKET_NAME
from socp_tw.admin.commands import AdminError, DeleteUser, ForgetPeer, Kick, Peers, SetLogLevel, Status, Users

#: Seconds to wait for the server to accept and answer.
TIMEOUT = 10.0


class CtlError(Exception):
    """Why ``socpctl`` could not get an answer; printed as ``socpctl: <text>``."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="socpctl", description="Administer a running socp server.")
    p.add_argument(
        "--data-dir",
        "-d",
        default=os.environ.get("SOCP_DATA_DIR", "./socp-data"),
        help="the server's --data-dir (default: $SOCP_DATA_DIR or ./socp-data)",
    )
    p.add_argument("--json", action="store_true", help="print the server's answer as JSON")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("status", help="id, uptime, listen address, links, users, queues")
    users = sub.add_parser("users", help="users online here (--all: and every registered one)")
    users.add_argument("--all", action="store_true", help="also list every registered user")
    sub.add_parser("peers", help="known servers: key fingerprint, address, reachable, last seen")
    forget = sub.add_parser("forget-peer", help="stop redialling a server and unpin its key")
    forget.add_argument("server_id")
    kick = sub.add_parser("kick", help="close a user's connection")
    kick.add_argument("user_id")
    user = sub.add_parser("user", help="registered users: user delete <id>")
    user_sub = user.add_subparsers(dest="user_command", required=True, metavar="ACTION")
    delete = user_sub.add_parser("delete", help="delete a registered user (and kick them)")
    delete.add_argument("user_id")
    level = sub.add_parser("log-level", help="set the server's log level now")
    level.add_argument("level", choices=["debug", "info", "warn", "error", "critical"])
    return p


def command_of(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The AMP command and its arguments for parsed ``args``."""
    match args.command:
        case "status":
            return Status, {}
        case "users":
            return Users, {"all": args.all}
        case "peers":
            return Peers, {}
        case "forget-peer":
            return ForgetPeer, {"server_id": args.server_id}
        case "kick":
            return Kick, {"user_id": args.user_id}
        case "user":
            return DeleteUser, {"user_id": args.user_id}
        case "log-level":
            return SetLogLevel, {"level": args.level}
    raise AssertionError(args.command)


def socket_path(data_dir: str) -> Path:
    """The server's socket in ``data_dir``; :class:`CtlError` if none is there or it is not ours."""
    path = Path(data_dir).absolute() / SOCKET_NAME
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise CtlError(
            f"no server is running on {path.parent} (no {SOCKET_NAME} there; is --data-dir right?)"
        )
    except PermissionError:
        raise CtlError(f"cannot look into {path.parent}: permission denied (run as the server's user)")
    if not stat.S_ISSOCK(info.st_mode):
        raise CtlError(f"{path} is not a socket: not made by a socp server")
    uid = os.geteuid()
    if uid != 0 and info.st_uid != uid:
        raise CtlError(f"{path} belongs to uid {info.st_uid}, not to you: run as the server's user")
    return path


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def render(command: str, result: Any) -> str:
    """The text ``socpctl`` prints for ``result``."""
    if command == "status":
        lines = [
            f"server   {result['server_id']}  up {_ago(result['uptime_s'])}  on {result['listen']}"
            f" (advertised {result['advertise']})",
            f"users    {result['users']['local']} here, {result['users']['total']} on the network",
            "queues   signing {signing}, DMs awaiting ack {dm_awaiting_ack}, connections logging in"
            " {connections_pending}".format(**result["queues"]),
            f"links    {len(result['links'])}",
        ]
        for link in result["links"]:
            rtt = "n/a" if link["rtt_ms"] is None else f"{link['rtt_ms']} ms"
            heard = _ago(link["last_heard_s"])
            where = f"  {link['server_id']}  {link['direction']:8}  {link['state']:7}"
            lines.append(f"{where}  heard {heard} ago  rtt {rtt}")
        return "\n".join(lines)
    if command == "users":
        online = {u["user_id"] for u in result["online"]}
        lines = [f"{len(online)} online here"] + [
            f"  {u['user_id']}  from {u['peer']}" for u in result["online"]
        ]
        if "registered" in result:
            lines.append(f"{len(result['registered'])} registered")
            for u in result["registered"]:
                when = time.strftime("%Y-%m-%d", time.gmtime(u["created_ms"] / 1000))
                lines.append(
                    f"  {u['user_id']}  since {when}{'  (online)' if u['user_id'] in online else ''}"
                )
        return "\n".join(lines)
    if command == "peers":
        now = time.time()
        lines = [f"{len(result['peers'])} known servers"]
        for peer in result["peers"]:
            seen = peer["last_seen"]
            last = "now" if peer["reachable"] else ("unknown" if seen is None else f"{_ago(now - seen)} ago")
            lines.append(
                f"  {peer['server_id']}  {peer['fingerprint']}  {peer['address'] or '-':21}"
                f"  {'reachable' if peer['reachable'] else 'unreachable':11}  last seen {last}"
            )
        return "\n".join(lines)
    return " ".join(f"{k}: {v}" for k, v in result.items())


async def _ask(reactor: Any, path: Path, command: Any, arguments: dict[str, Any]) -> Any:
    from twisted.internet import endpoints
    from twisted.internet.error import ConnectError
    from twisted.protocols import amp

    endpoint = endpoints.UNIXClientEndpoint(reactor, str(path), timeout=TIMEOUT)
    try:
        protocol = await endpoints.connectProtocol(endpoint, amp.AMP())
    except ConnectError as e:
        reason = "it refused the connection" if "refused" in str(e).lower() else str(e)
        raise CtlError(f"no server is listening on {path} ({reason}; left by a server that stopped?)")
    try:
        answer = await protocol.callRemote(command, **arguments).addTimeout(TIMEOUT, reactor)
    finally:
        protocol.transport.loseConnection()
    return json.loads(answer["result"])


def main(argv: list[str] | None = None) -> None:
    """The ``socpctl`` console script."""
    args = parser().parse_args(argv)
    command, arguments = command_of(args)
    try:
        path = socket_path(args.data_dir)
    except CtlError as e:
        sys.exit(f"socpctl: {e}")

    from twisted.internet.defer import Deferred
    from twisted.internet.task import react

    async def run(reactor: Any) -> None:
        from twisted.internet.error import ConnectionDone, ConnectionLost, TimeoutError
        from twisted.protocols.amp import RemoteAmpError

        try:
            result = await _ask(reactor, path, command, arguments)
        except (CtlError, AdminError) as e:
            print(f"socpctl: {e}", file=sys.stderr)
            raise SystemExit(1) from None
        except TimeoutError:
            print(f"socpctl: the server did not answer within {TIMEOUT:g} s", file=sys.stderr)
            raise SystemExit(1) from None
        except (RemoteAmpError, ConnectionDone, ConnectionLost) as e:
            print(f"socpctl: the server could not answer ({e})", file=sys.stderr)
            raise SystemExit(1) from None
        print(json.dumps(result, indent=2) if args.json else render(args.command, result))

    react(lambda reactor: Deferred.fromCoroutine(run(reactor)))


if __name__ == "__main__":
    main()
