"""Sending on links, shared by the protocols and the services (neither imports the other).

:mod:`.sender` (:class:`OrderedSender`: frames leave in call order, signed or not yet,
and wait while the transport is full), :mod:`.fanout` (one frame signed once, sent on
many links), :mod:`.backlog` (:func:`send_backlog`: bytes a link has not yet handed to
the kernel).  Nothing here imports ``socp_tw.protocols`` or ``socp_tw.services``.
"""

from socp_tw.transport.backlog import send_backlog
from socp_tw.transport.fanout import copies_of, send_to_all, sign_for_all
from socp_tw.transport.sender import OrderedSender

__all__ = ["OrderedSender", "copies_of", "send_backlog", "send_to_all", "sign_for_all"]
