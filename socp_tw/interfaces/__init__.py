"""The contracts between socp-tw's services.

Services receive their collaborators typed by these interfaces and adapt them with
``IFoo(obj)``, so a swapped argument fails loudly.  ``socp_tw.testing`` ships an
in-memory fake of each, checked by the same contract tests as the real thing.
"""

from __future__ import annotations

from socp_tw.interfaces.core import IHub, ILink, ILinkHandler, ISigner, IWorkers
from socp_tw.interfaces.mesh import IDialer, IOutgoingLinkOwner, IOutgoingLinks, IPeerLinkEvents, IPeerLinks
from socp_tw.interfaces.presence import IPresence, IPresenceObserver, NameInUse
from socp_tw.interfaces.routing import IHeldMessages, IRouter, Unverified, UserNotFound
from socp_tw.interfaces.store import IStore
from socp_tw.interfaces.users import IUserFrames, IUserKeys

__all__ = [
    "IDialer",
    "IHeldMessages",
    "IHub",
    "ILink",
    "ILinkHandler",
    "IOutgoingLinkOwner",
    "IOutgoingLinks",
    "IPeerLinkEvents",
    "IPeerLinks",
    "IPresence",
    "IPresenceObserver",
    "IRouter",
    "ISigner",
    "IStore",
    "IUserFrames",
    "IUserKeys",
    "IWorkers",
    "NameInUse",
    "Unverified",
    "UserNotFound",
]
