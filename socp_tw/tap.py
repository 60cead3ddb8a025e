"""``twistd socp``: command-line options and the service graph of a SOCP server.

``Options`` (:mod:`socp_tw.options`) validates and turns values into settings; ``makeService``
only wires. It returns a :class:`MultiService` whose children start in dependency
order (workers, store, hub, presence, mesh, router, users, files, listener, status,
outgoing, public) and so stop in reverse: the public channel reports its users' leaves while the
server links are up, then outgoing links and the listener close before the services they feed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from twisted.application.service import MultiService

from socp_tw.admin.peers import PeerSweeper
from socp_tw.admin.server import Admin, AdminService
from socp_tw.gcpolicy import CollectorPolicy
from socp_tw.identity import IdentityError, load_or_create_identity
from socp_tw.limits import Limits
from socp_tw.listener import BindAddress, make_listener
from socp_tw.logs import set_log_level
from socp_tw.memory import MemoryTrimmer
from socp_tw.ops import startup
from socp_tw.ops.sdnotify import SystemdNotifier
from socp_tw.options import PIDFILE, Options
from socp_tw.protocols.peer import PeerClientFactory
from socp_tw.protocols.websocket import SOCPServerFactory
from socp_tw.services.files import FileRelay
from socp_tw.services.holding import HeldMessages, SQLHeldQueue, read_held_summary
from socp_tw.services.hub import Hub
from socp_tw.services.mesh import Mesh, OutgoingLinks, PinStoreError
from socp_tw.services.presence import Presence
from socp_tw.services.public import PublicChannel
from socp_tw.services.router import Router
from socp_tw.services.status import StatusReporter
from socp_tw.services.store import DB_FILE, SQLiteStore, StoreError, read_user_keys
from socp_tw.services.userkeys import UserKeys
from socp_tw.services.users import UserSide
from socp_tw.signer import FrameSigner
from socp_tw.workers import ThreadPoolWorkers


@contextmanager
def _exit_on(*errors: type[Exception], what: str = "") -> Iterator[None]:
    """Turn ``errors`` into a start-up stop, ``socp: <what><error>`` with no traceback."""
    try:
        yield
    except errors as e:
        raise SystemExit(f"socp: {what}{e}") from None


def makeService(config: Options, reactor=None) -> MultiService:
    """Build the server's service graph from parsed ``config``."""
    if reactor is None:
        from twisted.internet import reactor
    set_log_level(config["log-level"])
    data_dir = Path(config["data-dir"])
    if getattr(config, "parent", None) is not None:  # a real twistd start: is the port free?
        with _exit_on(startup.StartupError):
            startup.check_can_listen(config["bind_address"])
            if config.get("metrics_address") is not None:
                startup.check_can_listen(config["metrics_address"], what="--metrics")
    with _exit_on(IdentityError, OSError):
        identity = load_or_create_identity(data_dir, config["server-id"])
    limits: Limits = config["limits"]

    top = MultiService()
    workers = ThreadPoolWorkers(reactor=reactor)
    workers.setServiceParent(top)
    # Migrates the schema now, before anything listens (see socp_tw.services.store).
    with _exit_on(StoreError, OSError, what="database: "):
        store = SQLiteStore(data_dir / DB_FILE, reactor=reactor)
    store.setServiceParent(top)
    user_keys = UserKeys(store, read_user_keys(store.path), max_gossip_pins=limits.max_gossip_user_pins)
    user_keys.setServiceParent(top)
    signer = FrameSigner(identity, workers)
    hub = Hub(signer, clock=reactor, limits=limits)
    hub.setServiceParent(top)
    presence = Presence(identity.server_id, max_remote_users=limits.max_remote_users)
    presence.setServiceParent(top)
    address: BindAddress = config["bind_address"]
    # Port 0 (tests) is only known once listening; the listener sets the URL then.
    factory = SOCPServerFactory(
        address.url() if address.port else None, hub, max_frame_bytes=config["max-frame-bytes"], limits=limits
    )
    listener = make_listener(
        reactor,
        address,
        factory,
        identity.server_id,
        tls_context=config["tls_context"],
        advertise=config["advertise_address"],
    )
    with _exit_on(PinStoreError):
        mesh = Mesh(
            signer,
            hub,
            presence,
            reactor=reactor,
            data_dir=data_dir,
            peers=config["peer_addresses"],
            bootstrap=config["bootstrap_entries"],
            advertise=listener.advertised,
            workers=workers,
            seen_max=limits.seen_ids_max,
            seen_max_age=limits.seen_ids_ttl,
            forged_limit=limits.forged_limit,
            forged_window=limits.forged_window,
            limits=limits,
            user_keys=user_keys,
        )
    mesh.setServiceParent(top)
    holding = HeldMessages(
        presence,
        mesh,
        signer,
        user_keys,
        reactor,
        SQLHeldQueue(store.run_interaction),
        summary=read_held_summary(store.path),
        hold_for=config["hold-days"] * 86400,
    )
    holding.setServiceParent(top)
    router = Router(
        presence,
        signer,
        mesh,
        ts_window=limits.ts_window,
        now_ms=lambda: int(reactor.seconds() * 1000),
        user_keys=user_keys,
        clock=reactor,
        delivery_timeout=limits.delivery_timeout,
        max_pending_deliveries=limits.max_pending_deliveries,
        holding=holding,
    )
    router.setServiceParent(top)
    users = UserSide(
        hub, presence, router, store, signer, workers, clock=reactor, limits=limits, user_keys=user_keys
    )
    users.setServiceParent(top)
    public = PublicChannel(
        store, presence, mesh, router, users, signer, workers, clock=reactor, user_keys=user_keys
    )
    files = FileRelay(
        users,
        presence,
        router,
        workers,
        mesh,
        clock=reactor,
        limits=limits,
        max_file_bytes=config["max-file-bytes"],
    )
    files.setServiceParent(top)
    listener.setServiceParent(top)
    StatusReporter(mesh, presence, config["status-interval"], clock=reactor).setServiceParent(top)
    if config["memory-trim-interval"] > 0:
        MemoryTrimmer(clock=reactor, interval=config["memory-trim-interval"]).setServiceParent(top)
    if config["gc-thaw-interval"] > 0:
        thaw = config["gc-thaw-interval"]
        CollectorPolicy(lambda: presence.counts()[0], reactor, thaw_interval=thaw).setServiceParent(top)
    # Outgoing links start once the listener knows its port (we announce it) and stop first.
    OutgoingLinks(
        mesh,
        reactor,
        client_factory=PeerClientFactory,
        max_frame_bytes=config["max-frame-bytes"],
        tls_policy=config["peer_tls"],
        limits=limits,
    ).setServiceParent(top)
    # Last, so it stops first: its users' leaves go out while every server link is still up.
    public.setServiceParent(top)
    # Operator access, after public: started last, stopped first (socp_tw.ops, socp_tw.admin).
    services = dict(hub=hub, mesh=mesh, presence=presence, users=users, router=router, files=files)
    services.update(public=public, workers=workers, signer=signer, store=store, listener=listener)
    services.update(user_keys=user_keys, holding=holding, server_id=identity.server_id)
    if config["forget-after"] > 0:
        services["sweeper"] = PeerSweeper(mesh, data_dir, config["forget-after"], reactor)
        services["sweeper"].setServiceParent(top)
    AdminService(reactor, data_dir, Admin(services, reactor)).setServiceParent(top)
    if config["metrics"] is not None:
        from socp_tw.ops.http import make_metrics_service

        make_metrics_service(reactor, config["metrics"], services).setServiceParent(top)
    # Last: READY=1 once everything has started, STOPPING=1 before anything stops.
    SystemdNotifier(listener, reactor).setServiceParent(top)  # nothing without $NOTIFY_SOCKET
    top.identity = identity
    return top


__all__ = ["PIDFILE", "Options", "makeService"]
