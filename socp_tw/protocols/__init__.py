"""The WebSocket protocols: users and servers on our port, our links to other servers."""

from socp_tw.protocols import lazydebug

lazydebug.install()
