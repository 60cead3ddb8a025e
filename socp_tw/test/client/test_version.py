"""``socp-client --version`` and ``twistd socp --version`` print socp-tw's version."""

from __future__ import annotations

import io
import sys

from twisted.trial.unittest import SynchronousTestCase

from socp_tw import __version__


class VersionTests(SynchronousTestCase):
    def _version_of(self, options) -> str:
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        with self.assertRaises(SystemExit) as caught:
            options.parseOptions(["--version"])
        self.assertEqual(caught.exception.code, 0)
        return out.getvalue()

    def test_client(self) -> None:
        from socp_tw.client.options import Options

        self.assertEqual(self._version_of(Options()), f"socp-client (socp-tw) {__version__}\n")

    def test_twistd_socp(self) -> None:
        from socp_tw.tap import Options

        self.assertEqual(self._version_of(Options()), f"twistd socp (socp-tw) {__version__}\n")
