"""What the user sees of a transfer: progress lines, names, the /file command."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from socp_tw import wire
from socp_tw.client.files import CHUNK_BYTES, Progress, display_name
from socp_tw.test.client.files.fakes import ClientFilesBase


class ProgressTests(ClientFilesBase):
    interactive = True

    def test_progress_line_on_a_terminal(self) -> None:
        progress = Progress(self.ui, self.clock, "[FILE] sending a.bin", 10 * 1024)
        progress.update(0, force=True)
        self.clock.advance(2)
        progress.update(5 * 1024)
        progress.update(6 * 1024)  # too soon: skipped
        self.clock.advance(0.25)
        progress.update(6 * 1024)
        self.assertEqual(
            self.ui.statuses,
            [
                "[FILE] sending a.bin: 0% 0.0 KiB/s ETA ?",
                "[FILE] sending a.bin: 50% 2.5 KiB/s ETA 2s",
                "[FILE] sending a.bin: 60% 2.7 KiB/s ETA 2s",
            ],
        )

    def test_send_shows_progress_then_the_final_line(self) -> None:
        folder = Path(self.mktemp())
        folder.mkdir()
        (folder / "p.bin").write_bytes(os.urandom(3 * CHUNK_BYTES))
        self.successResultOf(self.session.send_file(self.peer, str(folder / "p.bin")))
        self.assertTrue(self.ui.statuses)
        self.assertTrue(all(s.startswith("[FILE] sending p.bin: ") for s in self.ui.statuses))
        self.assertEqual(self.ui.lines[-1], f"[FILE] sent p.bin to {self.peer} ({3 * CHUNK_BYTES} bytes)")

    def test_display_name_escapes(self) -> None:
        self.assertEqual(display_name("../../x\x1b[2J\nz\u202e"), "../../x\\x1b[2J\\nz\\u202e")
        self.assertEqual(len(display_name("a" * 500)), 200)


class ConsoleFileCommandTests(SynchronousTestCase):
    def console(self, interactive: bool = False):
        from twisted.internet.testing import StringTransport

        from socp_tw.client.console import Console

        class Commands:
            def __init__(self) -> None:
                self.calls: list[tuple[str, str]] = []

            def send_file(self, user_id: str, path: str) -> None:
                self.calls.append((user_id, path))

        commands = Commands()
        console = Console(commands, interactive=interactive)
        transport = StringTransport()
        console.makeConnection(transport)
        return console, commands, transport

    def test_file_command(self) -> None:
        console, commands, transport = self.console()
        uid = wire.new_uuid4()
        console.dataReceived(
            f"/file {uid.upper()} my dir/a file.txt \n/file {uid}\n/file nope x\n/help\n".encode()
        )
        self.assertEqual(commands.calls, [(uid, "my dir/a file.txt")])
        out = transport.value().decode()
        self.assertEqual(out.count("Usage: /file <user_uuid> <path>\n"), 2)
        self.assertIn("  /file <user_uuid> <path>   send a file", out)

    def test_status_line_only_on_a_terminal(self) -> None:
        console, _, transport = self.console(interactive=True)
        transport.clear()
        console.status("[FILE] sending a: 1% 2.0 KiB/s ETA 3s")
        self.assertEqual(transport.value(), b"\r\x1b[K[FILE] sending a: 1% 2.0 KiB/s ETA 3s")
        console.show("done")
        self.assertTrue(transport.value().endswith(b"\r\x1b[Kdone\n> "))
        console, _, transport = self.console(interactive=False)
        transport.clear()
        console.status("x")
        self.assertEqual(transport.value(), b"")
