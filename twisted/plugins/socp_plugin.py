"""twistd plugin for the SOCP server: ``twistd -n socp --bind ws://HOST:PORT``.

Imported by every ``twistd`` run, so it imports nothing heavy.
"""

from twisted.application.service import ServiceMaker

socp = ServiceMaker(
    "SOCP server",
    "socp_tw.tap",
    "A Secure Overlay Chat Protocol v1.3 server (users and peer servers on one WebSocket port).",
    "socp",
)
