"""The AMP commands ``socpctl`` sends.  Each answers one JSON document (``result``) or fails
with ``ADMIN_ERROR`` and a sentence saying why (an unknown user, a bad level, ...)."""

from __future__ import annotations

from twisted.protocols import amp


class AdminError(Exception):
    """The command was understood but cannot be done; the text is shown to the operator."""


_ERRORS = {AdminError: b"ADMIN_ERROR"}
_RESULT = [(b"result", amp.Unicode())]


class Status(amp.Command):
    arguments: list = []
    response = _RESULT
    errors = _ERRORS


class Users(amp.Command):
    arguments = [(b"all", amp.Boolean())]
    response = _RESULT
    errors = _ERRORS


class Peers(amp.Command):
    arguments: list = []
    response = _RESULT
    errors = _ERRORS


class ForgetPeer(amp.Command):
    arguments = [(b"server_id", amp.Unicode())]
    response = _RESULT
    errors = _ERRORS


class Kick(amp.Command):
    arguments = [(b"user_id", amp.Unicode())]
    response = _RESULT
    errors = _ERRORS


class DeleteUser(amp.Command):
    arguments = [(b"user_id", amp.Unicode())]
    response = _RESULT
    errors = _ERRORS


class SetLogLevel(amp.Command):
    arguments = [(b"level", amp.Unicode())]
    response = _RESULT
    errors = _ERRORS
