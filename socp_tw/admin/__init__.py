"""``socpctl``: the operator's command line, talking to the running server over AMP on a UNIX socket.

:mod:`.commands` is the wire contract, :mod:`.server` the server's side (the ``admin`` service),
:mod:`.peers` forgetting servers (by hand or after ``--forget-after``), :mod:`.ctl` the command.
"""

#: The socket's name in the data dir (mode 0600: only the server's own user may administer it).
SOCKET_NAME = "socpctl.sock"
