"""Autobahn's per-connection debug text is built only if a debug event is written."""

from __future__ import annotations

import pprint

from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase

from socp_tw.protocols.lazydebug import LazyPformat
from socp_tw.services.hub import Hub
from socp_tw.test.servers import open_server_link
from socp_tw.testing import NeverSigner


class LazyDebugTests(SynchronousTestCase):
    def test_a_connection_formats_nothing(self) -> None:
        calls: list[object] = []
        original = pprint.PrettyPrinter.pformat  # what every pprint.pformat reference ends in

        def counting(printer, obj):
            calls.append(obj)
            return original(printer, obj)

        self.patch(pprint.PrettyPrinter, "pformat", counting)
        open_server_link(self, Hub(NeverSigner()))
        self.assertEqual(calls, [])

    def test_the_text_is_the_same_when_written(self) -> None:
        attrs = [("openHandshakeTimeout", 5), ("allowedOrigins", ["*"])]
        event = {"log_format": "\n{attrs}", "attrs": LazyPformat(attrs)}
        self.assertEqual(formatEvent(event), "\n" + pprint.pformat(attrs))
        self.assertEqual(str(LazyPformat(attrs)), pprint.pformat(attrs))
