"""Autobahn's per-connection debug text is built only if a debug event is written."""

from __future__ import annotations

import pprint

import autobahn.util
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from socp_tw.protocols.lazydebug import LazyText
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
        event = {"log_format": "\n{attrs}", "attrs": LazyText(pprint.pformat, attrs)}
        self.assertEqual(formatEvent(event), "\n" + pprint.pformat(attrs))
        self.assertEqual(str(LazyText(pprint.pformat, attrs)), pprint.pformat(attrs))

    def test_no_name_is_styled_for_a_read(self) -> None:
        """``hltype``/``hlval`` (autobahn.util) ran on every read for a debug line."""
        calls: list[object] = []
        protocol, _ = open_server_link(self, Hub(NeverSigner()))
        original = autobahn.util._qn

        def counting(obj):
            calls.append(obj)
            return original(obj)

        self.patch(autobahn.util, "_qn", counting)
        protocol.dataReceived(b"\x81\x80" + b"\x00" * 4)  # an empty masked text frame
        protocol.connectionLost(Failure(ConnectionError("test over")))
        self.assertEqual(calls, [])
